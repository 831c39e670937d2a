"""Map feature extraction on Ray: actors build the extractor once and extract chunks of images
read from the image folder; the numpy features come back to the driver in image order. Only
the driver writes files: the per-image cache (``--workdir``, atomically per image, so a
killed run resumes) and, through :meth:`Map.save`, the HDF5 store (atomic writer)."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Dict, Mapping, Optional, Sequence, Union

import numpy as np

from ._ray import (actor_options, ensure_ray, local_cluster_cpus, plan_gpus, plan_threads, require_ray,
                   set_worker_threads, wants_cuda)
from .scheduler import run_ordered

logger = logging.getLogger(__name__)


class ExtractionWorker:
    """Ray actor body: one extractor (config dict), images read from ``image_dir``."""

    def __init__(self, extractor_conf: Mapping, image_dir: str, threads: int):
        set_worker_threads(threads)
        from ..mapping.build import build_extractor_from_conf

        self.extractor = build_extractor_from_conf(dict(extractor_conf))
        self.image_dir = image_dir

    def ready(self) -> float:
        return 0.0

    def extract(self, names: Sequence[str]):
        """name list -> list of numpy feature dicts (as the map stores them)."""
        from ..features.feature_dict import to_numpy
        from ..mapping.build import read_map_image

        return [to_numpy(self.extractor.extract(read_map_image(self.image_dir, n)), float32=True) for n in names]


def extract_features_distributed(
    extractor_conf: Union[str, Mapping],
    names: Sequence[str],
    image_dir,
    *,
    workers: int = 2,
    cache_dir=None,
    chunk_size: Optional[int] = None,
    threads_per_worker: Optional[int] = None,
    gpus_per_worker: Optional[float] = None,
    num_cpus: Optional[int] = None,
    ray_address: Optional[str] = None,
    max_worker_deaths: int = 2,
    progress: bool = True,
) -> Dict[str, dict]:
    """Extract ``names`` (relative to ``image_dir``) on ``workers`` Ray actors.

    Same features as :func:`hloc_bpnp.mapping.extract_features` (same extractor code per
    image). With ``cache_dir`` the driver writes each image's features there as they arrive
    (the layout of :func:`~hloc_bpnp.mapping.build.extract_features_cached`) and only the
    missing images are extracted. An image that kills its worker ``max_worker_deaths`` times
    raises RuntimeError naming it (a map cannot silently drop an image). With everything
    already cached no Ray cluster is started. ``gpus_per_worker`` / ``num_cpus``: as in
    :func:`~hloc_bpnp.distributed.localize_distributed` (a ``device: cuda`` extractor gets GPUs).

    Returns:
        name -> numpy features, in ``names`` order.
    """
    from ..config import load_config
    from ..mapping.build import FeatureCache

    require_ray()
    names = list(names)
    fconf = load_config("features", extractor_conf)
    cache = FeatureCache(cache_dir, fconf) if cache_dir is not None else None
    out, todo = cache.load(names) if cache is not None else ({}, list(names))
    image_dir = str(Path(image_dir).resolve())
    missing = [n for n in todo if not (Path(image_dir) / n).is_file()]
    if missing:
        raise FileNotFoundError(f"{len(missing)} images not found under {image_dir}: {missing[:5]}")
    if not todo:  # everything cached (a finished run resumed): no cluster to start
        logger.info("All %d images already extracted: Ray not started", len(names))
        return {n: out[n] for n in names}
    started = ensure_ray(ray_address, num_cpus=local_cluster_cpus(workers, threads_per_worker, num_cpus))
    ray = require_ray()
    try:
        workers, threads = plan_threads(workers, threads_per_worker)
        gpus = plan_gpus(wants_cuda(fconf.get("device")), workers, gpus_per_worker)
        actor_cls = ray.remote(ExtractionWorker).options(**actor_options(threads, gpus))
        chunk = int(chunk_size) if chunk_size else max(1, min(8, len(todo) // (4 * workers)))
        logger.info("Extracting %d images on %d workers x %d threads", len(todo), workers, threads)

        def emit(positions, results):
            for p, feats in zip(positions, results):
                feats = {k: np.array(v) for k, v in feats.items()}  # writable copies (Ray's are read-only)
                out[todo[p]] = cache.put(todo[p], feats) if cache is not None else feats

        def poison(name, detail):
            raise RuntimeError(f"Image {name} {detail}")

        run_ordered(todo, start_actor=lambda: actor_cls.remote(fconf, image_dir, threads),
                    submit=lambda actor, items: actor.extract.remote(items), num_actors=workers,
                    chunk_size=chunk, emit=emit, on_poison=poison, max_worker_deaths=max_worker_deaths,
                    progress=progress, desc="extraction")
    finally:
        if started:
            ray.shutdown()
    return {n: out[n] for n in names}
