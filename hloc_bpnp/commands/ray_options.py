"""The Ray options shared by ``hloc-bpnp localize`` and ``hloc-bpnp map`` (--workers ...)."""
from __future__ import annotations

import argparse


def add_ray_options(parser: argparse.ArgumentParser, title: str, workers_help: str):
    """Add the distributed group: --workers, --ray-address, --threads-per-worker,
    --gpus-per-worker, --ray-num-cpus. Returns the group (for command-specific options)."""
    d = parser.add_argument_group(f"{title} (Ray; pip install 'hloc_bpnp[distributed]')")
    d.add_argument("--workers", type=int, default=0, help=workers_help)
    d.add_argument("--ray-address", default=None,
                   help="existing Ray cluster (e.g. auto, ray://host:10001); default: a local one")
    d.add_argument("--threads-per-worker", type=int, default=None,
                   help="torch/OpenMP threads per actor (default: the cluster's CPUs / workers)")
    d.add_argument("--gpus-per-worker", type=float, default=None,
                   help="GPUs reserved per actor, fractions allowed (default: 0 for a CPU preset, the "
                        "cluster's GPUs shared evenly for a device: cuda preset)")
    d.add_argument("--ray-num-cpus", type=int, default=None,
                   help="CPUs of the local Ray cluster started here (default: workers x threads-per-worker "
                        "when given, else all)")
    return d
