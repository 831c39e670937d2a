"""Data-parallel helpers: process-group set-up (torchrun env vars), gradient averaging.

Training is data parallel: every process holds the full model, takes its slice of each global
batch, back-propagates its local mean loss, and the gradients are averaged with one
``all_reduce`` per step (what ``DistributedDataParallel`` does, done explicitly so that a step
skipped by the NaN guard is skipped on every rank: the all-reduced gradients are identical
everywhere, so every rank takes the same decision). Backend: gloo on CPU, nccl on CUDA.

Launch: ``torchrun --nproc_per_node 2 -m hloc_bpnp.cli finetune --config NAME --output DIR``.
"""
from __future__ import annotations

import logging
import os
from typing import Iterable, Tuple

import torch
import torch.distributed as dist

logger = logging.getLogger(__name__)


def init_distributed(device: str = "cpu") -> Tuple[int, int]:
    """Join the process group described by torchrun's env vars; returns (rank, world_size).

    Without ``WORLD_SIZE`` > 1 (or when already initialised) nothing is set up.
    """
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1
    backend = "nccl" if str(device).startswith("cuda") else "gloo"
    if backend == "nccl":  # one GPU per process: torchrun's LOCAL_RANK picks it ("cuda" then means it)
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend=backend)
    rank = dist.get_rank()
    logger.info("process group: rank %d of %d (%s)", rank, world, backend)
    return rank, world


def world_info() -> Tuple[int, int]:
    """(rank, world_size) of the current process group, (0, 1) without one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def average_gradients(params: Iterable[torch.nn.Parameter]) -> None:
    """Average ``.grad`` over all processes in place (missing grads count as zeros)."""
    _, world = world_info()
    if world <= 1:
        return
    params = [p for p in params if p.requires_grad]
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    flat = torch.cat([p.grad.reshape(-1) for p in params])
    _all_reduce_sum(flat)
    flat /= world
    offset = 0
    for p in params:
        n = p.numel()
        p.grad.copy_(flat[offset:offset + n].view_as(p.grad))
        offset += n


def all_reduce_mean(x: torch.Tensor) -> torch.Tensor:
    """Mean of a tensor over processes (returns a copy; identity without a group)."""
    _, world = world_info()
    y = x.detach().clone()
    if world > 1:
        _all_reduce_sum(y)
        y /= world
    return y


def _all_reduce_sum(x: torch.Tensor) -> None:
    """In-place SUM all_reduce whose work object is released here, in the calling thread.

    With a plain blocking ``all_reduce`` the Gloo worker thread may drop the last reference to
    the work (and to ``x``) later, taking the GIL; if that happens while the interpreter shuts
    down the process aborts ("terminate called without an active exception", seen once in CI).
    Waiting on the work and deleting it here keeps that destruction on this thread."""
    work = dist.all_reduce(x, op=dist.ReduceOp.SUM, async_op=True)
    work.wait()
    del work


def barrier() -> None:
    if world_info()[1] > 1:
        dist.barrier()
