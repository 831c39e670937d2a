"""Closed-form, batched initialisers for PnP (no Python loop over the batch).

Both work on normalized image coordinates (rays ``(u, v, 1)``, i.e. after ``K^-1`` and
undistortion), weight each point's equations by ``sqrt(w_i)`` and return a rotation
projected onto SO(3):

* ``dlt_pose``: the 3x4 projective DLT on Hartley-normalized 3D points (N >= 6, non-planar).
* ``planar_pose``: a homography from the points' best-fit plane, decomposed into R, t
  (N >= 4; exact for planar points, a rough start otherwise).

``initial_pose`` picks per item: DLT where N >= 6 and the points are not planar, the
homography otherwise.
"""
from __future__ import annotations

from typing import Tuple

import torch

from ..geometry.pose import project_to_so3


def _weighted_frame(points3d: torch.Tensor, weights: torch.Tensor):
    """Weighted centroid m (B, 3), RMS radius s (B,), principal axes V (B, 3, 3), svals (B, 3)."""
    w = weights / weights.sum(-1, keepdim=True).clamp_min(1e-300)
    m = (w.unsqueeze(-1) * points3d).sum(1)
    Xc = points3d - m.unsqueeze(1)
    s = ((w * (Xc * Xc).sum(-1)).sum(-1)).sqrt().clamp_min(1e-300)
    cov = torch.einsum("bn,bni,bnj->bij", w, Xc, Xc)
    evals, V = torch.linalg.eigh(cov)  # ascending
    V = V.flip(-1)  # columns: largest first, normal last
    evals = evals.flip(-1).clamp_min(0)
    det = torch.det(V)
    V = torch.cat([V[..., :2], V[..., 2:] * det[:, None, None].sign()], -1)
    return m, s, V, evals.sqrt()


def _null_vector(A: torch.Tensor) -> torch.Tensor:
    """(B, M, K) -> (B, K) unit vector minimising ||A x|| (smallest eigenvector of A^T A)."""
    _, V = torch.linalg.eigh(A.transpose(-1, -2) @ A)
    return V[..., 0]


def dlt_pose(uv: torch.Tensor, points3d: torch.Tensor, weights: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Projective DLT. uv (B, N, 2) normalized coords, points3d (B, N, 3), weights (B, N).

    Returns R (B, 3, 3), t (B, 3).
    """
    m, s, _, _ = _weighted_frame(points3d, weights)
    Xn = (points3d - m.unsqueeze(1)) / s[:, None, None]
    Xh = torch.cat([Xn, torch.ones_like(Xn[..., :1])], -1)  # (B, N, 4)
    z = torch.zeros_like(Xh)
    u, v = uv[..., :1], uv[..., 1:]
    sw = weights.clamp_min(0).sqrt().unsqueeze(-1)
    r1 = torch.cat([Xh, z, -u * Xh], -1) * sw
    r2 = torch.cat([z, Xh, -v * Xh], -1) * sw
    A = torch.cat([r1, r2], 1)  # (B, 2N, 12)
    P = _null_vector(A).reshape(-1, 3, 4)
    M = P[..., :3] / s[:, None, None]
    p = P[..., 3] - (M @ m.unsqueeze(-1)).squeeze(-1)
    det = torch.det(M)
    sv = torch.linalg.svdvals(M).mean(-1)
    lam = torch.where(det < 0, -sv, sv)
    lam = torch.where(lam.abs() < 1e-300, torch.ones_like(lam), lam)
    R = project_to_so3(M / lam[:, None, None])
    t = p / lam[:, None]
    return R, t


def planar_pose(uv: torch.Tensor, points3d: torch.Tensor, weights: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Homography from the best-fit plane of the points. Same shapes as ``dlt_pose``."""
    m, s, V, _ = _weighted_frame(points3d, weights)
    Y = (points3d - m.unsqueeze(1)) @ V  # (B, N, 3) plane coordinates, third ~ 0
    a = Y[..., :2] / s[:, None, None]
    ah = torch.cat([a, torch.ones_like(a[..., :1])], -1)
    z = torch.zeros_like(ah)
    u, v = uv[..., :1], uv[..., 1:]
    sw = weights.clamp_min(0).sqrt().unsqueeze(-1)
    r1 = torch.cat([ah, z, -u * ah], -1) * sw
    r2 = torch.cat([z, ah, -v * ah], -1) * sw
    H = _null_vector(torch.cat([r1, r2], 1)).reshape(-1, 3, 3)
    h1, h2, h3 = H[..., 0], H[..., 1], H[..., 2]
    lam = 0.5 * (h1.norm(dim=-1) + h2.norm(dim=-1))
    lam = torch.where(h3[:, 2] < 0, -lam, lam)  # plane origin (the centroid) in front
    lam = torch.where(lam.abs() < 1e-300, torch.ones_like(lam), lam)
    c1, c2 = h1 / lam[:, None], h2 / lam[:, None]
    Rp = project_to_so3(torch.stack([c1, c2, torch.linalg.cross(c1, c2)], -1))
    tp = h3 / lam[:, None]
    R = Rp @ V.transpose(-1, -2)
    t = s[:, None] * tp - (R @ m.unsqueeze(-1)).squeeze(-1)
    return R, t


def is_planar(points3d: torch.Tensor, weights: torch.Tensor, tol: float = 1e-3) -> torch.Tensor:
    """(B,) True where the weighted points lie (within ``tol`` relative spread) on a plane."""
    _, _, _, sv = _weighted_frame(points3d, weights)
    return sv[:, 2] <= tol * sv[:, 0]


def initial_pose(uv: torch.Tensor, points3d: torch.Tensor, weights: torch.Tensor):
    """Per-item choice of DLT (N >= 6 non-planar) or homography. Returns R (B,3,3), t (B,3)."""
    N = points3d.shape[1]
    planar = is_planar(points3d, weights)
    Rh, th = planar_pose(uv, points3d, weights)
    if N < 6 or bool(planar.all()):
        return Rh, th
    Rd, td = dlt_pose(uv, points3d, weights)
    use_h = planar | ((weights > 0).sum(-1) < 6)
    return torch.where(use_h[:, None, None], Rh, Rd), torch.where(use_h[:, None], th, td)
