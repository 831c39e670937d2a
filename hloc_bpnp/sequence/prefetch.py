"""Overlap a sequence's input with its tracking: decode and extract frame k+1 while frame k
is tracked.

:class:`Prefetcher` runs ``produce(item)`` for the items of an iterable on background worker
threads, at most ``depth`` items ahead, and yields ``(item, value)`` in the items' order. The
tracker uses it to read each image and extract its tracking features (torch and most numpy
kernels release the GIL, so the worker runs on the second core while the tracker's numpy runs
on the first). Torch's intra-op thread count is per thread: each worker sets its own
(``torch_threads``) so that it and the tracker do not oversubscribe the cores. With
``workers`` > 1, consecutive items are produced concurrently (one item per worker): for frames
whose extraction takes longer than their tracking (3072-px Strecha JPEGs, SIFT at 800 px on one
torch thread: ~1 s against ~0.4 s), two workers keep both cores busy while the tracker waits.

An exception raised by the iterable or by ``produce`` stops the worker and is re-raised by
the consumer at that item's place in the order (the items before it are still delivered);
:meth:`Prefetcher.close` stops the worker early (a consumer leaving the loop), and is
idempotent.
"""
from __future__ import annotations

import threading
from typing import Any, Callable, Dict, Iterable, Iterator, Optional, Tuple

_DONE = object()


class Prefetcher:
    """Iterate over ``(item, produce(item))`` with ``produce`` run ahead on worker threads.

    Args:
        items: the input iterable (consumed on the worker threads, one ``next`` at a time).
        produce: ``produce(item) -> value``.
        depth: how many produced items may wait (>= 1); with ``workers`` items in production,
            at most ``depth + workers`` items are taken ahead of the consumer.
        torch_threads: torch intra-op threads of each worker (None: unchanged).
        name: the worker threads' name.
        workers: worker threads (>= 1), each producing one item at a time; values are
            yielded in the items' order whatever the order they finish in.

    Use as an iterator (``for item, value in Prefetcher(...)``), ideally inside ``with``, or
    call :meth:`close` when leaving the loop early.
    """

    def __init__(self, items: Iterable, produce: Callable[[Any], Any], depth: int = 1,
                 torch_threads: Optional[int] = None, name: str = "hloc_bpnp-prefetch", workers: int = 1):
        if depth < 1:
            raise ValueError(f"Prefetcher depth must be >= 1, got {depth}")
        if workers < 1:
            raise ValueError(f"Prefetcher workers must be >= 1, got {workers}")
        self._items = iter(items)
        self._produce = produce
        self._torch_threads = torch_threads
        self._ahead = int(depth) + int(workers)  # items taken ahead of the consumer, at most
        self._cond = threading.Condition()
        self._source_lock = threading.Lock()
        self._results: Dict[int, Tuple[Any, Any, Optional[BaseException]]] = {}
        self._next_take = 0  # index of the next item taken from the source
        self._next_yield = 0  # index of the next item yielded
        self._end: Optional[int] = None  # the index after the last item (the source ended or failed)
        self._stop = threading.Event()
        self._finished = False
        self._threads = [threading.Thread(target=self._worker, name=f"{name}-{k}" if workers > 1 else name,
                                          daemon=True) for k in range(int(workers))]
        for t in self._threads:
            t.start()

    @property
    def running(self) -> bool:
        """Whether a worker thread is still alive."""
        return any(t.is_alive() for t in self._threads)

    def _take(self) -> Optional[Tuple[int, Any]]:
        """The next (index, item) of the source, or None when stopped or at its end (an error
        of the source is stored at its index). The source is read under its own lock, so that
        the consumer is never held up by a worker decoding the next item."""
        with self._source_lock:
            with self._cond:
                while not self._stop.is_set() and self._end is None and \
                        self._next_take >= self._next_yield + self._ahead:
                    self._cond.wait(0.05)
                if self._stop.is_set() or self._end is not None:
                    return None
                i = self._next_take
            try:
                item = next(self._items)
            except StopIteration:
                with self._cond:
                    self._end = i
                    self._cond.notify_all()
                return None
            except BaseException as e:  # delivered to the consumer in order, never lost
                with self._cond:
                    self._results[i] = (_DONE, None, e)
                    self._end = i + 1
                    self._cond.notify_all()
                return None
            with self._cond:
                self._next_take = i + 1
            return i, item

    def _worker(self) -> None:
        if self._torch_threads:
            import torch

            torch.set_num_threads(int(self._torch_threads))
        while True:
            taken = self._take()
            if taken is None:
                return
            i, item = taken
            try:
                entry = (item, self._produce(item), None)
            except BaseException as e:  # delivered in order; nothing after it is taken
                entry = (_DONE, None, e)
            with self._cond:
                self._results[i] = entry
                if entry[0] is _DONE:
                    self._end = i + 1 if self._end is None else min(self._end, i + 1)
                self._cond.notify_all()
            if entry[0] is _DONE:
                return

    def __iter__(self) -> Iterator[Tuple[Any, Any]]:
        return self

    def __next__(self) -> Tuple[Any, Any]:
        if self._finished:
            raise StopIteration
        with self._cond:
            i = self._next_yield
            while i not in self._results and not (self._end is not None and i >= self._end):
                self._cond.wait()
            entry = self._results.pop(i, None)
            self._next_yield = i + 1
            self._cond.notify_all()
        if entry is None or entry[0] is _DONE:
            self.close()
            if entry is not None and entry[2] is not None:
                raise entry[2]
            raise StopIteration
        return entry[0], entry[1]

    def close(self) -> None:
        """Stop the workers (after the items they are producing) and join them; idempotent."""
        self._stop.set()
        self._finished = True
        with self._cond:
            self._cond.notify_all()
        for t in self._threads:
            if t is not threading.current_thread():
                t.join()

    def __enter__(self) -> "Prefetcher":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
