"""Synthetic PnP problems with known ground truth (tests, benchmarks, demos)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from ..geometry.pose import Pose


@dataclass
class PnPProblem:
    points2d: torch.Tensor  # (B, N, 2) noisy pixels
    points3d: torch.Tensor  # (B, N, 3)
    K: torch.Tensor  # (B, 3, 3)
    pose: torch.Tensor  # (B, 6) ground truth [axis-angle, t]
    clean2d: torch.Tensor  # (B, N, 2) noise-free projections


def random_problem(
    B: int,
    N: int,
    noise: float = 1.0,
    depth: float = 8.0,
    spread: float = 2.0,
    planar: bool = False,
    dtype: torch.dtype = torch.float64,
    seed: Optional[int] = 0,
    device=None,
) -> PnPProblem:
    """B random problems: points in a cube of half-width ``spread`` at distance ``depth``
    (depth spread ~ spread/depth, >= 20% by default), random rotations, K for a 640x480
    image (f ~ 500 px), Gaussian pixel noise of std ``noise``. ``planar``: points on z=0."""
    g = torch.Generator().manual_seed(seed) if seed is not None else None
    f64 = torch.float64
    X = (torch.rand(B, N, 3, generator=g, dtype=f64) * 2 - 1) * spread
    if planar:
        X[..., 2] = 0
    aa = torch.randn(B, 3, generator=g, dtype=f64) * 0.6
    pose = Pose.from_aa(torch.cat([aa, torch.zeros(B, 3, dtype=f64)], -1))
    # put the points' centre at ``depth`` in front, with a small lateral offset
    c_cam = torch.cat([torch.randn(B, 2, generator=g, dtype=f64) * 0.3, torch.full((B, 1), depth, dtype=f64)], -1)
    t = c_cam
    P = torch.cat([aa, t], -1)
    fx = 500 + 20 * torch.rand(B, generator=g, dtype=f64)
    K = torch.zeros(B, 3, 3, dtype=f64)
    K[:, 0, 0], K[:, 1, 1] = fx, fx * 1.02
    K[:, 0, 2], K[:, 1, 2], K[:, 2, 2] = 320.0, 240.0, 1.0
    pc = Pose.from_aa(P).transform(X)
    h = pc @ K.transpose(-1, -2)
    clean = h[..., :2] / h[..., 2:]
    x = clean + noise * torch.randn(B, N, 2, generator=g, dtype=f64)
    del pose
    cast = lambda a: a.to(dtype=dtype, device=device)  # noqa: E731
    return PnPProblem(cast(x), cast(X), cast(K), cast(P), cast(clean))
