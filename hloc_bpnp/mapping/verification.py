"""Geometric verification of image pairs, producing typed ``pycolmap.TwoViewGeometry``.

Two methods:

- ``"poses"`` (known poses and intrinsics, hloc's triangulation setting): keep the matches
  whose Sampson error w.r.t. the essential matrix of the known relative pose is below
  ``max_error`` pixels; the geometry is typed CALIBRATED. Exact and RANSAC-free.
- ``"ransac"``: pycolmap's two-view estimation (calibrated E when both cameras carry a focal
  prior, else F/H), which sets the configuration type itself.
"""
from __future__ import annotations

import logging
from typing import Dict, Optional

import numpy as np
import torch

from ..geometry import Camera, Pose

logger = logging.getLogger(__name__)

default_conf = {
    "method": "poses",        # poses | ransac
    "max_error": 4.0,         # px: Sampson error (poses) or RANSAC threshold (ransac)
    "min_num_inliers": 15,    # pairs with fewer verified matches are dropped
    "ransac_confidence": 0.999,
    "ransac_max_trials": 10000,
}


def sampson_errors(camera0: Camera, camera1: Camera, pose0: Pose, pose1: Pose,
                   kpts0: torch.Tensor, kpts1: torch.Tensor) -> torch.Tensor:
    """Sampson epipolar error, in pixels, of point correspondences under known poses.

    Keypoints are undistorted by their camera model, the error is computed in normalized
    coordinates and scaled by the geometric mean of the two mean focal lengths.

    Args:
        camera0, camera1: unbatched cameras.
        pose0, pose1: unbatched poses cam_from_world.
        kpts0, kpts1: (M, 2) corresponding pixels (COLMAP convention).
    Returns:
        (M,) errors in pixels; inf for keypoints outside their camera's invertible
        distortion range (no ray, see ``Camera.unproject``).
    """
    if kpts0.shape != kpts1.shape or kpts0.ndim != 2 or kpts0.shape[-1] != 2:
        raise ValueError(f"kpts0/kpts1 must both be (M, 2), got {tuple(kpts0.shape)} and {tuple(kpts1.shape)}")
    dt = torch.float64
    x0 = camera0.to(dt).unproject(kpts0.to(dt))
    x1 = camera1.to(dt).unproject(kpts1.to(dt))
    rel = pose1.to(dt) @ pose0.to(dt).inv()  # cam1_from_cam0
    t = rel.t
    tx = torch.zeros(3, 3, dtype=dt)
    tx[0, 1], tx[0, 2], tx[1, 0], tx[1, 2], tx[2, 0], tx[2, 1] = -t[2], t[1], t[2], -t[0], -t[1], t[0]
    E = tx @ rel.R
    h0 = torch.cat([x0, torch.ones_like(x0[:, :1])], -1)
    h1 = torch.cat([x1, torch.ones_like(x1[:, :1])], -1)
    Ex0 = h0 @ E.T  # (M, 3)
    Etx1 = h1 @ E   # (M, 3)
    num = (h1 * Ex0).sum(-1) ** 2
    den = Ex0[:, 0] ** 2 + Ex0[:, 1] ** 2 + Etx1[:, 0] ** 2 + Etx1[:, 1] ** 2
    err = torch.sqrt(num / den.clamp_min(1e-30))
    f = torch.sqrt(camera0.to(dt).f.mean() * camera1.to(dt).f.mean())
    err = err * f
    return torch.where(torch.isfinite(err), err, torch.full_like(err, float("inf")))


def verify_pair_with_poses(camera0: Camera, camera1: Camera, pose0: Pose, pose1: Pose,
                           kpts0: np.ndarray, kpts1: np.ndarray, matches: np.ndarray,
                           max_error: float = 4.0, min_num_inliers: int = 15):
    """Verify matches against the known relative pose (CALIBRATED geometry).

    Args:
        kpts0: (N0, 2), kpts1: (N1, 2) keypoints; matches: (M, 2) indices into them.
    Returns:
        ``pycolmap.TwoViewGeometry`` typed CALIBRATED with E, cam2_from_cam1 and the inlier
        matches, or None when fewer than ``min_num_inliers`` survive.
    """
    import pycolmap

    matches = np.asarray(matches, dtype=np.int64).reshape(-1, 2)
    if len(matches) < min_num_inliers:
        return None
    k0 = torch.from_numpy(np.asarray(kpts0, dtype=np.float64)[matches[:, 0]])
    k1 = torch.from_numpy(np.asarray(kpts1, dtype=np.float64)[matches[:, 1]])
    err = sampson_errors(camera0, camera1, pose0, pose1, k0, k1).cpu().numpy()
    inl = matches[err <= max_error]
    if len(inl) < min_num_inliers:
        return None
    rel = pose1.to(torch.float64) @ pose0.to(torch.float64).inv()
    tvg = pycolmap.TwoViewGeometry()
    tvg.config = int(pycolmap.TwoViewGeometryConfiguration.CALIBRATED)
    tvg.inlier_matches = np.ascontiguousarray(inl.astype(np.uint32))
    tvg.cam2_from_cam1 = rel.to_pycolmap()
    return tvg


def verify_pair_ransac(camera0, camera1, kpts0: np.ndarray, kpts1: np.ndarray, matches: np.ndarray,
                       conf: Optional[dict] = None):
    """Verify matches with pycolmap's robust two-view estimation.

    Args:
        camera0, camera1: ``pycolmap.Camera`` (E is estimated when both have a focal prior,
            F/H otherwise).
        kpts0: (N0, 2), kpts1: (N1, 2) keypoints; matches: (M, 2) indices into them.
        conf: overrides of :data:`default_conf`.
    Returns:
        typed ``pycolmap.TwoViewGeometry``, or None when degenerate / too few inliers.
    """
    import pycolmap

    conf = {**default_conf, **(conf or {})}
    matches = np.asarray(matches, dtype=np.int64).reshape(-1, 2)
    if len(matches) < conf["min_num_inliers"]:
        return None
    opts = pycolmap.TwoViewGeometryOptions()
    opts.min_num_inliers = int(conf["min_num_inliers"])
    opts.ransac.max_error = float(conf["max_error"])
    opts.ransac.confidence = float(conf["ransac_confidence"])
    opts.ransac.max_num_trials = int(conf["ransac_max_trials"])
    opts.compute_relative_pose = True
    tvg = pycolmap.estimate_two_view_geometry(
        camera0, np.asarray(kpts0, dtype=np.float64), camera1, np.asarray(kpts1, dtype=np.float64),
        np.ascontiguousarray(matches.astype(np.uint32)), opts)
    bad = (int(pycolmap.TwoViewGeometryConfiguration.UNDEFINED),
           int(pycolmap.TwoViewGeometryConfiguration.DEGENERATE))
    if int(tvg.config) in bad or len(tvg.inlier_matches) < conf["min_num_inliers"]:
        return None
    return tvg


def verify_pairs(pairs_matches: Dict, features: Dict[str, dict], cameras: Dict[str, Camera],
                 poses: Optional[Dict[str, Pose]] = None, conf: Optional[dict] = None,
                 progress: bool = True) -> Dict:
    """Verify every matched pair.

    Args:
        pairs_matches: (name0, name1) -> (M, 2) matches.
        features: name -> feature dict with ``keypoints`` (N, 2).
        cameras: name -> unbatched :class:`Camera`.
        poses: name -> :class:`Pose` (required by method "poses").
        conf: overrides of :data:`default_conf`.
    Returns:
        (name0, name1) -> typed ``pycolmap.TwoViewGeometry`` for the pairs that passed.
    """
    from tqdm import tqdm

    conf = {**default_conf, **(conf or {})}
    if conf["method"] not in ("poses", "ransac"):
        raise ValueError(f"Unknown verification method {conf['method']!r}; use 'poses' or 'ransac'")
    if conf["method"] == "poses" and poses is None:
        raise ValueError("Verification method 'poses' needs known poses")
    pc_cams = {}
    out = {}
    for (n0, n1), m in tqdm(pairs_matches.items(), desc="verification", disable=not progress):
        k0, k1 = features[n0]["keypoints"], features[n1]["keypoints"]
        if conf["method"] == "poses":
            tvg = verify_pair_with_poses(cameras[n0], cameras[n1], poses[n0], poses[n1], k0, k1, m,
                                         conf["max_error"], conf["min_num_inliers"])
        else:
            for n in (n0, n1):
                if n not in pc_cams:
                    pc_cams[n] = cameras[n].to_pycolmap() if isinstance(cameras[n], Camera) else cameras[n]
            tvg = verify_pair_ransac(pc_cams[n0], pc_cams[n1], k0, k1, m, conf)
        if tvg is not None:
            out[(n0, n1)] = tvg
    logger.info("Verified %d / %d pairs (method %s)", len(out), len(pairs_matches), conf["method"])
    return out
