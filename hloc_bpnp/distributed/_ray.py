"""Ray plumbing shared by the distributed stages: the import guard, cluster start-up, thread
settings per worker, and the error types that mean "the worker process died"."""
from __future__ import annotations

import logging
import os
from typing import Optional, Tuple

logger = logging.getLogger(__name__)

INSTALL_HINT = "pip install 'hloc_bpnp[distributed]'"


def require_ray():
    """Import and return ``ray``, or raise ImportError naming the extra to install."""
    try:
        import ray
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError(f"--workers / hloc_bpnp.distributed needs Ray, which is not installed: "
                          f"{INSTALL_HINT}") from e
    return ray


def ensure_ray(address: Optional[str] = None, num_cpus: Optional[int] = None) -> bool:
    """Connect to the Ray cluster at ``address`` (e.g. ``auto`` or ``ray://host:10001``), or
    start a local one (``num_cpus``: its CPU count, default all). A Ray already initialised in
    this process is used as is. Returns True when this call initialised Ray (the caller then
    shuts it down)."""
    ray = require_ray()
    if ray.is_initialized():
        return False
    kwargs = {"include_dashboard": False, "log_to_driver": True, "logging_level": logging.WARNING}
    if address:
        ray.init(address=address, **kwargs)
    else:
        ray.init(num_cpus=num_cpus, **kwargs)
    logger.info("Ray cluster: %s", {k: v for k, v in ray.cluster_resources().items() if k in ("CPU", "GPU", "memory")})
    return True


def plan_threads(workers: int, threads_per_worker: Optional[int]) -> Tuple[int, int]:
    """(workers, threads per worker): by default the cluster's CPUs shared evenly, at least 1.
    Warns when the request exceeds the cluster's CPUs (Ray would then queue actors forever)."""
    ray = require_ray()
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    cpus = int(ray.cluster_resources().get("CPU", 1))
    threads = int(threads_per_worker) if threads_per_worker else max(1, cpus // workers)
    if threads < 1:
        raise ValueError(f"threads_per_worker must be >= 1, got {threads_per_worker}")
    if workers * threads > cpus:
        logger.warning("%d workers x %d threads need %d CPUs but the Ray cluster has %d: some workers wait for "
                       "CPUs (lower --workers or --threads-per-worker)", workers, threads, workers * threads, cpus)
    return workers, threads


def local_cluster_cpus(workers: int, threads_per_worker: Optional[int], num_cpus: Optional[int]) -> Optional[int]:
    """CPUs of a local cluster started for this job: ``num_cpus`` when given, else
    ``workers x threads_per_worker`` when the threads are given, else None (all CPUs)."""
    if num_cpus is not None:
        if int(num_cpus) < 1:
            raise ValueError(f"num_cpus must be >= 1, got {num_cpus}")
        return int(num_cpus)
    if threads_per_worker:
        return int(workers) * int(threads_per_worker)
    return None


def wants_cuda(device) -> bool:
    """Whether a preset's ``device`` (``cpu``, ``cuda``, ``cuda:1``, None) asks for a GPU."""
    return str(device or "cpu").startswith("cuda")


def plan_gpus(cuda: bool, workers: int, gpus_per_worker: Optional[float]) -> float:
    """GPUs reserved per actor. Ray hides every GPU from an actor that reserves none
    (``CUDA_VISIBLE_DEVICES=""``), so a CUDA preset needs ``num_gpus`` > 0: by default the
    cluster's GPUs shared evenly (fractional when workers outnumber GPUs, at most 1 each).
    An explicit ``gpus_per_worker`` wins; a CUDA preset on a cluster without GPUs is an error."""
    if gpus_per_worker is not None:
        if float(gpus_per_worker) < 0:
            raise ValueError(f"gpus_per_worker must be >= 0, got {gpus_per_worker}")
        if cuda and float(gpus_per_worker) == 0:
            raise ValueError("the preset asks for device cuda but gpus_per_worker is 0: the actors would see no GPU")
        return float(gpus_per_worker)
    if not cuda:
        return 0.0
    ray = require_ray()
    gpus = float(ray.cluster_resources().get("GPU", 0))
    if gpus <= 0:
        raise ValueError("the preset asks for device cuda but the Ray cluster has no GPU "
                         "(use a CPU preset, or start Ray on a machine with GPUs)")
    return min(1.0, gpus / max(1, int(workers)))


def actor_options(threads: int, gpus: float = 0.0) -> dict:
    """Options of one worker actor: ``threads`` CPUs reserved, BLAS/OpenMP pools sized to them
    before the process starts (``set_worker_threads`` repeats it for torch and faiss), ``gpus``
    GPUs reserved (fractions share one), no automatic restart (the scheduler replaces dead
    workers itself and counts the deaths)."""
    env = {k: str(threads) for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")}
    opts = {"num_cpus": threads, "max_restarts": 0, "max_task_retries": 0, "runtime_env": {"env_vars": env}}
    if gpus:
        opts["num_gpus"] = float(gpus)
    return opts


def set_worker_threads(threads: int) -> None:
    """Inside a worker: torch intra-op threads, OpenMP env and faiss's OpenMP pool = ``threads``."""
    import torch

    for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[k] = str(threads)
    torch.set_num_threads(threads)
    try:
        import faiss

        faiss.omp_set_num_threads(threads)
    except (ImportError, AttributeError):  # pragma: no cover - faiss is a dependency
        pass


def death_errors() -> tuple:
    """Ray exceptions meaning the worker process is gone (killed, crashed, out of memory)."""
    ray = require_ray()
    ex = ray.exceptions
    names = ("RayActorError", "ActorDiedError", "ActorUnavailableError", "WorkerCrashedError",
             "OutOfMemoryError", "NodeDiedError", "ObjectLostError")
    return tuple(getattr(ex, n) for n in names if hasattr(ex, n))
