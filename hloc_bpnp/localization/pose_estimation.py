"""Absolute pose from 2D-3D candidates: pycolmap LO-RANSAC, acceptance test, refinement.

Refinement modes (``conf["refinement"]["method"]``):
  * ``"bpnp"`` (default): our differentiable LM solver (:func:`hloc_bpnp.bpnp.solve_pnp`)
    on the RANSAC inliers, with the query's full camera model (distortion included), a
    loss (Cauchy, 1 px, by IRLS on the RANSAC inliers, chosen by measurement; L2 and Huber
    as options), and optionally the match scores as weights. It also yields the pose covariance.
    The refined pose is kept only if it lowers the robust cost on the inliers, so the
    refinement can never make a converged RANSAC pose worse.
  * ``"pycolmap"``: pycolmap's Ceres refinement (what hloc does), for ablations.
  * ``"none"``: the LO-RANSAC pose as is.

Inlier re-selection (``refinement.reselect_rounds``, BPnP only): RANSAC's inlier set is that of
one minimal-sample model, so correspondences near the threshold fall in or out with the random
seed, and the refined pose inherits that. After the refinement, every correspondence is
classified again at the refined pose (``ransac.max_error_px``) and the pose refined from there on
the new set, until the set stops changing or the rounds run out (:func:`reselect_inliers`).
Measured on the temple's leave-one-out folds over 5 RANSAC seeds
(``benchmarks/bench_ransac_seeds.py``): the per-query log standard deviation over the seeds fell
from 0.27 to 0.017 (XFeat, ``fast_learned`` with patch alignment) and from 0.096 to 0 (SIFT,
``default``), and both medians by 18%.

Acceptance (pycolmap "succeeds" with 3-4 inliers, see PITFALLS): a pose is reported only with
at least ``min_inliers`` inliers, an inlier ratio of at least ``min_inlier_ratio``, and, when
intrinsics are refined, a focal length within ``max_focal_ratio`` of the prior.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Dict, Optional

import numpy as np
import pycolmap
import torch

from ..geometry import Camera, Pose
from . import results as R
from .keypoint_noise import default_conf as keypoint_covariance_conf

logger = logging.getLogger(__name__)

#: the ``refinement.use_weights`` values :func:`estimate_pose` takes: none, match scores, a
#: refiner's keypoint uncertainties, the 3D points' track errors alone (features without sigmas;
#: ``localizer.track_weights``); ``auto`` is resolved per query by ``localizer.weight_mode``
RESOLVED_WEIGHT_MODES = (False, True, "scores", "uncertainty", "track")

default_conf = {
    "ransac": {
        "max_error_px": 4.0,  # measured: benchmarks/sweep_ransac.py (1-12 px within noise on Strecha)
        "min_inlier_ratio": 0.01,
        "confidence": 0.99999,
        "min_num_trials": 100,
        "max_num_trials": 10000,
        "seed": 0,
    },
    "acceptance": {
        "min_inliers": 20,
        "min_inlier_ratio": 0.0,
        "max_focal_ratio": 1.5,
    },
    "refinement": {
        "method": "bpnp",  # bpnp | pycolmap | none
        "loss": "cauchy",  # l2 | huber | cauchy -- measured: see configs/localization/default.yaml
        # the robust loss scale c (pixels), or "adaptive": c = ADAPTIVE_SCALE_K * sigma, sigma the
        # residuals' robust standard deviation at the initial (RANSAC) pose (adaptive_loss_scale)
        "loss_scale_px": 1.0,
        # BPnP correspondence weights: false | true (match scores) | uncertainty (1 / sigma^2 of a
        # refiner's keypoint sigmas, features xfeat_refined) | track (the 3D points' track errors
        # alone, any features; localizer.track_weights) | auto (uncertainty when the query's
        # features carry sigmas, else none; localizer.weight_mode)
        "use_weights": False,
        # with uncertainty weights, each correspondence's variance is sigma_q^2 + point_noise *
        # (its 3D point's mean track reprojection error, in the query's pixels)^2
        # (localizer.uncertainty_weights); 0: the keypoint's sigma alone
        "point_noise": 0.5,
        # rounds of inlier re-selection at the refined pose (0: RANSAC's inliers as they are);
        # each refines again on the correspondences within ransac.max_error_px of it
        "reselect_rounds": 2,
        "refine_intrinsics": False,  # focal (and distortion) via pycolmap before BPnP
        # anisotropic keypoint noise from the query image's structure tensors (keypoint_noise.py)
        "keypoint_covariance": dict(keypoint_covariance_conf),
    },
}


@dataclass
class PoseEstimate:
    success: bool
    failure_reason: Optional[str] = None
    pose: Optional[Pose] = None
    camera: Optional[Camera] = None
    num_inliers: int = 0
    inlier_mask: Optional[np.ndarray] = None
    covariance: Optional[np.ndarray] = None
    info: Dict = field(default_factory=dict)


#: the fewest correspondences a re-selected inlier set may have (else the previous set stays)
MIN_RESELECTED = 6

#: c / sigma of the adaptive loss scale: the Cauchy loss's 95% efficiency constant under Gaussian
#: noise (Huber's is 1.345; it is used for Huber too)
ADAPTIVE_SCALE_K = {"cauchy": 2.385, "huber": 1.345, "l2": 1.0}


def adaptive_loss_scale(x: torch.Tensor, X: torch.Tensor, camera: Camera, y: torch.Tensor, loss: str,
                        sqrt_info: Optional[torch.Tensor] = None, bounds=(0.05, 4.0)) -> float:
    """The ``"adaptive"`` robust loss scale (pixels) of the inliers ``x`` (M, 2) / ``X`` (M, 3)
    at pose ``y`` (6,): ``ADAPTIVE_SCALE_K[loss] * sigma`` with ``sigma = median(|r_i|) / 1.1774``
    (the median norm of a 2D Gaussian residual is 1.1774 sigma), ``r_i`` the reprojection
    residuals (whitened by ``sqrt_info`` (M, 2, 2) when given), clamped to ``bounds``."""
    r = whitened_residuals(x, X, camera, y, sqrt_info)
    if r.shape[0] == 0:
        return float(bounds[1])
    sigma = float(r.norm(dim=-1).median()) / 1.1774
    return float(min(max(ADAPTIVE_SCALE_K[loss] * sigma, bounds[0]), bounds[1]))


def _rigid_to_pose(rigid) -> Pose:
    return Pose.from_pycolmap(rigid)


def ransac_options(conf: Dict) -> pycolmap.AbsolutePoseEstimationOptions:
    opts = pycolmap.AbsolutePoseEstimationOptions()
    rc = conf["ransac"]
    opts.ransac.max_error = float(rc["max_error_px"])
    opts.ransac.min_inlier_ratio = float(rc["min_inlier_ratio"])
    opts.ransac.confidence = float(rc["confidence"])
    opts.ransac.min_num_trials = int(rc["min_num_trials"])
    opts.ransac.max_num_trials = int(rc["max_num_trials"])
    if rc.get("seed") is not None:
        opts.ransac.random_seed = int(rc["seed"])
    opts.estimate_focal_length = False
    return opts


def estimate_pose(
    points2D: np.ndarray,
    points3D: np.ndarray,
    camera: Camera,
    conf: Dict,
    weights: Optional[np.ndarray] = None,
    sqrt_info: Optional[torch.Tensor] = None,
) -> PoseEstimate:
    """LO-RANSAC + acceptance test + refinement for one query.

    Args:
        points2D: (M, 2) query pixels (COLMAP convention).
        points3D: (M, 3) world points.
        camera: the query's Camera (unbatched).
        conf: merged localization conf (see ``default_conf``).
        weights: (M,) optional correspondence weights (match scores).
        sqrt_info: (M, 2, 2) optional anisotropic keypoint noise of the BPnP refinement
            (:mod:`keypoint_noise`; ``solve_pnp``'s ``sqrt_info``).
    """
    acc = conf["acceptance"]
    M = len(points2D)
    if M < max(4, acc["min_inliers"]):
        return PoseEstimate(False, R.TOO_FEW_CORRESPONDENCES, info={"num_correspondences": M})
    p2 = np.ascontiguousarray(points2D, dtype=np.float64)
    p3 = np.ascontiguousarray(points3D, dtype=np.float64)
    pc_cam = camera.to_pycolmap()
    ret = pycolmap.estimate_absolute_pose(p2, p3, pc_cam, ransac_options(conf))
    if ret is None:
        return PoseEstimate(False, R.RANSAC_FAILED, info={"num_correspondences": M})
    inliers = np.asarray(ret["inlier_mask"], dtype=bool)
    n_in = int(inliers.sum())
    info = {"num_correspondences": M, "ransac_inliers": n_in}
    if n_in < acc["min_inliers"]:
        return PoseEstimate(False, R.TOO_FEW_INLIERS, num_inliers=n_in, inlier_mask=inliers, info=info)
    if n_in / M < acc["min_inlier_ratio"]:
        return PoseEstimate(False, R.LOW_INLIER_RATIO, num_inliers=n_in, inlier_mask=inliers, info=info)

    ref = conf["refinement"]
    rigid = ret["cam_from_world"]
    cam_used = camera
    if ref["refine_intrinsics"] or ref["method"] == "pycolmap":
        ropts = pycolmap.AbsolutePoseRefinementOptions()
        ropts.refine_focal_length = bool(ref["refine_intrinsics"])
        ropts.refine_extra_params = bool(ref["refine_intrinsics"]) and camera.has_distortion
        if isinstance(ref["loss_scale_px"], str):
            raise ValueError(f"refinement.loss_scale_px {ref['loss_scale_px']!r}: pycolmap's refinement "
                             f"(refinement.method 'pycolmap' or refine_intrinsics) takes a number of pixels")
        ropts.loss_function_scale = float(ref["loss_scale_px"])
        cam_ref = camera.to_pycolmap()
        out = pycolmap.refine_absolute_pose(rigid, p2, p3, inliers, cam_ref, ropts)
        if out is None:
            return PoseEstimate(False, R.REFINEMENT_FAILED, num_inliers=n_in, inlier_mask=inliers,
                                info={**info, "detail": "pycolmap refine_absolute_pose returned no pose"})
        rigid = out["cam_from_world"]
        if ref["refine_intrinsics"]:
            f0 = float(camera.f.mean())
            cam_used = Camera.from_pycolmap(cam_ref, dtype=camera.dtype)
            f1 = float(cam_used.f.mean())
            ratio = max(f1 / f0, f0 / f1) if f0 > 0 and f1 > 0 else np.inf
            info["focal_prior"], info["focal_refined"] = f0, f1
            if ratio > acc["max_focal_ratio"]:
                return PoseEstimate(False, R.BAD_INTRINSICS, num_inliers=n_in, inlier_mask=inliers, info=info)

    pose = _rigid_to_pose(rigid)
    covariance = None
    if ref["method"] == "bpnp":
        if ref["use_weights"] not in RESOLVED_WEIGHT_MODES:
            raise ValueError(f"refinement.use_weights must be false, true (match scores) or 'uncertainty' "
                             f"('auto' is resolved per query by localizer.weight_mode), got {ref['use_weights']!r}")
        rounds = 0
        while True:
            w = weights[inliers] if (weights is not None and ref["use_weights"]) else None
            L = None if sqrt_info is None else torch.as_tensor(sqrt_info)[torch.from_numpy(inliers)]
            pose, covariance, rinfo = refine_bpnp(p2[inliers], p3[inliers], cam_used, pose, ref, w, L)
            info.pop("refinement_rejected", None)  # the last refinement's outcome
            info.update(rinfo)
            new = next_inliers(p2, p3, cam_used, pose, conf, inliers) if rounds < int(ref["reselect_rounds"]) else None
            if new is None:
                break
            inliers, rounds = new, rounds + 1
        n_in = int(inliers.sum())
        info["reselect_rounds"] = rounds
    elif ref["method"] not in ("pycolmap", "none"):
        raise ValueError(f"Unknown refinement method {ref['method']!r} (bpnp | pycolmap | none)")
    return PoseEstimate(True, None, pose, cam_used, n_in, inliers, covariance, info)


def next_inliers(points2D: np.ndarray, points3D: np.ndarray, camera: Camera, pose: Pose, conf: Dict,
                 current: np.ndarray) -> Optional[np.ndarray]:
    """One re-selection round's (M,) inlier mask at ``pose`` (:func:`reselect_inliers` with
    ``conf["ransac"]["max_error_px"]``), or None where the rounds stop: the set is ``current``
    again, or has fewer than ``max(acceptance.min_inliers, MIN_RESELECTED)`` correspondences."""
    new = reselect_inliers(points2D, points3D, camera, pose, conf["ransac"]["max_error_px"])
    if np.array_equal(new, np.asarray(current, bool)) or new.sum() < max(int(conf["acceptance"]["min_inliers"]),
                                                                         MIN_RESELECTED):
        return None
    return new


def reselect_inliers(points2D: np.ndarray, points3D: np.ndarray, camera: Camera, pose: Pose,
                     max_error_px: float) -> np.ndarray:
    """(M,) bool: the correspondences whose reprojection error at ``pose`` is below
    ``max_error_px`` pixels and whose point lies in front of the camera (RANSAC's inlier test,
    at a given pose).

    Args: points2D (M, 2) COLMAP pixels, points3D (M, 3) world points, the query's Camera, its
    ``cam_from_world`` Pose.
    """
    dt = torch.float64
    pc = pose.to(dt).transform(torch.as_tensor(np.asarray(points3D), dtype=dt))
    r = camera.to(dt).project(pc) - torch.as_tensor(np.asarray(points2D), dtype=dt)
    ok = (pc[:, 2] > 0) & (r.norm(dim=-1) < float(max_error_px))
    return ok.cpu().numpy()


def refine_bpnp(points2D, points3D, camera: Camera, pose_init: Pose, ref_conf: Dict, weights=None, sqrt_info=None):
    """BPnP refinement of an initial pose on inliers; keeps the init if it is not improved.

    Args:
        points2D: (M, 2) inlier pixels; points3D: (M, 3); camera: the query Camera;
        pose_init: the RANSAC pose; ref_conf: ``conf["refinement"]``; weights: (M,) or None;
        sqrt_info: (M, 2, 2) or None, anisotropic keypoint noise (``solve_pnp``'s; the costs
        compared and the covariance are then those of the whitened problem).
    Returns:
        (pose, covariance (6, 6) in the tangent space [d_w (left rotation), d_t] or None,
        info dict with costs/convergence). The covariance is always evaluated at the pose
        returned: at BPnP's solution when it is accepted, at ``pose_init`` (the RANSAC pose)
        when the refinement is rejected (``info["refinement_rejected"]``); None where it is
        not finite (e.g. too few inliers for the noise estimate).
    """
    from ..bpnp import solve_pnp

    dt = torch.float64
    x = torch.as_tensor(points2D, dtype=dt)
    X = torch.as_tensor(points3D, dtype=dt)
    w = None if weights is None else torch.as_tensor(weights, dtype=dt).clamp_min(0)
    L = None if sqrt_info is None else torch.as_tensor(sqrt_info, dtype=dt)
    y0 = pose_init.to(dt).aa_t()
    cam = camera.to(dt)
    loss, scale = ref_conf["loss"], ref_conf["loss_scale_px"]
    with torch.no_grad():
        if scale == "adaptive":
            scale = adaptive_loss_scale(x, X, cam, y0, loss, L)
        elif isinstance(scale, (str, bool)):
            raise ValueError(f"refinement.loss_scale_px must be a number of pixels or 'adaptive', got {scale!r}")
        scale = float(scale)
        res = solve_pnp(x, X, cam, weights=w, pose_init=y0, loss=loss, loss_scale=scale, sqrt_info=L)
        cost_init = robust_cost(x, X, cam, y0, w, loss, scale, L)
        cost_ref = robust_cost(x, X, cam, res.pose, w, loss, scale, L)
    info = {
        "bpnp_converged": bool(res.converged),
        "bpnp_iterations": int(res.iterations),
        "bpnp_failure": res.failure or "",
        "cost_ransac": cost_init,
        "cost_refined": cost_ref,
        "loss_scale_px": scale,
    }
    if not bool(res.valid) or not bool(torch.isfinite(res.pose).all()) or not cost_ref <= cost_init:
        info["refinement_rejected"] = True
        # the covariance of the pose we return, not of the rejected BPnP solution
        return pose_init, _finite_or_none(covariance_at(x, X, cam, y0, w, loss, scale, L)), info
    return Pose.from_aa(res.pose), _finite_or_none(res.covariance), info


def _finite_or_none(cov: torch.Tensor) -> Optional[np.ndarray]:
    cov = cov.detach().cpu().numpy()
    return cov if np.all(np.isfinite(cov)) else None


def covariance_at(x: torch.Tensor, X: torch.Tensor, camera: Camera, y: torch.Tensor, weights, loss: str,
                  scale: float, sqrt_info: Optional[torch.Tensor] = None) -> torch.Tensor:
    """(6, 6) pose covariance (see :func:`hloc_bpnp.bpnp.pose_covariance`) at pose ``y``
    (6,) [axis-angle, t], with the same noise estimate and tangent space as BPnP's.

    Args: x (M, 2), X (M, 3), camera (unbatched), weights (M,) or None, sqrt_info (M, 2, 2) or None.
    """
    from ..bpnp import pose_covariance
    from ..bpnp.implicit import make_projector
    from ..bpnp.residuals import WhitenedProjector
    from ..geometry.pose import so3_exp

    dt = torch.float64
    y = y.to(dt).reshape(1, 6)
    w = torch.ones(1, len(x), dtype=dt) if weights is None else weights.to(dt).reshape(1, -1)
    proj = make_projector("camera", camera.model, camera.params.to(dt).reshape(1, -1))
    x = x.to(dt).unsqueeze(0)
    if sqrt_info is not None:
        proj = WhitenedProjector(proj, sqrt_info.to(dt).unsqueeze(0))
        x = proj.whiten(x)
    with torch.no_grad():
        cov, _, _ = pose_covariance(so3_exp(y[:, :3]), y[:, 3:], X.to(dt).unsqueeze(0), x, proj, w, loss, scale)
    return cov[0]


def whitened_residuals(x: torch.Tensor, X: torch.Tensor, camera: Camera, y: torch.Tensor,
                       sqrt_info: Optional[torch.Tensor] = None) -> torch.Tensor:
    """(M, 2) ``L_i (proj(R(y) X_i + t) - x_i)`` (``L_i`` the identity without ``sqrt_info``).

    Args: x (M, 2), X (M, 3), y (6,) [axis-angle, t], sqrt_info (M, 2, 2) or None.
    """
    r = camera.project(Pose.from_aa(y).transform(X)) - x
    if sqrt_info is not None:
        r = (sqrt_info.to(r.dtype) @ r.unsqueeze(-1)).squeeze(-1)
    return r


def robust_cost(x: torch.Tensor, X: torch.Tensor, camera: Camera, y: torch.Tensor, weights, loss: str,
                scale: float, sqrt_info: Optional[torch.Tensor] = None) -> float:
    """sum_i w_i rho(||L_i (x_i - proj(R(y) X_i + t))||^2): the objective BPnP minimises.

    Args: x (M, 2), X (M, 3), y (6,) [axis-angle, t], weights (M,) or None, sqrt_info (M, 2, 2)
    ``L_i`` or None (identity).
    """
    from ..bpnp import robust_rho

    r = whitened_residuals(x, X, camera, y, sqrt_info)
    rho, _ = robust_rho((r * r).sum(-1), loss, scale)
    if weights is not None:
        rho = rho * weights
    return float(rho.sum())
