"""An ordered, fault-tolerant work loop over a pool of Ray actors.

Items go out in chunks, at most ``in_flight`` chunks queued per actor (so a worker never waits
for the driver); results are handed back IN ITEM ORDER as soon as the prefix before them is
complete.

When an actor dies, the chunks it had in flight whose results did not come back are
*suspects* (which one killed it is unknown: Ray may also lose the reply of a call that finished
just before the death). Failure policy (``max_worker_deaths``, default 2):
  * every item of a suspect chunk counts one death and is retried ALONE (a single-item chunk
    with nothing else in flight on its actor), so a further death names the item exactly;
  * an item that has been in ``max_worker_deaths`` deaths, the last one while running alone,
    is *poisoned*: ``on_poison`` turns it into a result (e.g. a failed query with its reason)
    or raises, and the run goes on; innocent items of a killed chunk succeed on their retry;
  * every dead actor is replaced by a fresh one (which loads its state again); a fresh actor
    that fails to start raises RuntimeError (a broken map folder would otherwise loop).
"""
from __future__ import annotations

import logging
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any, Callable, Deque, Dict, List, Optional, Sequence, Tuple

from tqdm import tqdm

from ._ray import death_errors, require_ray

logger = logging.getLogger(__name__)


@dataclass
class _Slot:
    actor: Any
    ready_ref: Any
    ready: bool = False
    inflight: Deque[Tuple[Any, "_Task"]] = field(default_factory=deque)


@dataclass
class _Task:
    positions: List[int]
    isolated: bool = False  # a suspect: runs alone on its actor


def chunks_of(n: int, size: int) -> List[List[int]]:
    """[0, n) in consecutive chunks of ``size`` (the last one shorter)."""
    size = max(1, int(size))
    return [list(range(i, min(i + size, n))) for i in range(0, n, size)]


def run_ordered(
    items: Sequence,
    *,
    start_actor: Callable[[], Any],
    submit: Callable[[Any, list], Any],
    num_actors: int,
    chunk_size: int,
    emit: Callable[[List[int], list], None],
    on_poison: Callable[[Any, str], Any],
    name_of: Callable[[Any], str] = str,
    max_worker_deaths: int = 2,
    in_flight: int = 2,
    progress: bool = True,
    desc: str = "items",
    actors_out: Optional[list] = None,
    startup_timeout_s: float = 600.0,
) -> Dict[str, int]:
    """Process ``items`` on ``num_actors`` Ray actors; returns counters (deaths, replacements,
    poisoned).

    Args:
        items: the work items (any picklable values).
        start_actor: creates one actor; it must have a ``ready()`` method (returns once its
            state is loaded).
        submit: ``submit(actor, chunk_items) -> ObjectRef`` of a list with one result per item.
        num_actors: pool size.
        chunk_size: items per call.
        emit: ``emit(positions, results)``, called in item order, each item exactly once.
        on_poison: ``on_poison(item, detail) -> result`` for an item that killed its worker
            ``max_worker_deaths`` times (may raise to abort the run).
        name_of: item -> name for logs.
        actors_out: if given, the live actor handles are kept in it (tests kill them).
        startup_timeout_s: an initial worker not ready after this long is killed and replaced
            (Ray can leave a worker process idle that never runs its actor); after
            ``max_worker_deaths`` replacements a worker that still does not start raises
            RuntimeError instead of waiting forever.
    """
    ray = require_ray()
    deadly = death_errors()
    if max_worker_deaths < 1:
        raise ValueError(f"max_worker_deaths must be >= 1, got {max_worker_deaths}")
    n = len(items)
    queue: Deque[_Task] = deque(_Task(c) for c in chunks_of(n, chunk_size))
    done: Dict[int, Any] = {}
    deaths: Counter = Counter()
    stats = {"worker_deaths": 0, "replacements": 0, "poisoned": 0}
    next_emit = 0

    def new_slot() -> _Slot:
        actor = start_actor()
        return _Slot(actor, actor.ready.remote())

    slots = [new_slot() for _ in range(max(1, min(num_actors, n)))] if n else []

    def sync_actors():
        if actors_out is not None:
            actors_out[:] = [s.actor for s in slots]

    sync_actors()
    for attempt in range(max_worker_deaths + 1):  # start-up: a worker that never gets ready is replaced
        if not slots:
            break
        refs = [s.ready_ref for s in slots]
        _, pending = ray.wait(refs, num_returns=len(refs), timeout=startup_timeout_s)
        if not pending:
            break
        stuck = [s for s in slots if s.ready_ref in pending]
        if attempt == max_worker_deaths:
            for s in slots:
                ray.kill(s.actor, no_restart=True)
            raise RuntimeError(f"{len(stuck)} worker(s) did not start within {startup_timeout_s:g} s, "
                               f"{max_worker_deaths} replacements included")
        logger.warning("%d worker(s) not ready after %g s: replacing them", len(stuck), startup_timeout_s)
        for s in stuck:
            try:
                ray.kill(s.actor, no_restart=True)
            except Exception:  # already gone
                pass
            fresh = new_slot()
            s.actor, s.ready_ref = fresh.actor, fresh.ready_ref
            stats["replacements"] += 1
        sync_actors()
    if slots:  # start-up barrier: every initial worker has loaded its state before work goes out
        try:
            load = ray.get([s.ready_ref for s in slots])
        except Exception as e:
            for s in slots:
                ray.kill(s.actor, no_restart=True)
            raise RuntimeError(f"A worker could not start: {e}") from e
        for s in slots:
            s.ready = True
        logger.info("%d workers ready (state loaded in %s s)", len(slots), [round(float(x), 2) for x in load])
    bar = tqdm(total=n, desc=desc, disable=not progress)

    def store(positions: List[int], results: list):
        if len(results) != len(positions):
            raise RuntimeError(f"worker returned {len(results)} results for {len(positions)} items")
        for p, r in zip(positions, results):
            done[p] = r
        bar.update(len(positions))

    def requeue_front(tasks: List[_Task]):
        for t in sorted(tasks, key=lambda t: min(t.positions), reverse=True):
            queue.appendleft(t)

    def handle_death(slot: _Slot, err: Exception):
        entries = list(slot.inflight)
        slot.inflight.clear()
        suspects: List[int] = []
        certain = False  # the only unfinished call was a single item running alone: it killed the worker
        for ref, task in entries:
            try:  # calls that finished before the death still count
                store(task.positions, ray.get(ref))
            except deadly:
                suspects += task.positions
                certain = task.isolated
        stats["worker_deaths"] += 1
        names = [name_of(items[p]) for p in suspects]
        logger.warning("A worker died (%s) with %s unfinished; retrying on a fresh worker, each alone",
                       type(err).__name__, names if len(names) <= 4 else names[:4] + ["..."])
        retry = []
        certain = certain and len(suspects) == 1
        for p in suspects:
            deaths[p] += 1
            if certain and deaths[p] >= max_worker_deaths:
                last = str(err).splitlines()[0] if str(err) else ""
                detail = f"killed its worker process {deaths[p]} times (last error: {type(err).__name__}: {last})"
                logger.error("%s %s: recorded as failed, the batch goes on", name_of(items[p]), detail)
                store([p], [on_poison(items[p], detail)])
                stats["poisoned"] += 1
            else:
                retry.append(_Task([p], isolated=True))
        requeue_front(retry)
        try:
            ray.kill(slot.actor, no_restart=True)
        except Exception:  # already gone
            pass
        fresh = new_slot()
        slot.actor, slot.ready_ref, slot.ready = fresh.actor, fresh.ready_ref, False
        stats["replacements"] += 1
        sync_actors()

    try:
        while next_emit < n:
            for slot in slots:
                while slot.ready and queue and len(slot.inflight) < in_flight:
                    busy = bool(slot.inflight)
                    if busy and (queue[0].isolated or slot.inflight[-1][1].isolated):
                        break  # a suspect runs alone on its actor
                    task = queue.popleft()
                    slot.inflight.append((submit(slot.actor, [items[p] for p in task.positions]), task))
            owner = {}
            for slot in slots:
                if not slot.ready:
                    owner[slot.ready_ref] = (slot, None)
                for ref, task in slot.inflight:
                    owner[ref] = (slot, task)
            if not owner:
                raise RuntimeError("distributed run stalled: no worker and no work in flight")
            ready, _ = ray.wait(list(owner), num_returns=1)
            ref = ready[0]
            slot, task = owner[ref]
            if task is None:  # an actor finished loading its state
                try:
                    ray.get(ref)
                except Exception as e:
                    raise RuntimeError(f"A worker could not start: {e}") from e
                slot.ready = True
                continue
            try:
                results = ray.get(ref)
            except deadly as e:
                handle_death(slot, e)
            else:
                slot.inflight = deque(x for x in slot.inflight if x[0] != ref)
                store(task.positions, results)
            start = next_emit
            while next_emit < n and next_emit in done:
                next_emit += 1
            if next_emit > start:
                positions = list(range(start, next_emit))
                emit(positions, [done.pop(p) for p in positions])
    finally:
        bar.close()
        for slot in slots:
            try:
                ray.kill(slot.actor, no_restart=True)
            except Exception:  # already gone
                pass
    return stats
