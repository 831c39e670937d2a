"""Pose covariance at the optimum.

``cov = sigma^2 (J^T W J)^-1`` (B, 6, 6) in the solver's tangent space: rotation as the left
perturbation ``d_w`` (radians, ``R = exp(d_w) R*``), then translation ``d_t`` (scene units).
``W = diag(w_i rho'(s_i))`` (IRLS weights at the optimum) and

    sigma^2 = sum_i w_i rho'(s_i) s_i / (2 n - 6),   n = #points with w_i rho'(s_i) > 0,

the unbiased estimate of the per-coordinate pixel noise variance when ``w_i`` are inverse
relative variances (``sigma^2 = 1`` is a better choice when the weights are exact inverse
variances: pass ``sigma2=1.0``). This is the Cramer-Rao bound of the L2 problem at the
solution; with n <= 3 sigma^2 is undefined and the covariance is NaN.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch

from .linalg import safe_solve
from .losses import robust_rho
from .residuals import residuals_and_jacobian


def pose_covariance(
    R: torch.Tensor,
    t: torch.Tensor,
    points3d: torch.Tensor,
    points2d: torch.Tensor,
    projector,
    weights: torch.Tensor,
    loss: str = "l2",
    loss_scale: float = 1.0,
    sigma2: Optional[float] = None,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Covariance (B, 6, 6), sigma^2 (B,), ill-conditioned flag (B,) at pose (R, t)."""
    with torch.no_grad():
        r, J, _ = residuals_and_jacobian(R, t, points3d, points2d, projector)
        s = (r * r).sum(-1)
        _, rho1 = robust_rho(s, loss, loss_scale)
        wr = weights * rho1
        Jf = J.reshape(J.shape[0], -1, 6)  # (B, 2N, 6)
        A = (wr.repeat_interleave(2, -1).unsqueeze(-1) * Jf).transpose(1, 2) @ Jf
        if sigma2 is None:
            n = (wr > 0).sum(-1).to(R.dtype)
            dof = 2 * n - 6
            s2 = torch.where(dof > 0, (wr * s).sum(-1) / dof.clamp_min(1), torch.full_like(n, float("nan")))
        else:
            s2 = torch.full(R.shape[:1], float(sigma2), dtype=R.dtype, device=R.device)
        eye = torch.eye(6, dtype=R.dtype, device=R.device).expand(R.shape[0], 6, 6)
        Ainv, ill = safe_solve(A, eye)
        return s2[:, None, None] * Ainv, s2, ill
