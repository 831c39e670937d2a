"""Batch localization on Ray: each actor loads the map ONCE from the map folder and localizes
chunks of queries; results stream back in query order into the same results file and JSON log
as the sequential path (``hloc-bpnp localize`` without ``--workers``).

A query's result does not depend on the worker or the order: every query runs the same
:meth:`Localizer.localize_many` code on its own, RANSAC is seeded per call
(``ransac.seed``, default 0) and the per-map-image caches only hold copies of map data.
Thread counts change float reductions at the 1e-15 level only.

On a multi-node cluster every node needs this package installed and the map folder and query
images at the same paths (a shared file system); queries given as arrays travel through the
object store instead.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Callable, Dict, Iterable, Optional, Sequence, Tuple, Union

from ..localization import results as R
from ..localization.results import LocalizationResult, ResultsWriter
from ._ray import (actor_options, ensure_ray, local_cluster_cpus, plan_gpus, plan_threads, require_ray,
                   set_worker_threads, wants_cuda)
from .scheduler import run_ordered

logger = logging.getLogger(__name__)

Query = Tuple[str, object, object]  # (name, image path / array, Camera or None)


class LocalizationWorker:
    """Ray actor body: a :class:`~hloc_bpnp.localization.Localizer` on ``Map.load(map_dir)``.

    Args:
        map_dir: map folder (read by the actor itself; the map is never pickled).
        conf: localization preset name, YAML path or dict.
        image_dir: folder the query paths are relative to (None: paths as given).
        threads: torch / OpenMP / faiss threads of this worker.
        before_query: optional ``f(name)`` called in the worker before each query (a test
            hook, e.g. to kill the worker on a given query).
        map_images: folder of the map's images (patch alignment), read by the actor itself.
    """

    def __init__(self, map_dir, conf, image_dir, threads: int, before_query: Optional[Callable] = None,
                 map_images: Optional[str] = None):
        set_worker_threads(threads)
        from ..localization import Localizer
        from ..mapping import Map

        t = time.perf_counter()
        self.localizer = Localizer(Map.load(map_dir), conf, map_images=map_images)
        self.load_seconds = time.perf_counter() - t
        self.image_dir = image_dir
        self.before_query = before_query

    def ready(self) -> float:
        """Seconds the map took to load (returns once the worker can localize)."""
        return self.load_seconds

    def localize(self, queries: Sequence[Query]):
        """Localize a chunk; one result per query, in order. An exception in one query becomes
        a failed result (``worker_error``) instead of losing the chunk."""
        out = []
        for name, image, camera in queries:
            if self.before_query is not None:
                self.before_query(name)
            try:
                res = self.localizer.localize_many([(name, image, camera)], image_dir=self.image_dir,
                                                   progress=False)[name]
            except Exception as e:  # noqa: BLE001 - recorded as the query's failure
                logger.exception("Query %s raised in the worker", name)
                res = LocalizationResult(name=name).fail(R.WORKER_ERROR, f"{type(e).__name__}: {e}")
            out.append(res)
        return out


def query_feature_device(map_dir, conf) -> str:
    """The device the queries' features run on: the localization preset's ``features`` (or the
    map's own feature preset, saved in ``map.json``) with its ``query_features`` overrides."""
    import json

    from ..config import load_config, merge

    lconf = load_config("localization", conf if conf is not None else "default")
    fconf = lconf.get("features") or json.loads(Path(map_dir, "map.json").read_text()).get("conf", {}).get("features")
    fconf = load_config("features", fconf) if fconf else {}
    if lconf.get("query_features"):
        fconf = merge(fconf, lconf["query_features"])
    return str(fconf.get("device", "cpu"))


def default_chunk_size(num_queries: int, workers: int) -> int:
    """Small enough that every worker gets several chunks (load balance, little work lost when a
    worker dies), large enough that the per-call overhead (~1 ms) stays negligible."""
    return max(1, min(16, num_queries // (8 * max(1, workers))))


def localize_distributed(
    map_dir: Union[str, Path],
    queries: Iterable[Query],
    conf: Union[str, Dict, None] = None,
    *,
    workers: int = 2,
    image_dir=None,
    results_path=None,
    log_path=None,
    resume: bool = False,
    chunk_size: Optional[int] = None,
    threads_per_worker: Optional[int] = None,
    gpus_per_worker: Optional[float] = None,
    num_cpus: Optional[int] = None,
    ray_address: Optional[str] = None,
    max_worker_deaths: int = 2,
    flush_seconds: float = 1.0,
    progress: bool = True,
    before_query: Optional[Callable[[str], None]] = None,
    stats: Optional[dict] = None,
    map_images: Union[str, Path, None] = None,
) -> Dict[str, LocalizationResult]:
    """Localize ``queries`` on ``workers`` Ray actors, each holding the map loaded once.

    Args:
        map_dir: map folder written by ``hloc-bpnp map`` / :meth:`Map.save`.
        queries: (name, image path relative to ``image_dir`` or (H, W[, 3]) array, Camera or
            None) triples, as :meth:`Localizer.localize_many` takes.
        conf: localization preset name, YAML path or dict.
        workers: number of actors.
        results_path: if given, the hloc results file (and ``log_path``, default
            ``<results>_log.json``) written in query order as results arrive, atomically.
        resume: skip the queries already in the existing log (needs ``results_path``).
        chunk_size: queries per call (default :func:`default_chunk_size`).
        threads_per_worker: torch/OpenMP threads per actor (default: the cluster's CPUs / workers).
        gpus_per_worker: GPUs reserved per actor (fractions share a GPU); default: none for a
            CPU preset, the cluster's GPUs shared evenly when the map's features run on CUDA.
        num_cpus: CPUs of a local cluster started here (default: workers x threads_per_worker
            when given, else all); ignored with ``ray_address`` or an initialised Ray.
        ray_address: existing cluster (``auto``, ``ray://host:port``); default: Ray already
            initialised in this process, else a local cluster on this machine.
        max_worker_deaths: a query in that many worker deaths is recorded as failed
            (``worker_died``) and the batch goes on.
        before_query: test hook run in the worker before each query.
        stats: if a dict, filled with counters (worker_deaths, replacements, poisoned,
            seconds, queries_per_second; start-up excluded).
        map_images: folder of the map's images, for presets with ``patch_alignment`` (every
            actor reads them there, so on a cluster every node needs that path).
    Returns:
        name -> LocalizationResult for the queries localized in this call (in query order;
        with ``resume`` the skipped ones are only in the files).
    """
    require_ray()
    queries = list(queries)
    names = [q[0] for q in queries]
    if len(set(names)) != len(names):
        raise ValueError("localize_distributed: duplicate query names")
    if resume and results_path is None:
        raise ValueError("resume needs results_path (the existing results and log to continue)")
    writer = ResultsWriter(results_path, log_path, resume=resume, flush_seconds=flush_seconds) if results_path else None
    if writer is not None and resume:
        queries = [q for q in queries if q[0] not in writer.done]
        logger.info("Resume: %d queries left of %d", len(queries), len(names))
    map_dir = str(Path(map_dir).resolve())
    if not Path(map_dir, "map.json").is_file():
        if writer is not None:
            writer.close()
        raise FileNotFoundError(f"{map_dir} is not a map folder (no map.json)")
    if not queries:  # nothing left to do (e.g. a finished run resumed): no cluster to start
        if writer is not None:
            writer.close()
        logger.info("No query to localize: Ray not started")
        return {}
    image_dir = None if image_dir is None else str(Path(image_dir).resolve())
    if map_images is not None:
        if not Path(map_images).is_dir():
            if writer is not None:
                writer.close()
            raise FileNotFoundError(f"map images folder not found: {map_images}")
        map_images = str(Path(map_images).resolve())
    cuda = wants_cuda(query_feature_device(map_dir, conf))
    started = ensure_ray(ray_address, num_cpus=local_cluster_cpus(workers, threads_per_worker, num_cpus))
    ray = require_ray()
    out: Dict[str, LocalizationResult] = {}
    try:
        workers, threads = plan_threads(workers, threads_per_worker)
        gpus = plan_gpus(cuda, workers, gpus_per_worker)
        chunk = int(chunk_size) if chunk_size else default_chunk_size(len(queries), workers)
        actor_cls = ray.remote(LocalizationWorker).options(**actor_options(threads, gpus))
        logger.info("Localizing %d queries on %d workers x %d threads, %d queries per chunk", len(queries),
                    workers, threads, chunk)
        t0 = [None]

        def emit(_positions, results):
            for r in results:
                out[r.name] = r
                if writer is not None:
                    writer.add(r)
            if writer is not None:
                writer.flush()

        def submit(actor, items):
            if t0[0] is None:
                t0[0] = time.perf_counter()
            return actor.localize.remote(items)

        def poison(query, detail):
            return LocalizationResult(name=query[0], camera=query[2]).fail(R.WORKER_DIED, detail)

        counters = run_ordered(
            queries, start_actor=lambda: actor_cls.remote(map_dir, conf, image_dir, threads, before_query, map_images),
            submit=submit, num_actors=workers, chunk_size=chunk, emit=emit, on_poison=poison,
            name_of=lambda q: q[0], max_worker_deaths=max_worker_deaths, progress=progress, desc="localize")
        seconds = time.perf_counter() - t0[0] if t0[0] is not None else 0.0
        if stats is not None:
            stats.update(counters, seconds=seconds, workers=workers, threads_per_worker=threads,
                         chunk_size=chunk, queries_per_second=len(queries) / seconds if seconds > 0 else None)
    finally:
        if writer is not None:
            writer.close()
        if started:
            ray.shutdown()
    n_ok = sum(r.success for r in out.values())
    logger.info("Localized %d / %d queries on %d workers", n_ok, len(out), workers)
    return out
