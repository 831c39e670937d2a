"""Closed-form, batched initialisers for PnP (no Python loop over the batch).

Both work on normalized image coordinates (rays ``(u, v, 1)``, i.e. after ``K^-1`` and
undistortion), weight each point's equations by ``sqrt(w_i)`` and return a rotation
projected onto SO(3):

* ``dlt_pose``: the 3x4 projective DLT on Hartley-normalized 3D points (N >= 6, non-planar).
* ``planar_pose``: a homography from the points' best-fit plane, decomposed into R, t
  (N >= 4; exact for planar points, a rough start otherwise).
* ``multistart_pose``: for few points (N <= 7, where PnP has several local minima and the
  homography start often lands in a wrong one) and for thin (near-planar) scenes, where
  noisy DLT / homography starts often do: a deterministic quasi-uniform set of rotations (a
  super-Fibonacci spiral on the unit quaternions) plus the homography and DLT starts, each
  with its closed-form best translation, refined by a short batched LM on the normalized
  rays (on at most ``MULTISTART_MAX_SUBSET`` points); per item the candidate with the lowest
  cost (preferring candidates with every point in front) wins.

``initial_pose`` picks per item: the homography for exactly planar points with more than
``MULTISTART_MAX_POINTS`` points, the multi-start for few points or thin scenes, the DLT
otherwise.
"""
from __future__ import annotations

from typing import Tuple

import torch

from ..geometry.pose import project_to_so3

# items with at most this many weighted points get the multi-start
MULTISTART_MAX_POINTS = 7
# ... and so do thin scenes: smallest / largest principal spread of the points below this
# (measured: with 1 px noise the DLT start reached the right minimum in only 35-65% of scenes
# 0.3-3% thick, 92-94% at 10%)
THIN_RATIO = 0.15
# the multi-start LM runs on at most this many points (the largest weights), then the final
# solve uses them all
MULTISTART_MAX_SUBSET = 64


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


def rotation_grid(n: int, dtype=torch.float64, device=None) -> torch.Tensor:
    """(n, 3, 3) deterministic, near-uniform rotations (super-Fibonacci spiral, Alexa 2022)."""
    i = torch.arange(n, dtype=torch.float64, device=device) + 0.5
    s = i / n
    phi, psi = 2 ** 0.5, 1.533751168755204288118041
    a, b = 2 * torch.pi * i / phi, 2 * torch.pi * i / psi
    r, R = s.sqrt(), (1 - s).sqrt()
    q = torch.stack([r * torch.sin(a), r * torch.cos(a), R * torch.sin(b), R * torch.cos(b)], -1)
    w, x, y, z = q.unbind(-1)
    M = torch.stack([
        1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
        2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
        2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
    ], -1).reshape(n, 3, 3)
    return M.to(dtype)


def translation_given_rotation(uv: torch.Tensor, points3d: torch.Tensor, weights: torch.Tensor,
                               R: torch.Tensor) -> torch.Tensor:
    """Closed-form t (B, 3) minimising sum_i w_i ||u_i x (R X_i + t)||^2 (u_i = (uv_i, 1)).

    Args: uv (B, N, 2), points3d (B, N, 3), weights (B, N), R (B, 3, 3).
    """
    u = torch.cat([uv, torch.ones_like(uv[..., :1])], -1)
    q = points3d @ R.transpose(-1, -2)
    uu = (u * u).sum(-1)
    eye = torch.eye(3, dtype=uv.dtype, device=uv.device)
    A = torch.einsum("bn,ij->bij", weights * uu, eye) - torch.einsum("bn,bni,bnj->bij", weights, u, u)
    b = (weights * uu).unsqueeze(-1) * q - (weights * (u * q).sum(-1)).unsqueeze(-1) * u
    b = -b.sum(1)
    scale = torch.diagonal(A, dim1=-2, dim2=-1).sum(-1).clamp_min(1e-300)
    A = A + 1e-12 * scale[:, None, None] * eye
    return torch.linalg.solve(A, b)


def multistart_pose(uv: torch.Tensor, points3d: torch.Tensor, weights: torch.Tensor,
                    num_starts: int = 24, iters: int = 10) -> Tuple[torch.Tensor, torch.Tensor]:
    """Best of ``num_starts`` grid rotations + the homography (+ DLT) starts after a short LM.

    Args: uv (B, N, 2) normalized coords, points3d (B, N, 3), weights (B, N).
    Returns R (B, 3, 3), t (B, 3). Cost: one LM on B * (num_starts + 2) problems of at most
    ``MULTISTART_MAX_SUBSET`` points.
    """
    from .lm import levenberg_marquardt
    from .residuals import KProjector

    B, N = uv.shape[:2]
    if N > MULTISTART_MAX_SUBSET:
        idx = weights.topk(MULTISTART_MAX_SUBSET, dim=-1).indices
        uv = uv.gather(1, idx.unsqueeze(-1).expand(-1, -1, 2))
        points3d = points3d.gather(1, idx.unsqueeze(-1).expand(-1, -1, 3))
        weights = weights.gather(1, idx)
        N = MULTISTART_MAX_SUBSET
    starts = [planar_pose(uv, points3d, weights)[0].unsqueeze(1)]
    if N >= 6:
        starts.append(dlt_pose(uv, points3d, weights)[0].unsqueeze(1))
    starts.append(rotation_grid(num_starts, uv.dtype, uv.device).expand(B, num_starts, 3, 3))
    R0 = torch.cat(starts, 1)
    S = R0.shape[1]
    R0 = R0.reshape(B * S, 3, 3)
    rep = lambda a: a.repeat_interleave(S, 0)  # noqa: E731
    x, X, w = rep(uv), rep(points3d), rep(weights)
    t0 = translation_given_rotation(x, X, w, R0)
    eye = torch.eye(3, dtype=uv.dtype, device=uv.device).expand(B * S, 3, 3)
    st = levenberg_marquardt(R0, t0, X, x, KProjector(eye), w, max_iters=iters, polish_steps=0)
    depth = (X @ st.R.transpose(-1, -2) + st.t.unsqueeze(1))[..., 2]
    front = ((depth > 0) | (w <= 0)).all(-1)
    cost = torch.where(torch.isfinite(st.cost), st.cost, torch.full_like(st.cost, float("inf")))
    # candidates with a point behind the camera lose against any with all in front
    key = (cost + torch.where(front, 0.0, float("inf"))).reshape(B, S)
    key = torch.where(torch.isinf(key).all(-1, keepdim=True), cost.reshape(B, S), key)
    best = key.argmin(-1) + torch.arange(B, device=uv.device) * S
    return st.R[best], st.t[best]


def initial_pose(uv: torch.Tensor, points3d: torch.Tensor, weights: torch.Tensor):
    """Per-item choice (see the module docstring). Returns R (B, 3, 3), t (B, 3)."""
    _, _, _, sv = _weighted_frame(points3d, weights)
    planar = sv[:, 2] <= 1e-3 * sv[:, 0]
    thin = sv[:, 2] < THIN_RATIO * sv[:, 0]
    n_eff = (weights > 0).sum(-1)
    R, t = planar_pose(uv, points3d, weights)
    many = n_eff > MULTISTART_MAX_POINTS
    use_dlt = ~thin & many
    if bool(use_dlt.any()):
        Rd, td = dlt_pose(uv, points3d, weights)
        R = torch.where(use_dlt[:, None, None], Rd, R)
        t = torch.where(use_dlt[:, None], td, t)
    multi = (thin & ~(planar & many)) | (~many & (n_eff >= 4))
    if bool(multi.any()):
        idx = torch.nonzero(multi).flatten()
        Rm, tm = multistart_pose(uv[idx], points3d[idx], weights[idx])
        R, t = R.clone(), t.clone()
        R[idx], t[idx] = Rm, tm
    return R, t
