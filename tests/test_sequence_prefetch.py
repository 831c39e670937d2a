"""The prefetch thread of sequence mode (hloc_bpnp.sequence.prefetch): order, errors, stopping
(the tracker's use of it: tests/test_sequence.py)."""
import threading
import time

import pytest

from hloc_bpnp.sequence.prefetch import Prefetcher


def test_prefetcher_yields_every_item_in_order_from_another_thread():
    main = threading.get_ident()
    seen = []

    def produce(i):
        seen.append(threading.get_ident())
        time.sleep(0.002 * (i % 3))  # uneven work: order must not depend on it
        return i * i

    with Prefetcher(range(20), produce, depth=2) as pf:
        out = list(pf)
    assert out == [(i, i * i) for i in range(20)]
    assert seen and all(t != main for t in seen)


def test_prefetcher_runs_ahead_by_at_most_depth_plus_one():
    produced = []
    with Prefetcher(range(50), lambda i: produced.append(i) or i, depth=1) as pf:
        first = next(pf)
        time.sleep(0.2)  # the worker fills the queue (1) and holds one more, then blocks
        assert first == (0, 0)
        assert len(produced) <= 3
        assert [v for _, v in pf] == list(range(1, 50))


def test_prefetcher_surfaces_a_produce_error_at_its_place():
    def produce(i):
        if i == 3:
            raise ValueError("frame 3 is broken")
        return i

    pf = Prefetcher(range(10), produce)
    got = []
    with pytest.raises(ValueError, match="frame 3 is broken"):
        for item, _ in pf:
            got.append(item)
    assert got == [0, 1, 2]  # the items before the error are delivered
    pf.close()


def test_prefetcher_surfaces_a_reader_error():
    def frames():
        yield 0
        yield 1
        raise OSError("video stream ended badly")

    with Prefetcher(frames(), lambda i: i) as pf:
        assert next(pf) == (0, 0) and next(pf) == (1, 1)
        with pytest.raises(OSError, match="ended badly"):
            next(pf)
        with pytest.raises(StopIteration):  # and then it is finished
            next(pf)


def test_prefetcher_close_stops_a_blocked_worker():
    produced = []
    pf = Prefetcher(iter(range(10 ** 6)), lambda i: produced.append(i) or i, depth=1)
    assert next(pf) == (0, 0)
    t = time.perf_counter()
    pf.close()
    assert time.perf_counter() - t < 5.0
    assert not pf.running
    assert len(produced) < 10  # it stopped instead of consuming the whole source
    with pytest.raises(StopIteration):
        next(pf)
    pf.close()  # idempotent


def test_prefetcher_rejects_bad_depth():
    with pytest.raises(ValueError, match="depth"):
        Prefetcher([], lambda i: i, depth=0)



def test_prefetcher_with_two_workers_produces_concurrently_and_yields_in_order():
    """Two workers: consecutive items are produced at the same time (both cores busy for slow
    extractions), values still come out in the items' order, errors at their place."""
    active, peak, lock = [0], [0], threading.Lock()
    threads = set()

    def produce(i):
        with lock:
            active[0] += 1
            peak[0] = max(peak[0], active[0])
            threads.add(threading.get_ident())
        time.sleep(0.02 if i % 2 == 0 else 0.005)  # odd items finish first
        with lock:
            active[0] -= 1
        return -i

    with Prefetcher(range(12), produce, depth=1, workers=2) as pf:
        assert list(pf) == [(i, -i) for i in range(12)]
    assert peak[0] == 2 and len(threads) == 2

    def broken(i):
        if i == 5:
            raise ValueError("frame 5 is broken")
        time.sleep(0.01 if i == 4 else 0.0)
        return i

    got = []
    with Prefetcher(range(100), broken, workers=2) as pf:
        with pytest.raises(ValueError, match="frame 5 is broken"):
            for item, _ in pf:
                got.append(item)
    assert got == [0, 1, 2, 3, 4] and not pf.running


def test_prefetcher_with_two_workers_runs_ahead_by_at_most_depth_plus_workers():
    produced = []
    with Prefetcher(range(50), lambda i: produced.append(i) or i, depth=1, workers=2) as pf:
        assert next(pf) == (0, 0)
        time.sleep(0.2)
        assert len(produced) <= 4  # the one yielded + depth 1 waiting + 2 in production
        assert [v for _, v in pf] == list(range(1, 50))
    with pytest.raises(ValueError, match="workers"):
        Prefetcher([], lambda i: i, workers=0)
