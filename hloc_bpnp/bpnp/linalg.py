"""Small batched linear-algebra helpers shared by the layer and the covariance."""
from __future__ import annotations

from typing import Tuple

import torch

from ..geometry.pose import skew


def safe_solve(H: torch.Tensor, b: torch.Tensor, rcond: float = 1e-12) -> Tuple[torch.Tensor, torch.Tensor]:
    """Solve ``H x = b`` for symmetric (B, K, K) H, robust to singular or non-finite systems.

    H is Jacobi-scaled (``D H D``, ``D = diag(H)^-1/2``, so that rotation and translation
    units do not matter) and inverted through its eigen-decomposition; eigenvalues with
    ``|e| <= rcond * max|e|`` are dropped (pseudo-inverse: no gradient along the unobservable
    directions). Non-finite items give x = 0.

    Args:
        H: (B, K, K); b: (B, K) or (B, K, M).
    Returns:
        x (same shape as b), ill (B,) bool: True where H was singular / ill-conditioned /
        non-finite.
    """
    vec = b.dim() == 2
    if vec:
        b = b.unsqueeze(-1)
    finite = torch.isfinite(H).all(-1).all(-1) & torch.isfinite(b).all(-1).all(-1)
    H = torch.where(finite[:, None, None], H, torch.zeros_like(H))
    b = torch.where(finite[:, None, None], b, torch.zeros_like(b))
    H = 0.5 * (H + H.transpose(-1, -2))
    d = torch.diagonal(H, dim1=-2, dim2=-1).abs()
    dmax = d.amax(-1, keepdim=True)
    d_ok = d > 1e-300 + rcond * dmax
    Dinv = torch.where(d_ok, d.clamp_min(1e-300).rsqrt(), torch.zeros_like(d))
    Hs = Dinv.unsqueeze(-1) * H * Dinv.unsqueeze(-2)
    e, V = torch.linalg.eigh(Hs)
    emax = e.abs().amax(-1, keepdim=True)
    keep = e.abs() > rcond * emax.clamp_min(1e-300)
    inv = torch.where(keep, 1.0 / torch.where(keep, e, torch.ones_like(e)), torch.zeros_like(e))
    xs = V @ (inv.unsqueeze(-1) * (V.transpose(-1, -2) @ (Dinv.unsqueeze(-1) * b)))
    x = Dinv.unsqueeze(-1) * xs
    ill = ~finite | ~keep.all(-1) | ~d_ok.all(-1)
    return (x.squeeze(-1) if vec else x), ill


def so3_left_jacobian_inv(phi: torch.Tensor) -> torch.Tensor:
    """(..., 3) -> (..., 3, 3) ``J_l^-1(phi)``: ``log(exp(d) exp(phi)) = phi + J_l^-1 d + O(d^2)``."""
    theta2 = (phi * phi).sum(-1)[..., None, None]
    small = theta2 < 1e-6
    th2 = torch.where(small, torch.ones_like(theta2), theta2)
    th = th2.sqrt()
    coef = torch.where(
        small,
        1.0 / 12 + theta2 / 720,
        1.0 / th2 - (1 + torch.cos(th)) / (2 * th * torch.sin(th)),
    )
    W = skew(phi)
    eye = torch.eye(3, dtype=phi.dtype, device=phi.device).expand_as(W)
    return eye - 0.5 * W + coef * (W @ W)
