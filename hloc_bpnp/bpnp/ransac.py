"""Robust start: pycolmap's LO-RANSAC (non-differentiable), then the differentiable solve.

pycolmap 4.2.1 signature (checked by introspection)::

    pycolmap.estimate_absolute_pose(points2D (m, 2) float64, points3D (m, 3) float64,
        camera: pycolmap.Camera, estimation_options=AbsolutePoseEstimationOptions())
        -> dict(cam_from_world: Rigid3d, num_inliers, inlier_mask) | None

Pixels are COLMAP's convention on both sides, so no conversion is needed.
"""
from __future__ import annotations

import logging
from typing import Optional, Tuple

import numpy as np
import torch

from ..geometry.camera import Camera
from ..geometry.pose import Pose
from .solve import PnPResult, solve_pnp

logger = logging.getLogger(__name__)


def pycolmap_ransac(
    points2d: torch.Tensor,
    points3d: torch.Tensor,
    camera: Camera,
    max_error: float = 12.0,
    confidence: float = 0.99999,
    min_num_trials: int = 100,
    max_num_trials: int = 10000,
    seed: int = 0,
) -> Tuple[Optional[torch.Tensor], torch.Tensor]:
    """LO-RANSAC absolute pose for one problem (no gradient).

    Args:
        points2d: (N, 2) pixels; points3d: (N, 3); camera: unbatched Camera.
        max_error: inlier threshold in pixels.
    Returns:
        pose (6,) [axis-angle, t] in float64 (None if RANSAC failed), inlier mask (N,) bool.
    """
    import pycolmap

    if points2d.dim() != 2 or points2d.shape[-1] != 2:
        raise ValueError(f"points2d must have shape (N, 2), got {tuple(points2d.shape)}")
    if points3d.shape != (points2d.shape[0], 3):
        raise ValueError(f"points3d must have shape ({points2d.shape[0]}, 3), got {tuple(points3d.shape)}")
    if camera.params.dim() != 1:
        raise ValueError(f"camera must be unbatched (params (P,)), got {tuple(camera.params.shape)}")
    n = points2d.shape[0]
    mask = torch.zeros(n, dtype=torch.bool, device=points2d.device)
    if n < 4:
        return None, mask
    opts = pycolmap.AbsolutePoseEstimationOptions()
    opts.ransac.max_error = float(max_error)
    opts.ransac.confidence = float(confidence)
    opts.ransac.min_num_trials = int(min_num_trials)
    opts.ransac.max_num_trials = int(max_num_trials)
    opts.ransac.random_seed = int(seed)
    out = pycolmap.estimate_absolute_pose(
        points2d.detach().cpu().double().numpy(),
        points3d.detach().cpu().double().numpy(),
        camera.to_pycolmap(),
        opts,
    )
    if out is None:
        return None, mask
    pose = Pose.from_pycolmap(out["cam_from_world"]).aa_t().to(points2d.device)
    mask = torch.from_numpy(np.asarray(out["inlier_mask"], dtype=bool).reshape(-1)).to(points2d.device)
    return pose, mask


def ransac_then_bpnp(
    points2d: torch.Tensor,
    points3d: torch.Tensor,
    camera: Camera,
    max_error: float = 12.0,
    min_inliers: int = 6,
    loss: str = "cauchy",
    loss_scale: float = 2.0,
    seed: int = 0,
    **solve_kwargs,
) -> Tuple[Optional[PnPResult], torch.Tensor]:
    """RANSAC for the inliers and a start, then ``solve_pnp`` on the inliers (differentiable
    w.r.t. the inlier points, the camera and ``solve_kwargs['weights']`` if given as (N,)).

    Returns:
        (unbatched PnPResult or None if RANSAC failed / fewer than ``min_inliers``,
         inlier mask (N,)).
    """
    pose0, mask = pycolmap_ransac(points2d, points3d, camera, max_error=max_error, seed=seed)
    if pose0 is None or int(mask.sum()) < max(min_inliers, 4):
        logger.info("ransac_then_bpnp: %d inliers of %d, no pose", int(mask.sum()), points2d.shape[0])
        return None, mask
    w = solve_kwargs.pop("weights", None)
    if w is not None:
        w = w[mask]
    cam = camera.to(points2d.dtype)
    res = solve_pnp(points2d[mask], points3d[mask], cam, weights=w, pose_init=pose0.to(points2d.dtype),
                    loss=loss, loss_scale=loss_scale, **solve_kwargs)
    return res, mask
