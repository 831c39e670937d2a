"""Overlap a sequence's input with its tracking: decode and extract frame k+1 while frame k
is tracked.

:class:`Prefetcher` runs ``produce(item)`` for the items of an iterable on a background
thread, at most ``depth`` items ahead, and yields ``(item, value)`` in the items' order. The
tracker uses it to read each image and extract its tracking features (torch and most numpy
kernels release the GIL, so the worker runs on the second core while the tracker's numpy runs
on the first). Torch's intra-op thread count is per thread: the worker sets its own
(``torch_threads``) so that it and the tracker do not oversubscribe the cores.

An exception raised by the iterable or by ``produce`` stops the worker and is re-raised by
the consumer at that item's place in the order (the items before it are still delivered);
:meth:`Prefetcher.close` stops the worker early (a consumer leaving the loop), and is
idempotent.
"""
from __future__ import annotations

import queue
import threading
from typing import Any, Callable, Iterable, Iterator, Optional, Tuple

_DONE = object()


class Prefetcher:
    """Iterate over ``(item, produce(item))`` with ``produce`` run ahead on a worker thread.

    Args:
        items: the input iterable (consumed on the worker thread).
        produce: ``produce(item) -> value``.
        depth: how many produced items may wait (>= 1).
        torch_threads: torch intra-op threads of the worker (None: unchanged).
        name: the worker thread's name.

    Use as an iterator (``for item, value in Prefetcher(...)``), ideally inside ``with``, or
    call :meth:`close` when leaving the loop early.
    """

    def __init__(self, items: Iterable, produce: Callable[[Any], Any], depth: int = 1,
                 torch_threads: Optional[int] = None, name: str = "hloc_bpnp-prefetch"):
        if depth < 1:
            raise ValueError(f"Prefetcher depth must be >= 1, got {depth}")
        self._items = items
        self._produce = produce
        self._torch_threads = torch_threads
        self._queue: "queue.Queue[Tuple[Any, Any, Optional[BaseException]]]" = queue.Queue(maxsize=int(depth))
        self._stop = threading.Event()
        self._finished = False
        self._thread = threading.Thread(target=self._worker, name=name, daemon=True)
        self._thread.start()

    def _put(self, entry) -> bool:
        """Put ``entry`` unless stopped (polling, so that :meth:`close` never deadlocks)."""
        while not self._stop.is_set():
            try:
                self._queue.put(entry, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def _worker(self) -> None:
        if self._torch_threads:
            import torch

            torch.set_num_threads(int(self._torch_threads))
        try:
            for item in self._items:
                if self._stop.is_set():
                    return
                if not self._put((item, self._produce(item), None)):
                    return
        except BaseException as e:  # delivered to the consumer in order, never lost
            self._put((_DONE, None, e))
            return
        self._put((_DONE, None, None))

    def __iter__(self) -> Iterator[Tuple[Any, Any]]:
        return self

    def __next__(self) -> Tuple[Any, Any]:
        if self._finished:
            raise StopIteration
        item, value, err = self._queue.get()
        if item is _DONE:
            self._finished = True
            self._thread.join()
            if err is not None:
                raise err
            raise StopIteration
        return item, value

    def close(self) -> None:
        """Stop the worker (after the item it is producing) and join it."""
        self._stop.set()
        self._finished = True
        while self._thread.is_alive():
            try:  # unblock a worker waiting on a full queue
                self._queue.get(timeout=0.05)
            except queue.Empty:
                pass
        self._thread.join()

    def __enter__(self) -> "Prefetcher":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
