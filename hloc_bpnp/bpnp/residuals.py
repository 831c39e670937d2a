"""The residual model of BPnP: camera projection, reprojection residuals, analytic Jacobians.

A problem is ``min_pose sum_i w_i rho(||proj(R X_i + t) - x_i||^2)``. Two projection models:

* ``KProjector``: a (B, 3, 3) matrix K, ``x = (K p)[:2] / (K p)[2]`` (the ``bpnp`` contract;
  any K including skew).
* ``CameraProjector``: a :class:`hloc_bpnp.geometry.Camera` (COLMAP models with distortion).

Pose perturbations (the solver's tangent space): ``R <- exp(d_w) R`` (left-multiplicative),
``t <- t + d_t``; ``d = [d_w, d_t]`` (..., 6). With ``q = R X`` and ``p = q + t``,
``dp/dd = [-[q]_x, I]``.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch

from ..geometry.camera import distort_jacobian, distort, split_params
from ..geometry.pose import so3_exp


def _apply_matrix(M: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """(B, 3, 3) x (B, N, 3) -> (B, N, 3) ``M @ p_i``."""
    return p @ M.transpose(-1, -2)


class KProjector:
    """Pinhole projection with a full 3x3 matrix K.

    Args:
        K: (B, 3, 3).
    """

    kind = "K"

    def __init__(self, K: torch.Tensor):
        self.K = K

    def project(self, p: torch.Tensor, with_jacobian: bool = True):
        """p (B, N, 3) camera points -> pixels (B, N, 2), d pixels / d p (B, N, 2, 3) or None."""
        h = _apply_matrix(self.K, p)  # (B, N, 3)
        hz = h[..., 2:3]
        x = h[..., :2] / hz
        if not with_jacobian:
            return x, None
        # dx/dp = (dx/dh) K with dx/dh = [I2 / hz, -x / hz]: row k is (K_k - x_k K_2) / hz,
        # elementwise (no per-point 2x3 @ 3x3 matrix products, which dominate on a CPU)
        K = self.K.unsqueeze(1)  # (B, 1, 3, 3)
        return x, (K[..., :2, :] - x.unsqueeze(-1) * K[..., 2:3, :]) / hz.unsqueeze(-1)

    def depth(self, p: torch.Tensor) -> torch.Tensor:
        """(B, N) depth along the viewing direction (sign of the homogeneous scale)."""
        return (p @ self.K[:, 2, :].unsqueeze(-1)).squeeze(-1)

    def normalized_rays(self, x: torch.Tensor) -> torch.Tensor:
        """Pixels (B, N, 2) -> (B, N, 2) normalized coordinates of K^-1 [x, 1] (for initialisers)."""
        h = torch.cat([x, torch.ones_like(x[..., :1])], -1) @ torch.linalg.inv(self.K).transpose(-1, -2)
        return h[..., :2] / h[..., 2:3]


class CameraProjector:
    """Projection through a COLMAP camera model (with distortion).

    Args:
        model: COLMAP model name.
        params: (B, P) camera parameters.
    """

    kind = "camera"

    def __init__(self, model: str, params: torch.Tensor):
        self.model = model
        self.params = params
        fx, fy, cx, cy, dist = split_params(model, params)
        self.f = torch.stack([fx, fy], -1).unsqueeze(1)  # (B, 1, 2)
        self.c = torch.stack([cx, cy], -1).unsqueeze(1)
        self.dist = dist  # (B, D)

    def project(self, p: torch.Tensor, with_jacobian: bool = True):
        z = p[..., 2:3]
        uv = p[..., :2] / z
        x = distort(self.model, self.dist, uv) * self.f + self.c
        if not with_jacobian:
            return x, None
        duv_dp = torch.cat([torch.diag_embed(torch.ones_like(uv)), -uv.unsqueeze(-1)], -1) / z.unsqueeze(-1)
        Jd = distort_jacobian(self.model, self.dist, uv)  # (B, N, 2, 2)
        return x, (self.f.unsqueeze(-1) * Jd) @ duv_dp

    def depth(self, p: torch.Tensor) -> torch.Tensor:
        return p[..., 2]

    def normalized_rays(self, x: torch.Tensor) -> torch.Tensor:
        from ..geometry.camera import undistort

        return undistort(self.model, self.dist, (x - self.c) / self.f)


class WhitenedProjector:
    """A projector whose pixels are mapped by per-point 2 x 2 matrices ``L`` (B, N, 2, 2): with
    points2d mapped the same way (:meth:`whiten`), the solver's residuals become ``L_i r_i`` and
    its cost ``sum_i w_i rho(r_i^T L_i^T L_i r_i)``: anisotropic pixel noise of covariance
    ``(L_i^T L_i)^-1`` (e.g. a keypoint located well across an edge, poorly along it).

    Args:
        base: a :class:`KProjector` or :class:`CameraProjector`.
        L: (B, N, 2, 2) square roots of the per-point information matrices.
    """

    def __init__(self, base, L: torch.Tensor):
        self.base, self.L, self.kind = base, L, base.kind

    def whiten(self, x: torch.Tensor) -> torch.Tensor:
        """(B, N, 2) pixels -> (B, N, 2) ``L_i x_i``."""
        return (self.L @ x.unsqueeze(-1)).squeeze(-1)

    def project(self, p: torch.Tensor, with_jacobian: bool = True):
        x, J = self.base.project(p, with_jacobian)
        return self.whiten(x), (None if J is None else self.L @ J)

    def depth(self, p: torch.Tensor) -> torch.Tensor:
        return self.base.depth(p)

    def normalized_rays(self, x: torch.Tensor) -> torch.Tensor:
        return self.base.normalized_rays(x)


def residuals_and_jacobian(
    R: torch.Tensor,
    t: torch.Tensor,
    points3d: torch.Tensor,
    points2d: torch.Tensor,
    projector,
    with_jacobian: bool = True,
) -> Tuple[torch.Tensor, Optional[torch.Tensor], torch.Tensor]:
    """Reprojection residuals and their Jacobian w.r.t. the tangent perturbation.

    Args:
        R: (B, 3, 3); t: (B, 3); points3d: (B, N, 3); points2d: (B, N, 2).
    Returns:
        r (B, N, 2) = proj(R X + t) - x, J (B, N, 2, 6) = dr/dd (or None), depth (B, N).
    """
    q = _apply_matrix(R, points3d)
    p = q + t.unsqueeze(1)
    x, Jp = projector.project(p, with_jacobian)
    r = x - points2d
    if not with_jacobian:
        return r, None, projector.depth(p)
    # dr/dd = Jp [-[q]_x, I]; a row a of Jp gives a^T (-[q]_x) = (q x a)^T: a cross product
    # instead of per-point (2, 3) @ (3, 6) matrix products
    Jw = torch.linalg.cross(q.unsqueeze(-2).expand_as(Jp), Jp, dim=-1)
    return r, torch.cat([Jw, Jp], -1), projector.depth(p)


def perturbed_residuals(
    delta: torch.Tensor,
    R: torch.Tensor,
    t: torch.Tensor,
    points3d: torch.Tensor,
    points2d: torch.Tensor,
    projector,
) -> torch.Tensor:
    """Residuals (B, N, 2) at the perturbed pose ``(exp(d_w) R, t + d_t)``, differentiable in
    ``delta`` (B, 6) and in all problem tensors (used by the implicit backward)."""
    R_d = so3_exp(delta[:, :3]) @ R
    r, _, _ = residuals_and_jacobian(R_d, t + delta[:, 3:], points3d, points2d, projector, False)
    return r
