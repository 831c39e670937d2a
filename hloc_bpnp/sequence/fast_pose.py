"""Pose refinement for the tracking path: BPnP's objective, solved in plain numpy.

The tracker refines one pose per frame from its prediction, on a few hundred 2D-3D pairs,
several times per frame. :func:`hloc_bpnp.bpnp.solve_pnp` (batched torch, implicit backward,
covariance) costs 25-140 ms per call here on one thread for 500 points, mostly per-op torch
overhead; this solver minimises the same cost -- ``sum_i rho(||proj(R X_i + t) - x_i||^2)``
with the same robust losses, plus the same Gaussian prior ``e^T info e``,
``e = [log(R R_p^T), t - t_p]`` (see :mod:`hloc_bpnp.bpnp.lm`) -- by Levenberg-Marquardt with
the robust Gauss-Newton matrix (IRLS where it is not positive definite) on the same tangent space (``R <- exp(d_w) R``, ``t <- t + d_t``), in about a
millisecond. No gradient flows through it (tracking needs none). Pinhole cameras only
(``SIMPLE_PINHOLE``, ``PINHOLE``); the tracker uses ``solve_pnp`` for the others.

A test holds it against ``solve_pnp`` (same optimum to 1e-8).
"""
from __future__ import annotations

from typing import Optional, Tuple

import numpy as np

PINHOLE_MODELS = ("SIMPLE_PINHOLE", "PINHOLE")


def skew(v: np.ndarray) -> np.ndarray:
    """(..., 3) -> (..., 3, 3) cross-product matrices."""
    if v.ndim == 1:  # the common case, without the stacking overhead
        return np.array([[0.0, -v[2], v[1]], [v[2], 0.0, -v[0]], [-v[1], v[0], 0.0]])
    z = np.zeros(v.shape[:-1])
    return np.stack([np.stack([z, -v[..., 2], v[..., 1]], -1),
                     np.stack([v[..., 2], z, -v[..., 0]], -1),
                     np.stack([-v[..., 1], v[..., 0], z], -1)], -2)


def so3_exp(w: np.ndarray) -> np.ndarray:
    """(3,) axis-angle -> (3, 3) rotation (Rodrigues)."""
    th = float(np.linalg.norm(w))
    W = skew(w)
    if th < 1e-8:
        return np.eye(3) + W + 0.5 * W @ W
    return np.eye(3) + np.sin(th) / th * W + (1 - np.cos(th)) / th ** 2 * W @ W


def so3_log(R: np.ndarray) -> np.ndarray:
    """(3, 3) rotation -> (3,) axis-angle (stable near 0 and pi)."""
    c = np.clip((np.trace(R) - 1) / 2, -1.0, 1.0)
    th = float(np.arccos(c))
    v = np.array([R[2, 1] - R[1, 2], R[0, 2] - R[2, 0], R[1, 0] - R[0, 1]])
    if th < 1e-6:
        return 0.5 * v
    if np.pi - th < 1e-4:  # near pi: the axis from the symmetric part
        B = (R + np.eye(3)) / 2
        axis = np.sqrt(np.clip(np.diag(B), 0, None))
        i = int(np.argmax(axis))
        axis = B[i] / max(axis[i], 1e-12)
        axis /= np.linalg.norm(axis)
        if axis @ v < 0:
            axis = -axis
        return th * axis
    return th / (2 * np.sin(th)) * v


def orthonormalize(R: np.ndarray) -> np.ndarray:
    """The rotation nearest to a (3, 3) matrix (SVD): composing poses drifts off SO(3)."""
    U, _, Vt = np.linalg.svd(R)
    if np.linalg.det(U @ Vt) < 0:
        U[:, -1] = -U[:, -1]
    return U @ Vt


def _left_jacobian_inv(phi: np.ndarray) -> np.ndarray:
    th = float(np.linalg.norm(phi))
    W = skew(phi)
    if th < 1e-6:
        coef = 1.0 / 12.0
    else:
        coef = 1 / th ** 2 - (1 + np.cos(th)) / (2 * th * np.sin(th))
    return np.eye(3) - 0.5 * W + coef * W @ W


def _rho(s: np.ndarray, loss: str, scale: float) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """rho(s), rho'(s), rho''(s) of a robust loss of the squared residual norm s."""
    if loss == "l2":
        return s, np.ones_like(s), np.zeros_like(s)
    c2 = float(scale) ** 2
    if loss == "huber":
        inl = s <= c2
        root = np.sqrt(np.where(inl, c2, s))
        return (np.where(inl, s, 2 * scale * root - c2), np.where(inl, 1.0, scale / root),
                np.where(inl, 0.0, -0.5 * scale / root ** 3))
    if loss == "cauchy":
        q = 1.0 / (1.0 + s / c2)
        return c2 * np.log1p(s / c2), q, -q * q / c2
    raise ValueError(f"Unknown loss {loss!r} (l2 | huber | cauchy)")


def refine_pose(x: np.ndarray, X: np.ndarray, fx: float, fy: float, cx: float, cy: float,
                R0: np.ndarray, t0: np.ndarray, loss: str = "cauchy", scale: float = 1.0,
                prior: Optional[Tuple[np.ndarray, np.ndarray, np.ndarray]] = None,
                max_iters: int = 30, tol: float = 1e-8, step_tol: float = 1e-8):
    """Minimise ``sum_i rho(||proj(R X_i + t) - x_i||^2) [+ e^T info e]`` from (R0, t0).

    Args:
        x: (N, 2) pixels (COLMAP convention); X: (N, 3) world points.
        fx, fy, cx, cy: pinhole intrinsics.
        R0: (3, 3), t0: (3,) initial cam_from_world.
        loss, scale: robust loss (``l2``, ``huber``, ``cauchy``) and its scale in pixels.
        prior: optional (R_p (3, 3), t_p (3,), info (6, 6)).
        max_iters: LM iterations; tol: relative cost decrease, step_tol: largest step entry
            (rad / scene units) that ends the loop.
    Returns:
        (R (3, 3), t (3,), covariance (6, 6) ``sigma^2 A^-1`` in the tangent space [d_w, d_t]
        (sigma^2 from the weighted residuals) or None, valid: bool -- a finite pose with every
        point of positive weight in front of the camera and a well-conditioned system).
    """
    x = np.asarray(x, np.float64)
    X = np.asarray(X, np.float64)
    R, t = orthonormalize(np.asarray(R0, np.float64)), np.asarray(t0, np.float64).copy()
    n = len(x)
    if n < 3:
        return R, t, None, False
    if prior is not None:
        prior = (orthonormalize(np.asarray(prior[0], np.float64)), np.asarray(prior[1], np.float64),
                 np.asarray(prior[2], np.float64))

    def terms(R, t, with_jac=True):
        RX = X @ R.T
        p = RX + t
        z = p[:, 2]
        zs = np.where(np.abs(z) < 1e-12, 1e-12, z)
        u = fx * p[:, 0] / zs + cx
        v = fy * p[:, 1] / zs + cy
        r = np.stack([u - x[:, 0], v - x[:, 1]], 1)
        s = (r * r).sum(1)
        rho, w, w2 = _rho(s, loss, scale)
        cost = float(rho.sum())
        if prior is not None:
            phi = so3_log(R @ prior[0].T)
            e = np.concatenate([phi, t - prior[1]])
            Le = prior[2] @ e
            cost += float(e @ Le)
        if not with_jac:
            return cost, None, None, None, z, r, w
        # rows d(u, v) / d[d_w, d_t] with p = R X + t, a = R X (left perturbation: dp = -[a]x dw + dt)
        iz = 1.0 / zs
        xz, yz = p[:, 0] * iz, p[:, 1] * iz
        a1, a2, a3 = RX[:, 0], RX[:, 1], RX[:, 2]
        J = np.empty((n, 2, 6))
        J[:, 0, 0] = -fx * xz * a2 * iz
        J[:, 0, 1] = fx * (a3 + xz * a1) * iz
        J[:, 0, 2] = -fx * a2 * iz
        J[:, 0, 3] = fx * iz
        J[:, 0, 4] = 0.0
        J[:, 0, 5] = -fx * xz * iz
        J[:, 1, 0] = -fy * (a3 + yz * a2) * iz
        J[:, 1, 1] = fy * yz * a1 * iz
        J[:, 1, 2] = fy * a1 * iz
        J[:, 1, 3] = 0.0
        J[:, 1, 4] = fy * iz
        J[:, 1, 5] = -fy * yz * iz
        Jf = J.reshape(2 * n, 6)
        wf = np.repeat(w, 2)
        Jw = Jf * wf[:, None]
        A = Jw.T @ Jf
        b = Jw.T @ r.reshape(-1)
        # robust Gauss-Newton matrix (Triggs et al.; as lm.py): quadratic convergence where PD
        g = np.einsum("nki,nk->ni", J, r)
        H = A + 2.0 * (g * w2[:, None]).T @ g
        if prior is not None:
            Je = np.eye(6)
            Je[:3, :3] = _left_jacobian_inv(phi)
            Ap = Je.T @ prior[2] @ Je
            A, H = A + Ap, H + Ap
            b = b + Je.T @ Le
        return cost, A, b, H, z, r, w

    cost, A, b, H, z, r, w = terms(R, t)
    mu = 1e-4
    for _ in range(int(max_iters)):
        if not np.isfinite(cost):
            return R, t, None, False
        D = np.diag(np.maximum(np.diag(A), 1e-12))
        try:
            try:  # the robust Gauss-Newton matrix where the damped system is positive definite
                L = np.linalg.cholesky(H + mu * D)
                d = -np.linalg.solve(L.T, np.linalg.solve(L, b))
            except np.linalg.LinAlgError:
                d = -np.linalg.solve(A + mu * D, b)
        except np.linalg.LinAlgError:
            return R, t, None, False
        if float(np.abs(d).max()) < step_tol:  # converged (a smaller step only meets rounding)
            break
        R1, t1 = so3_exp(d[:3]) @ R, t + d[3:]
        c1 = terms(R1, t1, with_jac=False)[0]
        if np.isfinite(c1) and c1 <= cost:
            done = (cost - c1) <= tol * max(cost, 1e-12) or float(np.abs(d).max()) < step_tol
            R, t = R1, t1
            cost, A, b, H, z, r, w = terms(R, t)
            mu = max(mu / 10, 1e-9)
            if done:
                break
        else:
            mu *= 10
            if mu > 1e8:
                break
    R = orthonormalize(R)
    valid = bool(np.all(np.isfinite(R)) and np.all(np.isfinite(t)) and np.all(z[w > 1e-12] > 0))
    cov = None
    if valid:
        ev = np.linalg.eigvalsh(A)
        if ev[0] <= 1e-12 * ev[-1]:
            return R, t, None, False
        dof = max(2 * n - 6, 1)
        sigma2 = float((w * (r * r).sum(1)).sum() / dof)
        cov = sigma2 * np.linalg.inv(A)
    return R, t, cov, valid
