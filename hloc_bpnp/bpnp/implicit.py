"""The differentiable layer: the solver's optimum with an implicit-function-theorem backward.

At the optimum ``y*`` the tangent gradient ``g(d, theta) = dF/dd`` vanishes (``d``: the
left perturbation of ``y*``, see ``residuals.py``; ``theta``: points2d, points3d, camera,
weights). The implicit function theorem gives ``dd/dtheta = -H^-1 dg/dtheta`` with the
FULL Hessian ``H = dg/dd`` (Gauss-Newton term plus residual x second-derivative terms and,
for robust losses, the rho'' terms). The backward therefore computes, for an upstream
gradient ``v = dL/dy``:

1. ``u = dy/dd^T v`` with ``dy/dd = blockdiag(J_l^-1(aa*), I)`` (the returned axis-angle is
   ``log(exp(d_w) R*)``),
2. ``lam = H^-1 u`` (batched; singular H handled by ``safe_solve``, flagged, warned),
3. ``dL/dtheta = -d(lam^T g)/dtheta``.

Two implementations of steps 2-3 (same numbers to ~1e-15):

* analytic (``hessian.py``): closed-form H and mixed vector-Jacobian product, vectorised
  over (B, N), for a matrix K and the SIMPLE_PINHOLE / PINHOLE models;
* autograd (the fallback for distortion models): ``g`` from autograd of the exact
  objective with ``create_graph``, H by double backward, and one autograd call on
  ``lam^T g``.

Both differentiate the true objective, not the depth-weighted surrogate that the published
BPnP code differentiates.

``exact=False`` replaces H by the Gauss-Newton ``2 sum_i w_i rho'_i J_i^T J_i`` (faster, only
approximate away from zero residuals).
"""
from __future__ import annotations

import logging
import warnings
from typing import Optional

import torch

from .linalg import safe_solve, so3_left_jacobian_inv
from .losses import robust_rho
from .hessian import camera_matrix, params_grad_from_K, pinhole_gradient_hessian, pinhole_mixed_vjp, pinhole_terms, \
    supports_analytic
from .residuals import CameraProjector, KProjector, perturbed_residuals, residuals_and_jacobian

logger = logging.getLogger(__name__)


def make_projector(kind: str, model: Optional[str], cam: torch.Tensor):
    """``KProjector(cam)`` for kind ``"K"`` (cam (B, 3, 3)), else ``CameraProjector(model, cam)``."""
    return KProjector(cam) if kind == "K" else CameraProjector(model, cam)


def objective_gradient_hessian(spec: dict, points2d, points3d, cam, weights, exact: bool = True):
    """Tangent gradient g (B, 6) (with a graph to the problem tensors) and Hessian H (B, 6, 6).

    ``spec`` holds R (B, 3, 3), t (B, 3) of the optimum (float64), kind, model, loss, loss_scale.
    All tensors must already be float64 and expanded to the batch.
    """
    R, t = spec["R"], spec["t"]
    B = R.shape[0]
    proj = make_projector(spec["kind"], spec["model"], cam)
    delta = torch.zeros(B, 6, dtype=R.dtype, device=R.device, requires_grad=True)
    r = perturbed_residuals(delta, R, t, points3d, points2d, proj)
    rho, _ = robust_rho((r * r).sum(-1), spec["loss"], spec["loss_scale"])
    F = (weights * rho).sum()
    (g,) = torch.autograd.grad(F, delta, create_graph=True)
    if exact:
        rows = [torch.autograd.grad(g[:, k].sum(), delta, retain_graph=True)[0] for k in range(6)]
        H = torch.stack(rows, 1)
    else:
        with torch.no_grad():
            r0, J, _ = residuals_and_jacobian(R, t, points3d.detach(), points2d.detach(), make_projector(
                spec["kind"], spec["model"], cam.detach()))
            _, rho1 = robust_rho((r0 * r0).sum(-1), spec["loss"], spec["loss_scale"])
            wj = (weights.detach() * rho1)[..., None, None] * J
            H = 2 * torch.einsum("bnki,bnkj->bij", wj, J)
    return g, H.detach()


class ImplicitPnP(torch.autograd.Function):
    """``y = ImplicitPnP.apply(y_star, spec, points2d, points3d, cam, weights)``.

    Forward returns ``y_star`` (B, 6) (computed beforehand by the solver, not differentiated);
    backward implements the IFT above. ``points3d`` may be (N, 3) and ``cam`` unbatched
    (shared by the batch); ``weights`` may be None.
    """

    @staticmethod
    def forward(ctx, y_star, spec, points2d, points3d, cam, weights):
        ctx.spec = spec
        ctx.save_for_backward(points2d, points3d, cam, weights)
        return y_star.clone()

    @staticmethod
    def backward(ctx, grad_y):
        points2d, points3d, cam, weights = ctx.saved_tensors
        spec = ctx.spec
        need = ctx.needs_input_grad[2:6]
        if not any(need):
            return (None,) * 6
        if supports_analytic(spec["kind"], spec["model"]):
            grads = _analytic_backward(spec, grad_y, points2d, points3d, cam, weights, need)
        else:
            grads = _autograd_backward(spec, grad_y, points2d, points3d, cam, weights, need)
        out = [None if gr is None else gr.to(src.dtype)
               for gr, src in zip(grads, (points2d, points3d, cam, weights))]
        return (None, None, *out)


def _lagrange(spec: dict, H: torch.Tensor, grad_y: torch.Tensor) -> torch.Tensor:
    """``lam = H^-1 (dy/dd)^T grad_y`` (B, 6); warns about singular items."""
    gy = grad_y.double()
    Jinv = so3_left_jacobian_inv(spec["aa"])
    u = torch.cat([(Jinv.transpose(-1, -2) @ gy[:, :3].unsqueeze(-1)).squeeze(-1), gy[:, 3:]], -1)
    lam, ill = safe_solve(H, u)
    if bool(ill.any()):
        idx = torch.nonzero(ill).flatten().tolist()
        msg = f"BPnP backward: singular or ill-conditioned Hessian for batch items {idx[:20]}; " \
              "their gradient is restricted to the observable directions"
        warnings.warn(msg, RuntimeWarning, stacklevel=3)
        logger.warning(msg)
    return lam


def _finite(x: torch.Tensor) -> torch.Tensor:
    return torch.nan_to_num(x, nan=0.0, posinf=0.0, neginf=0.0)


def _analytic_backward(spec, grad_y, points2d, points3d, cam, weights, need):
    """Closed-form IFT backward for K / SIMPLE_PINHOLE / PINHOLE (see ``hessian.py``)."""
    f64 = torch.float64
    B, N = points2d.shape[:2]
    x2 = points2d.detach().to(f64)
    X3 = points3d.detach().to(f64).expand(B, N, 3)
    c = cam.detach().to(f64)
    unbatched_cam = c.dim() == (2 if spec["kind"] == "K" else 1)
    c = c.expand(B, *c.shape) if unbatched_cam else c
    K = camera_matrix(spec["kind"], spec["model"], c)
    w = torch.ones(B, N, dtype=f64, device=x2.device) if weights is None else weights.detach().to(f64)
    T = pinhole_terms(spec["R"], spec["t"], X3, x2, K, w, spec["loss"], spec["loss_scale"])
    _, H = pinhole_gradient_hessian(T, exact=spec["exact"])
    lam = _lagrange(spec, H, grad_y)
    gx, gX, gK, gw = (_finite(a) for a in pinhole_mixed_vjp(T, lam))
    out = [gx if need[0] else None, None, None, gw if (need[3] and weights is not None) else None]
    if need[1]:
        out[1] = gX.sum(0) if points3d.dim() == 2 else gX
    if need[2]:
        gc = params_grad_from_K(spec["kind"], spec["model"], gK)
        out[2] = gc.sum(0) if unbatched_cam else gc
    return out


def _autograd_backward(spec, grad_y, points2d, points3d, cam, weights, need):
    """IFT backward through autograd (any camera model, e.g. with distortion)."""
    B, N = points2d.shape[:2]
    with torch.enable_grad():
        leaves = []
        for x, n in zip((points2d, points3d, cam, weights), need):
            leaves.append(None if x is None else x.detach().double().requires_grad_(bool(n)))
        x2, X3, c, w = leaves
        X3e = X3.expand(B, N, 3) if X3.dim() == 2 else X3
        unbatched_cam = c.dim() == (2 if spec["kind"] == "K" else 1)
        ce = c.expand(B, *c.shape) if unbatched_cam else c
        we = torch.ones(B, N, dtype=torch.float64, device=x2.device) if w is None else w
        g, H = objective_gradient_hessian(spec, x2, X3e, ce, we, exact=spec["exact"])
        lam = _lagrange(spec, H, grad_y)
        targets = [(i, leaf) for i, leaf in enumerate(leaves) if leaf is not None and leaf.requires_grad]
        grads = torch.autograd.grad(-(g * lam.detach()).sum(), [leaf for _, leaf in targets], allow_unused=True)
    out = [None] * 4
    for (i, leaf), gr in zip(targets, grads):
        out[i] = torch.zeros_like(leaf) if gr is None else _finite(gr)
    return out
