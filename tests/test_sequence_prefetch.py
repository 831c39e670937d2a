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
    assert not pf._thread.is_alive()
    assert len(produced) < 10  # it stopped instead of consuming the whole source
    with pytest.raises(StopIteration):
        next(pf)
    pf.close()  # idempotent


def test_prefetcher_rejects_bad_depth():
    with pytest.raises(ValueError, match="depth"):
        Prefetcher([], lambda i: i, depth=0)

