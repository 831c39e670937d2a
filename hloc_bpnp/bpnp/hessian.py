"""Analytic second-order terms of the BPnP objective for pinhole projection (the fast backward).

The objective at the optimum ``(R, t)``, in the solver's tangent parametrisation
``R(d) = exp(d_w) R``, ``t(d) = t + d_t`` (see ``residuals.py``), is

    F(d, theta) = sum_i w_i rho(s_i),   s_i = ||r_i||^2,   r_i = pi(K p_i(d)) - x_i,
    p_i(d) = exp(d_w) q_i + t + d_t,    q_i = R X_i,   pi(h) = h_xy / h_z.

With ``h = K p``, ``J_h = dpi/dh = [I_2, -x] / h_z`` (2, 3), ``D_h = dh/dd = K [-[q]_x, I]``
(3, 6) and ``J = J_h D_h`` (2, 6):

* gradient ``g = sum_i 2 w_i rho'_i J_i^T r_i``;
* full Hessian ``H = dg/dd``::

      H = sum_i 2 w_i rho'_i J_i^T J_i + 4 w_i rho''_i (J_i^T r_i)(J_i^T r_i)^T
          + D_h^T M(beta_i) D_h                                 (curvature of pi)
          + [ (A + A^T) / 2 - tr(A) I  on the rotation block ]   (curvature of exp)

  where ``beta_i = 2 w_i rho'_i r_i``, ``M(beta) = sum_k beta_k d^2 pi_k / dh^2`` =
  ``[[0, 0, -b0], [0, 0, -b1], [-b0, -b1, 2 b.x]] / h_z^2`` and ``A = sum_i (K^T J_h^T
  beta_i) q_i^T`` (the second derivative of ``exp(d_w) q`` is ``(e_a q_b + e_b q_a) / 2 -
  q delta_ab``);
* the mixed term needed by the implicit backward, as a vector-Jacobian product: for a
  direction ``lam`` (B, 6), ``G = lam^T g = sum_i beta_i^T e_i`` with ``e_i = J_h (K v_i)``,
  ``v_i = lam_w x q_i + lam_t``, and ``dL/dtheta = -dG/dtheta``::

      gamma_i = dG/dr_i = 2 w_i (rho'_i e_i + 2 rho''_i (r_i . e_i) r_i)
      dL/dx_i = gamma_i
      dL/dw_i = -2 rho'_i (r_i . e_i)
      u_i     = J_h^T gamma_i + M(beta_i) K v_i                      (dG/dh_i at fixed v)
      dL/dX_i = -R^T (K^T u_i + (K^T J_h^T beta_i) x lam_w)
      dL/dK   = -sum_i (u_i p_i^T + (J_h^T beta_i) v_i^T)

Everything is vectorised over (B, N). ``SIMPLE_PINHOLE`` / ``PINHOLE`` cameras map to K and
their parameter gradient is read off dL/dK; distortion models use the autograd path in
``implicit.py``. ``tests/test_bpnp_grad.py`` holds every term against autograd to ~1e-10.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple

import torch

from .losses import robust_rho2

PINHOLE_MODELS = ("SIMPLE_PINHOLE", "PINHOLE")


def supports_analytic(kind: str, model: Optional[str]) -> bool:
    """True where the analytic path applies: a matrix K or a distortion-free COLMAP model."""
    return kind == "K" or model in PINHOLE_MODELS


def camera_matrix(kind: str, model: Optional[str], cam: torch.Tensor) -> torch.Tensor:
    """K (B, 3, 3) from a K (B, 3, 3) or SIMPLE_PINHOLE / PINHOLE params (B, P)."""
    if kind == "K":
        return cam
    if model not in PINHOLE_MODELS:
        raise ValueError(f"camera_matrix: model {model!r} has distortion, no K; use one of {PINHOLE_MODELS}")
    if model == "SIMPLE_PINHOLE":
        fx = fy = cam[:, 0]
        cx, cy = cam[:, 1], cam[:, 2]
    else:
        fx, fy, cx, cy = cam.unbind(-1)
    z, o = torch.zeros_like(fx), torch.ones_like(fx)
    return torch.stack([fx, z, cx, z, fy, cy, z, z, o], -1).reshape(-1, 3, 3)


def params_grad_from_K(kind: str, model: Optional[str], grad_K: torch.Tensor) -> torch.Tensor:
    """Chain dL/dK (B, 3, 3) to the parameters of ``camera_matrix`` ((B, 3, 3) or (B, P))."""
    if kind == "K":
        return grad_K
    gfx, gfy, gcx, gcy = grad_K[:, 0, 0], grad_K[:, 1, 1], grad_K[:, 0, 2], grad_K[:, 1, 2]
    if model == "SIMPLE_PINHOLE":
        return torch.stack([gfx + gfy, gcx, gcy], -1)
    return torch.stack([gfx, gfy, gcx, gcy], -1)


@dataclass
class PinholeTerms:
    """Per-point quantities at the optimum, shared by the Hessian and the mixed VJP.

    Stored point-last ("structure of arrays"): every per-point component is a contiguous
    (B, N) row, so the per-point arithmetic runs on long contiguous rows (much faster on a
    CPU than many tiny trailing dimensions) and the sums over N are batched matmuls.
    """

    R: torch.Tensor  # (B, 3, 3)
    K: torch.Tensor  # (B, 3, 3)
    q: torch.Tensor  # (B, 3, N) R X
    p: torch.Tensor  # (B, 3, N) R X + t
    x: torch.Tensor  # (B, 2, N) projections
    ihz: torch.Tensor  # (B, N) 1 / (K p)_z
    r: torch.Tensor  # (B, 2, N) residuals
    Jp: torch.Tensor  # (B, 2, 3, N) dr_k/dp = (K_k - x_k K_2) / h_z
    J: torch.Tensor  # (B, 2, 6, N) dr_k/dd = [q x Jp_k, Jp_k]
    w: torch.Tensor  # (B, N)
    rho1: torch.Tensor  # (B, N)
    rho2: Optional[torch.Tensor]  # (B, N), None for l2 (identically 0)


def _cross(a, b):
    """Cross product of two 3-sequences of broadcastable tensors (component-wise)."""
    return (a[1] * b[2] - a[2] * b[1], a[2] * b[0] - a[0] * b[2], a[0] * b[1] - a[1] * b[0])


def pinhole_terms(
    R: torch.Tensor,
    t: torch.Tensor,
    points3d: torch.Tensor,
    points2d: torch.Tensor,
    K: torch.Tensor,
    weights: torch.Tensor,
    loss: str,
    loss_scale: float,
) -> PinholeTerms:
    """Per-point terms at ``(R, t)``: R (B, 3, 3), t (B, 3), points3d (B, N, 3), points2d
    (B, N, 2), K (B, 3, 3), weights (B, N) (all expanded to the batch, same dtype)."""
    q = R @ points3d.transpose(1, 2)  # (B, 3, N)
    p = q + t.unsqueeze(-1)
    h = K @ p
    ihz = 1.0 / h[:, 2]
    x = h[:, :2] * ihz.unsqueeze(1)
    r = x - points2d.transpose(1, 2)
    Kc = K.unsqueeze(-1)  # (B, 3, 3, 1): K[:, i, j] broadcasts over N
    Jp = (Kc[:, :2] - x.unsqueeze(2) * Kc[:, 2:3]) * ihz[:, None, None]  # (B, 2, 3, N)
    qs = q.unbind(1)
    rows = []
    for k in range(2):
        a = Jp[:, k].unbind(1)
        rows.extend(_cross(qs, a))
        rows.extend(a)
    J = torch.stack(rows, 1).reshape(q.shape[0], 2, 6, -1)
    s = r[:, 0] * r[:, 0] + r[:, 1] * r[:, 1]
    if loss == "l2":
        rho1, rho2 = torch.ones_like(s), None
    else:
        _, rho1, rho2 = robust_rho2(s, loss, loss_scale)
    return PinholeTerms(R, K, q, p, x, ihz, r, Jp, J, weights, rho1, rho2)


def _tangent_rows(qs, y) -> torch.Tensor:
    """``[q x y, y]`` (B, 6, N): the tangent gradient of ``y . p(d)`` (y: 3 components)."""
    y = [c.expand_as(qs[0]) for c in y]
    return torch.stack([*_cross(qs, y), *y], 1)


def pinhole_gradient_hessian(T: PinholeTerms, exact: bool = True) -> Tuple[torch.Tensor, torch.Tensor]:
    """Tangent gradient g (B, 6) and Hessian H (B, 6, 6) (full, or Gauss-Newton with
    ``exact=False``) of ``F`` at ``d = 0``."""
    wr1 = T.w * T.rho1
    beta = 2 * wr1.unsqueeze(1) * T.r  # (B, 2, N)
    J0, J1 = T.J[:, 0], T.J[:, 1]  # (B, 6, N)
    g = (J0 @ beta[:, 0].unsqueeze(-1) + J1 @ beta[:, 1].unsqueeze(-1)).squeeze(-1)
    w2 = 2 * wr1.unsqueeze(1)
    H = (J0 * w2) @ J0.transpose(1, 2) + (J1 * w2) @ J1.transpose(1, 2)
    if not exact:
        return g, H
    if T.rho2 is not None:
        Jr = J0 * T.r[:, 0:1] + J1 * T.r[:, 1:2]  # (B, 6, N) J^T r
        H = H + (Jr * (4 * T.w * T.rho2).unsqueeze(1)) @ Jr.transpose(1, 2)
    # curvature of pi: D_h^T M(beta) D_h = m Dz^T + Dz m^T with m = [q x kappa, kappa],
    # Dz = [q x K_2, K_2], kappa = K^T (-b0, -b1, b.x) / h_z^2
    b0, b1 = beta[:, 0], beta[:, 1]
    bx = b0 * T.x[:, 0] + b1 * T.x[:, 1]
    ihz2 = (T.ihz * T.ihz).unsqueeze(1)
    kappa = T.K.transpose(1, 2) @ (torch.stack([-b0, -b1, bx], 1) * ihz2)  # (B, 3, N)
    qs = T.q.unbind(1)
    m = _tangent_rows(qs, kappa.unbind(1))
    Dz = _tangent_rows(qs, T.K[:, 2, :, None].unbind(1))
    C = m @ Dz.transpose(1, 2)
    # curvature of exp: A = sum_i (Jp^T beta) q^T
    a = T.Jp[:, 0] * b0.unsqueeze(1) + T.Jp[:, 1] * b1.unsqueeze(1)  # (B, 3, N)
    A = a @ T.q.transpose(1, 2)
    eye = torch.eye(3, dtype=A.dtype, device=A.device)
    rot = 0.5 * (A + A.transpose(-1, -2)) - A.diagonal(dim1=-2, dim2=-1).sum(-1)[:, None, None] * eye
    H = H + C + C.transpose(-1, -2)
    H[:, :3, :3] += rot
    return g, H


def pinhole_mixed_vjp(T: PinholeTerms, lam: torch.Tensor, need=(True, True, True, True)):
    """``dL/dtheta = -d(lam^T g)/dtheta`` for theta = points2d, points3d, K, weights.

    Args:
        T: terms from ``pinhole_terms``; lam (B, 6) = ``H^-1 dL/dd``;
        need: which of the four gradients to compute (the others are None).
    Returns:
        per-item gradients (B, N, 2), (B, N, 3), (B, 3, 3), (B, N).
    """
    e = (lam[:, None, None, :] @ T.J).squeeze(2)  # (B, 2, N) J lam
    e0, e1 = e[:, 0], e[:, 1]
    r0, r1 = T.r[:, 0], T.r[:, 1]
    re = r0 * e0 + r1 * e1
    w2 = 2 * T.w
    if T.rho2 is None:
        g0, g1 = w2 * e0, w2 * e1
    else:
        c = 2 * T.rho2 * re
        g0, g1 = w2 * (T.rho1 * e0 + c * r0), w2 * (T.rho1 * e1 + c * r1)
    grad_x = torch.stack([g0, g1], -1) if need[0] else None
    grad_w = -2 * T.rho1 * re if need[3] else None
    grad_X = grad_K = None
    if need[1] or need[2]:
        wr2 = w2 * T.rho1
        b0, b1 = wr2 * r0, wr2 * r1
        x0, x1, ihz = T.x[:, 0], T.x[:, 1], T.ihz
        lam_w, lam_t = lam[:, :3], lam[:, 3:]
        K2 = T.K[:, 2, :]
        # (K v)_z with v = lam_w x q + lam_t:  q . (K_2 x lam_w) + K_2 . lam_t
        s = torch.linalg.cross(K2, lam_w)
        hvz = (s.unsqueeze(1) @ T.q).squeeze(1) + (K2 * lam_t).sum(-1, keepdim=True)
        # u = J_h^T gamma + M(beta) K v, using beta . (K v)_xy = h_z beta.e + (beta.x) (K v)_z
        bx = b0 * x0 + b1 * x1
        be = b0 * e0 + b1 * e1
        hi = hvz * ihz
        u = torch.stack([(g0 - b0 * hi) * ihz, (g1 - b1 * hi) * ihz,
                         (bx * hi - be - g0 * x0 - g1 * x1) * ihz], 1)  # (B, 3, N)
        cb = torch.stack([b0 * ihz, b1 * ihz, -bx * ihz], 1)  # J_h^T beta
        Kt = T.K.transpose(1, 2)
        if need[1]:
            a = (Kt @ cb).unbind(1)  # Jp^T beta
            lw = lam_w.unsqueeze(-1).unbind(1)
            dGdp = Kt @ u + torch.stack(_cross(a, lw), 1)
            grad_X = -(dGdp.transpose(1, 2) @ T.R)
        if need[2]:
            v = torch.stack(_cross(lam_w.unsqueeze(-1).unbind(1), T.q.unbind(1)), 1) + lam_t.unsqueeze(-1)
            grad_K = -(u @ T.p.transpose(1, 2) + cb @ v.transpose(1, 2))
    return grad_x, grad_X, grad_K, grad_w
