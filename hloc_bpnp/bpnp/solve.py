"""Public entry points: ``bpnp`` (the layer contract) and ``solve_pnp`` (the rich solve).

Pipeline per call (batched, no Python loop over B): validate -> float64 -> initial pose
(``pose_init`` or ``init.initial_pose`` on normalized rays: DLT, homography, or a multi-start
for N <= 7 non-planar points) -> LM/IRLS
(``lm.py``) -> per-item checks -> ``ImplicitPnP`` (IFT backward) -> cast back to the dtype of
``points2d``.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import List, Optional, Union

import torch

from ..geometry.camera import Camera
from ..geometry.pose import Pose, so3_exp, so3_log
from .covariance import pose_covariance
from .implicit import ImplicitPnP, make_projector
from .init import initial_pose
from .lm import levenberg_marquardt
from .losses import check_loss
from .residuals import WhitenedProjector

logger = logging.getLogger(__name__)


@dataclass
class PnPResult:
    """Output of ``solve_pnp`` (leading B dropped for an unbatched problem).

    Attributes:
        pose: (B, 6) [axis-angle, t] cam_from_world, differentiable (implicit backward).
        cost: (B,) final objective sum_i w_i rho(s_i) (detached).
        residuals: (B, N, 2) reprojection residuals at ``pose`` (pixels, differentiable).
        converged: (B,) bool, a stationary point of the robust cost: tangent gradient norm <=
            1e-9 sqrt(cost trace(A)) with the final IRLS weights (see ``lm.levenberg_marquardt``).
        iterations: (B,) accepted LM iterations.
        valid: (B,) bool, finite pose, at least 4 points of positive weight (3 with
            ``pose_init``: fewer admit several exact poses), every weighted (inlier) point in
            front of the camera and a well-conditioned Hessian. ``failure`` gives the reason
            where False.
        failure: per item '' or a reason ('only k points of positive weight', 'non-finite',
            'points behind the camera', 'ill-conditioned', 'not converged'; joined with '; ').
            'not converged' alone does not make an item invalid.
        covariance: (B, 6, 6) sigma^2 (J^T W J)^-1 in the tangent space [d_w, d_t]
            (see ``covariance.py``).
        sigma2: (B,) estimated pixel noise variance used in ``covariance``.
        grad_norm: (B,) final tangent gradient norm.
    """

    pose: torch.Tensor
    cost: torch.Tensor
    residuals: torch.Tensor
    converged: torch.Tensor
    iterations: torch.Tensor
    valid: torch.Tensor
    failure: Union[List[str], str]
    covariance: torch.Tensor
    sigma2: torch.Tensor
    grad_norm: torch.Tensor
    batched: bool = field(default=True, repr=False)

    def as_pose(self) -> Pose:
        """The result as a :class:`hloc_bpnp.geometry.Pose` (differentiable)."""
        return Pose.from_aa(self.pose)


def _is_float(x: torch.Tensor) -> bool:
    return x.dtype in (torch.float32, torch.float64)


def _check_tensor(name: str, x, ref: torch.Tensor, shapes: str, dims) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor {shapes}, got {type(x).__name__}")
    if x.dim() not in dims:
        raise ValueError(f"{name} must have shape {shapes}, got {tuple(x.shape)}")
    if x.device != ref.device:
        raise ValueError(f"{name} is on {x.device} but points2d is on {ref.device}")
    if x.dtype != ref.dtype:
        raise ValueError(
            f"{name} has dtype {x.dtype} but points2d has {ref.dtype}; cast with .to({ref.dtype})"
        )
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"{name} {tuple(x.shape)} contains NaN or inf")
    return x


def _validate(points2d, points3d, camera, weights, pose_init):
    """Check shapes/dtypes/devices/values; returns batched views and the problem kind."""
    if not isinstance(points2d, torch.Tensor):
        raise ValueError(f"points2d must be a torch.Tensor (B, N, 2), got {type(points2d).__name__}")
    if not _is_float(points2d):
        raise ValueError(f"points2d must be float32 or float64, got {points2d.dtype}")
    if points2d.dim() != 3 or points2d.shape[-1] != 2:
        raise ValueError(f"points2d must have shape (B, N, 2), got {tuple(points2d.shape)}")
    B, N = points2d.shape[:2]
    if B == 0:
        raise ValueError(f"points2d has an empty batch: shape {tuple(points2d.shape)}")
    _check_tensor("points2d", points2d, points2d, "(B, N, 2)", (3,))
    _check_tensor("points3d", points3d, points2d, "(B, N, 3) or (N, 3)", (2, 3))
    if points3d.shape[-2:] != (N, 3) or (points3d.dim() == 3 and points3d.shape[0] != B):
        raise ValueError(
            f"points3d must have shape ({B}, {N}, 3) or ({N}, 3) to match points2d "
            f"{tuple(points2d.shape)}, got {tuple(points3d.shape)}"
        )
    if isinstance(camera, Camera):
        kind, model, cam = "camera", camera.model, camera.params
        _check_tensor("camera.params", cam, points2d, "(P,) or (B, P)", (1, 2))
        if cam.dim() == 2 and cam.shape[0] != B:
            raise ValueError(f"camera.params must be (P,) or ({B}, P), got {tuple(cam.shape)}")
    else:
        kind, model, cam = "K", None, camera
        _check_tensor("K", cam, points2d, "(B, 3, 3) or (3, 3)", (2, 3))
        if cam.shape[-2:] != (3, 3) or (cam.dim() == 3 and cam.shape[0] != B):
            raise ValueError(f"K must have shape ({B}, 3, 3) or (3, 3), got {tuple(cam.shape)}")
        if bool((torch.linalg.det(cam.detach().double()).abs() < 1e-300).any()):
            raise ValueError("K is singular")
    if weights is not None:
        _check_tensor("weights", weights, points2d, "(B, N)", (2,))
        if tuple(weights.shape) != (B, N):
            raise ValueError(f"weights must have shape ({B}, {N}), got {tuple(weights.shape)}")
        if bool((weights < 0).any()):
            raise ValueError("weights must be non-negative")
    if pose_init is not None:
        _check_tensor("pose_init", pose_init, points2d, "(B, 6)", (2,))
        if tuple(pose_init.shape) != (B, 6):
            raise ValueError(f"pose_init must have shape ({B}, 6), got {tuple(pose_init.shape)}")
    n_min = 3 if pose_init is not None else 4
    if N < n_min:
        raise ValueError(
            f"PnP needs at least {n_min} points ({'with' if pose_init is not None else 'without'} "
            f"pose_init), got points2d of shape {tuple(points2d.shape)}"
        )
    return kind, model, cam


def solve_pnp(
    points2d: torch.Tensor,
    points3d: torch.Tensor,
    camera_or_K: Union[Camera, torch.Tensor],
    weights: Optional[torch.Tensor] = None,
    pose_init: Optional[torch.Tensor] = None,
    loss: str = "l2",
    loss_scale: float = 1.0,
    exact: bool = True,
    max_iters: int = 100,
    polish_steps: int = 6,
    sigma2: Optional[float] = None,
    pose_prior=None,
    sqrt_info: Optional[torch.Tensor] = None,
) -> PnPResult:
    """Differentiable PnP: minimise sum_i w_i rho(||proj(R(aa) X_i + t) - x_i||^2).

    Args:
        points2d: (B, N, 2) pixels (COLMAP convention) or (N, 2) for one problem.
        points3d: (B, N, 3), or (N, 3) shared by the batch (for an unbatched problem: (N, 3)).
        camera_or_K: (B, 3, 3) / (3, 3) matrices K, or a :class:`Camera` with params (B, P)
            / (P,) (SIMPLE_PINHOLE, PINHOLE, SIMPLE_RADIAL, RADIAL, OPENCV).
        weights: (B, N) (or (N,) unbatched) non-negative, or None (all ones).
        pose_init: (B, 6) (or (6,)) [axis-angle, t] start; None: ``init.initial_pose`` (DLT,
            homography for planar points, multi-start for N <= 7 non-planar points).
            Never differentiated.
        loss: 'l2', 'huber' or 'cauchy' (IRLS), with ``loss_scale`` in pixels.
        exact: full Hessian in the backward (True) or Gauss-Newton (False, slightly faster,
            approximate). Analytic for K / SIMPLE_PINHOLE / PINHOLE, autograd otherwise.
        max_iters, polish_steps: LM iterations and final undamped Gauss-Newton steps.
        sigma2: pixel noise variance for ``covariance``; None estimates it from residuals.
        pose_prior: optional ``(y_prior (B, 6) [axis-angle, t], info (B, 6, 6))`` (or unbatched
            (6,), (6, 6)): adds the Gaussian prior ``e^T info e`` of :class:`lm.PosePrior` to
            the cost (the sequence tracker's motion prior). Forward only: the implicit backward
            does not include it, so inputs requiring grad are refused. ``cost`` includes it;
            ``covariance`` is that of the reprojection term alone.
        sqrt_info: optional (B, N, 2, 2) (or (N, 2, 2)) matrices ``L_i``: anisotropic pixel
            noise, the residuals ``L_i r_i`` (cost ``sum_i w_i rho(r_i^T L_i^T L_i r_i)``,
            covariance of keypoint i ``(L_i^T L_i)^-1`` up to scale; the robust loss scale is
            then in those whitened units). Forward only, like ``pose_prior``. ``cost`` and
            ``covariance`` are those of the whitened problem; ``residuals`` stay in pixels.
    Returns:
        PnPResult; ``pose`` is differentiable w.r.t. points2d, points3d, K / camera.params and
        weights, in the dtype of points2d.

    Raises ValueError on wrong shapes/dtypes/devices, NaN/inf, negative weights, N < 4
    (N < 3 with pose_init). Per-item failures are flagged in ``valid`` / ``failure``.

    A localizer calls it unbatched on RANSAC inliers::

        res = solve_pnp(p2d[inl], p3d[inl], query_camera, pose_init=Pose.from_pycolmap(rig).aa_t(),
                        loss="cauchy", loss_scale=2.0)
    """
    check_loss(loss, loss_scale)
    batched = isinstance(points2d, torch.Tensor) and points2d.dim() == 3
    if isinstance(points2d, torch.Tensor) and points2d.dim() == 2:
        points2d = points2d.unsqueeze(0)
        if isinstance(weights, torch.Tensor):
            weights = weights.unsqueeze(0)
        if isinstance(pose_init, torch.Tensor):
            pose_init = pose_init.unsqueeze(0)
        if isinstance(sqrt_info, torch.Tensor):
            sqrt_info = sqrt_info.unsqueeze(0)
    kind, model, cam = _validate(points2d, points3d, camera_or_K, weights, pose_init)
    B, N = points2d.shape[:2]
    if sqrt_info is not None:
        _check_tensor("sqrt_info", sqrt_info, points2d, "(B, N, 2, 2)", (4,))
        if tuple(sqrt_info.shape) != (B, N, 2, 2):
            raise ValueError(f"sqrt_info must have shape ({B}, {N}, 2, 2), got {tuple(sqrt_info.shape)}")
    prior = None
    if pose_prior is not None:
        prior = _prior_from(pose_prior, B, points2d)
    for opt, given in (("pose_prior", pose_prior), ("sqrt_info", sqrt_info)):
        if given is not None and torch.is_grad_enabled() and any(
                isinstance(v, torch.Tensor) and v.requires_grad for v in (points2d, points3d, cam, weights, sqrt_info)):
            raise ValueError(f"solve_pnp: {opt} is forward-only (the implicit backward ignores it); "
                             "call it under torch.no_grad() or with inputs that do not require grad")
    dtype, f64 = points2d.dtype, torch.float64

    with torch.no_grad():
        x = points2d.detach().to(f64)
        X = points3d.detach().to(f64).expand(B, N, 3)
        c = cam.detach().to(f64)
        c = c.expand(B, *c.shape) if c.dim() == (2 if kind == "K" else 1) else c
        w = torch.ones(B, N, dtype=f64, device=x.device) if weights is None else weights.detach().to(f64)
        proj = make_projector(kind, model, c)
        if pose_init is None:
            rays = proj.normalized_rays(x)
            # pixels beyond the distortion's invertible range have no ray (NaN): not in the start
            ray_ok = torch.isfinite(rays).all(-1)
            R0, t0 = initial_pose(torch.where(ray_ok[..., None], rays, torch.zeros_like(rays)), X,
                                  torch.where(ray_ok, w, torch.zeros_like(w)))
        else:
            p0 = pose_init.detach().to(f64)
            R0, t0 = so3_exp(p0[:, :3]), p0[:, 3:]
        if sqrt_info is not None:
            # whitened problem: every stage below (LM, covariance, checks) sees L_i r_i
            proj = WhitenedProjector(proj, sqrt_info.detach().to(f64))
            x = proj.whiten(x)
        st = levenberg_marquardt(R0, t0, X, x, proj, w, loss, loss_scale, max_iters, polish_steps,
                                 prior=prior)
        aa = so3_log(st.R)
        y = torch.cat([aa, st.t], -1)
        cov, s2, ill = pose_covariance(st.R, st.t, X, x, proj, w, loss, loss_scale, sigma2)
        # per-item checks
        r, _, depth = _residual_depth(st.R, st.t, X, x, proj)
        counted = w > 0
        if loss != "l2":
            counted = counted & ((r * r).sum(-1) <= (3 * loss_scale) ** 2)
        finite = torch.isfinite(y).all(-1) & torch.isfinite(st.cost)
        behind = (counted & ~(depth > 0)).any(-1)
        # P3P has up to 4 exact solutions: without a start, < 4 weighted points fix no pose
        n_min = 3 if pose_init is not None else 4
        n_pos = (w > 0).sum(-1)
        few = n_pos < n_min
        valid = finite & ~behind & ~ill & ~few
    failure = []
    for b in range(B):
        reasons = []
        if few[b]:
            reasons.append(f"only {int(n_pos[b])} points of positive weight (needs {n_min}"
                           f"{' with' if pose_init is not None else ' without'} pose_init)")
        if not finite[b]:
            reasons.append("non-finite")
        if behind[b]:
            reasons.append("points behind the camera")
        if ill[b]:
            reasons.append("ill-conditioned")
        if not st.converged[b]:
            reasons.append("not converged")
        failure.append("; ".join(reasons))
    if not bool(valid.all()):
        logger.info("solve_pnp: %d/%d items invalid: %s", int((~valid).sum()), B,
                    sorted({f for f, v in zip(failure, valid.tolist()) if not v}))

    spec = dict(R=st.R, t=st.t, aa=aa, kind=kind, model=model, loss=loss,
                loss_scale=float(loss_scale), exact=bool(exact))
    y_safe = torch.where(finite[:, None], y, torch.zeros_like(y)).to(dtype)
    pose = ImplicitPnP.apply(y_safe, spec, points2d, points3d, cam, weights)
    # differentiable residuals at the returned pose
    X_in = points3d.expand(B, N, 3)
    c_in = cam.expand(B, *cam.shape) if cam.dim() == (2 if kind == "K" else 1) else cam
    res_r, _, _ = _residual_depth(so3_exp(pose[:, :3]), pose[:, 3:], X_in, points2d,
                                  make_projector(kind, model, c_in))
    out = PnPResult(pose, st.cost.to(dtype), res_r, st.converged, st.iterations, valid, failure,
                    cov.to(dtype), s2.to(dtype), st.grad_norm.to(dtype), batched)
    if not batched:
        out = PnPResult(pose[0], out.cost[0], res_r[0], st.converged[0], st.iterations[0], valid[0],
                        failure[0], out.covariance[0], out.sigma2[0], out.grad_norm[0], False)
    return out


def _prior_from(pose_prior, B: int, ref: torch.Tensor):
    """(y (B|, 6), info (B|, 6, 6)) -> lm.PosePrior in float64, with shape checks."""
    from .lm import PosePrior

    try:
        y, info = pose_prior
    except (TypeError, ValueError):
        raise ValueError("pose_prior must be a pair (y_prior (B, 6), info (B, 6, 6))") from None
    y = torch.as_tensor(y, dtype=torch.float64, device=ref.device).reshape(-1, 6)
    info = torch.as_tensor(info, dtype=torch.float64, device=ref.device).reshape(-1, 6, 6)
    if y.shape[0] == 1 and B > 1:
        y = y.expand(B, 6)
    if info.shape[0] == 1 and B > 1:
        info = info.expand(B, 6, 6)
    if y.shape[0] != B or info.shape[0] != B:
        raise ValueError(f"pose_prior batch {y.shape[0]}/{info.shape[0]} does not match the {B} problems")
    if not (torch.isfinite(y).all() and torch.isfinite(info).all()):
        raise ValueError("pose_prior has NaN/inf")
    info = 0.5 * (info + info.transpose(-1, -2))
    if bool((torch.linalg.eigvalsh(info)[..., 0] < -1e-9 * info.abs().amax((-1, -2)).clamp_min(1e-300)).any()):
        raise ValueError("pose_prior info matrix must be positive semi-definite")
    return PosePrior(so3_exp(y[:, :3]), y[:, 3:], info)


def _residual_depth(R, t, X, x, proj):
    from .residuals import residuals_and_jacobian

    return residuals_and_jacobian(R, t, X, x, proj, with_jacobian=False)


def bpnp(
    points2d: torch.Tensor,
    points3d: torch.Tensor,
    K: torch.Tensor,
    weights: Optional[torch.Tensor] = None,
    pose_init: Optional[torch.Tensor] = None,
    strict: bool = True,
) -> torch.Tensor:
    """Differentiable PnP layer (the BPnP contract).

    Args:
        points2d: (B, N, 2) pixels; points3d: (B, N, 3) or (N, 3); K: (B, 3, 3) or (3, 3);
        weights: (B, N) non-negative or None; pose_init: (B, 6) or None (not differentiated).
        strict: raise ValueError naming every batch item that ``solve_pnp`` flags invalid
            (fewer than 4 points of positive weight, or 3 with ``pose_init``; non-finite;
            points behind the camera; ill-conditioned) and its reason. With False, invalid
            items are returned as they are (check them with ``solve_pnp``'s ``valid``).
    Returns:
        (B, 6) [axis-angle, t], cam_from_world, ``x ~ K (R(aa) X + t)``, minimising
        sum_i w_i ||x_i - proj(X_i)||^2, in the dtype of points2d, differentiable w.r.t.
        points2d, points3d, K and weights (implicit function theorem, exact Hessian).
    """
    res = solve_pnp(points2d, points3d, K, weights=weights, pose_init=pose_init)
    if strict:
        valid = res.valid.reshape(-1).tolist()
        failure = res.failure if isinstance(res.failure, list) else [res.failure]
        bad = [(b, f) for b, (v, f) in enumerate(zip(valid, failure)) if not v]
        if bad:
            more = f" (and {len(bad) - 20} more)" if len(bad) > 20 else ""
            raise ValueError(
                f"bpnp: no valid pose for batch items {[b for b, _ in bad][:20]}{more} of points2d "
                f"{tuple(points2d.shape)}: "
                + "; ".join(f"item {b}: {f}" for b, f in bad[:20])
                + " (pass strict=False to get the flagged results, or use solve_pnp)"
            )
    return res.pose
