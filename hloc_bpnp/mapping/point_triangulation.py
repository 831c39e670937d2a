"""3D points re-triangulated from their observations with the poses fixed, optionally weighted
by the keypoints' uncertainties.

pycolmap triangulates every observation of a track with the same weight. A feature preset with a
keypoint refiner (``xfeat_refined``) gives each keypoint a standard deviation ``sigma`` (pixels,
the refiner's ``sigmas``), and the least-squares point under independent Gaussian keypoint noise
weighs each observation by ``1 / sigma^2`` (Gauss-Markov). The mapping step
``triangulation_weights`` (:func:`weigh_points_if_enabled`) re-solves each point that way after
triangulation, poses and cameras fixed, from pycolmap's point as the start; the same weights
are what BPnP gives the query's correspondences (``refinement.use_weights``). Measured: README,
"Previous round: `limited` measured with paired draws, and the map's points weighted by the
refiner's uncertainties".

:func:`retriangulate` is the batched Gauss-Newton solve shared with keypoint adjustment.

Conventions: poses cam_from_world, COLMAP pixels (top-left pixel centre at (0.5, 0.5)).
"""
from __future__ import annotations

import logging
from typing import Dict, Mapping, Optional, Tuple, Union

import numpy as np
import torch

from ..geometry.camera import Camera
from ..geometry.pose import Pose

logger = logging.getLogger(__name__)

__all__ = ["MODES", "retriangulate", "registered_views", "track_observations", "write_points", "weigh_points",
           "weigh_points_if_enabled", "weights_enabled", "resolve_mode"]

#: values of a mapping config's ``triangulation_weights``
MODES = ("auto", "uncertainty", False)


def retriangulate(xyz: torch.Tensor, obs_row: torch.Tensor, obs_img: np.ndarray, uv: torch.Tensor,
                  cameras: Dict[int, Camera], poses: Dict[int, Pose], iterations: int,
                  weights: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """Gauss-Newton on the (weighted) reprojection error of (P, 3) points ``xyz`` from their
    observations (``obs_row`` (M,) point row, ``obs_img`` (M,) image id, ``uv`` (M, 2) pixels,
    ``weights`` (M,) optional, e.g. ``1 / sigma^2``), poses fixed. A point whose step puts it
    behind one of its cameras or does not lower its cost keeps its position. Returns
    ``(xyz (P, 3), residual norms (M,))``."""
    P = xyz.shape[0]
    w = torch.ones(len(uv), dtype=torch.float64) if weights is None else torch.as_tensor(weights, dtype=torch.float64)
    groups = {int(i): torch.from_numpy(np.flatnonzero(obs_img == i)) for i in np.unique(obs_img)}

    def residuals(X, need_jac):
        r = torch.zeros(len(uv), 2, dtype=torch.float64)
        J = torch.zeros(len(uv), 2, 3, dtype=torch.float64)
        z = torch.zeros(len(uv), dtype=torch.float64)
        for i, s in groups.items():
            Xo = X[obs_row[s]].detach().requires_grad_(need_jac)
            pc = poses[i].transform(Xo)
            proj = cameras[i].project(pc)
            r[s] = (proj - uv[s]).detach()
            z[s] = pc[:, 2].detach()
            if need_jac:
                for c in range(2):
                    (g,) = torch.autograd.grad(proj[:, c].sum(), Xo, retain_graph=c == 0)
                    J[s, c] = g
        return r, J, z

    def per_point(v):
        return torch.zeros(P, dtype=torch.float64).index_add_(0, obs_row, v)

    X = xyz.clone()
    for _ in range(int(iterations)):
        r, J, _ = residuals(X, True)
        Jw = J * w[:, None, None]
        H = torch.zeros(P, 3, 3, dtype=torch.float64).index_add_(0, obs_row, Jw.transpose(1, 2) @ J)
        g = torch.zeros(P, 3, dtype=torch.float64).index_add_(0, obs_row, torch.einsum("mci,mc->mi", Jw, r))
        H = H + 1e-9 * H.diagonal(dim1=-2, dim2=-1).mean(-1).clamp_min(1e-12)[:, None, None] * torch.eye(3, dtype=torch.float64)
        step = torch.linalg.solve(H, g[..., None])[..., 0]
        Xn = X - torch.where(torch.isfinite(step), step, torch.zeros_like(step))
        rn, _, zn = residuals(Xn, False)
        ok = (per_point(w * (rn ** 2).sum(-1)) <= per_point(w * (r ** 2).sum(-1))) & (per_point((zn <= 0).double()) == 0)
        X = torch.where(ok[:, None], Xn, X)
    r, _, _ = residuals(X, False)
    return X, r.norm(dim=-1)


def write_points(rec, pids, X: torch.Tensor, obs_row: torch.Tensor, residuals: torch.Tensor) -> None:
    """Set the positions (P, 3) ``X`` of the points ``pids`` (P,) of ``rec`` and their errors (the
    mean of their observations' (M,) reprojection ``residuals``; ``obs_row`` (M,) point rows)."""
    P = len(pids)
    mean_err = torch.zeros(P, dtype=torch.float64).index_add_(0, obs_row, residuals) / torch.bincount(
        obs_row, minlength=P).clamp_min(1)
    for p, x, e in zip(np.asarray(pids).tolist(), X.cpu().numpy(), mean_err.cpu().numpy()):
        rec.points3D[p].xyz = x
        rec.points3D[p].error = float(e)


def registered_views(rec) -> Tuple[Dict[int, object], Dict[int, Camera], Dict[int, Pose]]:
    """The registered images of a ``pycolmap.Reconstruction`` by image id, with their
    :class:`Camera` and ``cam_from_world`` :class:`Pose`: ``(images, cameras, poses)``."""
    regs = {int(i): im for i, im in rec.images.items() if im.has_pose}
    cameras, poses = {}, {}
    for i, im in regs.items():
        cameras[i] = Camera.from_pycolmap(rec.cameras[im.camera_id])
        cfw = im.cam_from_world() if callable(im.cam_from_world) else im.cam_from_world
        poses[i] = Pose.from_pycolmap(cfw)
    return regs, cameras, poses


def track_observations(rec, regs: Mapping[int, object]):
    """The observations of every 3D point in the registered images ``regs``:
    ``(point ids: a sorted list of P ints, obs_row (M,) row into them, obs_img (M,) image id,
    point2D_idx (M,))``."""
    obs = [(int(pid), int(e.image_id), int(e.point2D_idx))
           for pid, p in rec.points3D.items() for e in p.track.elements if int(e.image_id) in regs]
    pids = sorted({o[0] for o in obs})
    row = {p: j for j, p in enumerate(pids)}
    return (pids, torch.tensor([row[o[0]] for o in obs], dtype=torch.long),
            np.array([o[1] for o in obs], np.int64), np.array([o[2] for o in obs], np.int64))


def resolve_mode(mode: Union[str, bool, None], features: Mapping[str, Mapping], adjusted: bool = False) -> bool:
    """Whether ``triangulation_weights`` = ``mode`` weighs the points of a map with these
    ``features``: ``auto`` when every image's features carry ``sigmas`` and the map's keypoints
    are not adjusted afterwards (``adjusted``: ``keypoint_adjustment.enabled``, which moves the
    observations off the detections the sigmas describe and re-triangulates them; measured: an
    adjusted temple map with weighted points localized 12% worse), ``uncertainty`` always (an
    error naming an image without sigmas), ``false`` / None never."""
    if mode is None or mode is False:
        return False
    if mode not in MODES:
        raise ValueError(f"mapping triangulation_weights must be one of 'auto', 'uncertainty' or false, got {mode!r}")
    missing = [n for n, f in features.items() if "sigmas" not in f]
    if mode == "uncertainty" and missing:
        raise ValueError(f"triangulation_weights: uncertainty needs keypoint 'sigmas' (a feature preset with a "
                         f"refiner, e.g. xfeat_refined), image {missing[0]!r} has none")
    if mode == "auto" and adjusted:
        return False
    return not missing and bool(features)


def weigh_points(rec, features: Mapping[str, Mapping], iterations: int = 5) -> Dict[str, float]:
    """Re-triangulate every 3D point of ``rec`` (in place: positions and mean reprojection
    errors) by Gauss-Newton with weights ``1 / sigma^2`` of its observations' keypoint
    ``sigmas`` (pixels), poses and cameras fixed, from its current position.

    Args:
        rec: ``pycolmap.Reconstruction`` whose registered images' 2D points are the keypoints
            of ``features``.
        features: name -> feature dict with ``keypoints`` (N, 2) and ``sigmas`` (N,).
    Returns:
        ``{"n_points", "median_move", "reprojection_px_before", "reprojection_px_after"}``
        (move in world units; reprojection: median over observations, unweighted).
    Raises:
        KeyError: a registered image without features or sigmas.
        ValueError: a sigma count that is not the image's 2D point count, a sigma that is not
            finite and > 0 (naming the image).
    """
    regs, cameras, poses = registered_views(rec)
    sig = {}
    for i, im in regs.items():
        if im.name not in features or "sigmas" not in features[im.name]:
            raise KeyError(f"triangulation weights: no keypoint sigmas for map image {im.name!r}")
        s = np.asarray(features[im.name]["sigmas"], np.float64).reshape(-1)
        if len(s) != len(im.points2D):
            raise ValueError(f"triangulation weights: image {im.name!r} has {len(s)} sigmas but "
                             f"{len(im.points2D)} 2D points in the model")
        if s.size and (not np.all(np.isfinite(s)) or s.min() <= 0):
            raise ValueError(f"triangulation weights: image {im.name!r} has sigmas that are not finite and > 0 "
                             f"(range [{s.min()}, {s.max()}])")
        sig[i] = s
    pids, obs_row, obs_img, idx = track_observations(rec, regs)
    if not pids:
        return {"n_points": 0, "median_move": 0.0, "reprojection_px_before": 0.0, "reprojection_px_after": 0.0}
    uv = torch.from_numpy(np.stack([np.asarray(regs[i].points2D[k].xy, np.float64) for i, k in zip(obs_img, idx)]))
    w = torch.from_numpy(np.array([1.0 / sig[i][k] ** 2 for i, k in zip(obs_img, idx)]))
    X0 = torch.from_numpy(np.stack([np.asarray(rec.points3D[p].xyz, np.float64) for p in pids]))
    _, r0 = retriangulate(X0, obs_row, obs_img, uv, cameras, poses, 0)
    X, r = retriangulate(X0, obs_row, obs_img, uv, cameras, poses, iterations, weights=w / w.median())
    write_points(rec, pids, X, obs_row, r)
    return {"n_points": len(pids), "median_move": float((X - X0).norm(dim=-1).median()),
            "reprojection_px_before": float(r0.median()), "reprojection_px_after": float(r.median())}


def weights_enabled(conf: Mapping, features: Mapping[str, Mapping]) -> bool:
    """Whether a mapping config ``conf`` (a built map's ``Map.conf`` too) weighs points seen in
    images with these ``features``: its ``triangulation_weights`` (absent: off, as maps built
    before the key) resolved by :func:`resolve_mode` with ``conf["keypoint_adjustment"]["enabled"]``."""
    adjusted = bool((conf.get("keypoint_adjustment") or {}).get("enabled", False))
    return resolve_mode(conf.get("triangulation_weights", False), features, adjusted)


def weigh_points_if_enabled(rec, features: Mapping[str, Mapping], conf: Mapping) -> Optional[Dict[str, float]]:
    """The mapping pipelines' step: :func:`weigh_points` when :func:`weights_enabled` for the
    registered images' features; returns its stats, or None when off."""
    names = {im.name for im in rec.images.values() if im.has_pose}
    if not weights_enabled(conf, {n: f for n, f in features.items() if n in names}):
        return None
    stats = weigh_points(rec, features)
    logger.info("Points re-triangulated with the keypoints' uncertainties: %d points, median move %.3g, "
                "reprojection %.3f -> %.3f px", stats["n_points"], stats["median_move"],
                stats["reprojection_px_before"], stats["reprojection_px_after"])
    return stats
