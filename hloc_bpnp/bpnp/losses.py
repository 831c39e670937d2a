"""Robust losses on squared residual norms, for IRLS and for the exact objective.

A loss maps the squared reprojection error ``s = ||r||^2`` (pixels^2) of one point to
``rho(s)``; the objective is ``sum_i w_i rho(s_i)``. ``rho'(s)`` is the IRLS weight.
All losses satisfy ``rho(s) ~ s`` for small ``s`` (so ``l2`` is ``rho(s) = s``).

=========  =================================================  ======================
name       rho(s), with c = loss_scale (pixels)               rho'(s)
=========  =================================================  ======================
l2         s                                                  1
huber      s if s <= c^2 else 2 c sqrt(s) - c^2               min(1, c / sqrt(s))
cauchy     c^2 log(1 + s / c^2)                               1 / (1 + s / c^2)
=========  =================================================  ======================

``robust_rho2`` adds ``rho''(s)`` (0 for l2 and the Huber core, ``-c / (2 s^1.5)`` in the
Huber tail, ``-1 / (c^2 (1 + s / c^2)^2)`` for Cauchy) for the analytic Hessian of the
implicit backward.
"""
from __future__ import annotations

from typing import Tuple

import torch

LOSSES = ("l2", "huber", "cauchy")


def check_loss(loss: str, scale: float) -> None:
    if loss not in LOSSES:
        raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")
    if not (float(scale) > 0):
        raise ValueError(f"loss_scale must be > 0, got {scale!r}")


def robust_rho(s: torch.Tensor, loss: str = "l2", scale: float = 1.0) -> Tuple[torch.Tensor, torch.Tensor]:
    """Loss value and first derivative.

    Args:
        s: (...) squared residual norms (>= 0).
        loss: one of ``LOSSES``.
        scale: c, the residual norm (pixels) where the loss leaves the quadratic regime.
    Returns:
        rho (...), rho' (...) (the IRLS weights). Differentiable w.r.t. ``s``.
    """
    check_loss(loss, scale)
    if loss == "l2":
        return s, torch.ones_like(s)
    c2 = float(scale) ** 2
    if loss == "huber":
        inlier = s <= c2
        s_safe = torch.where(inlier, torch.full_like(s, c2), s)  # keeps sqrt' finite on both branches
        root = s_safe.sqrt()
        rho = torch.where(inlier, s, 2 * float(scale) * root - c2)
        rho1 = torch.where(inlier, torch.ones_like(s), float(scale) / root)
        return rho, rho1
    # cauchy
    rho = c2 * torch.log1p(s / c2)
    rho1 = 1.0 / (1.0 + s / c2)
    return rho, rho1


def robust_rho2(s: torch.Tensor, loss: str = "l2", scale: float = 1.0) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Loss value with its first and second derivatives w.r.t. ``s``.

    Args:
        s: (...) squared residual norms (>= 0); loss, scale: as in ``robust_rho``.
    Returns:
        rho (...), rho' (...), rho'' (...). (At the Huber kink ``s = c^2`` the core branch is
        used, as autograd of ``robust_rho`` does.)
    """
    rho, rho1 = robust_rho(s, loss, scale)
    if loss == "l2":
        return rho, rho1, torch.zeros_like(s)
    c2 = float(scale) ** 2
    if loss == "huber":
        inlier = s <= c2
        s_safe = torch.where(inlier, torch.full_like(s, c2), s)
        rho2 = torch.where(inlier, torch.zeros_like(s), -0.5 * float(scale) * s_safe.pow(-1.5))
        return rho, rho1, rho2
    return rho, rho1, -(rho1 * rho1) / c2
