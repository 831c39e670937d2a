"""The ``limited`` protocol: poses refined from a fixed small number of a query's inliers.

With hundreds of inliers a pose averages keypoint noise away, so a more precise detector
barely changes it (../shared/PITFALLS.md, "A metric that cannot move"). Here each localized
query's pose is re-solved by BPnP (Cauchy loss, 2 px, as the localizer's refinement) from
``n`` of its RANSAC inliers drawn at random (``draws`` seeded draws, 200 by default), started at the
localizer's pose, and compared with the ground truth: keypoint precision, not the count of
matches, limits these poses.

The draws are paired across variants: each draw gives every query keypoint a seeded random
priority and takes the ``n`` inliers whose keypoints come first
(:func:`paired_draws`). Two variants of one query (e.g. with and without a refiner, which
moves keypoints but keeps them the same detections) whose inliers share keypoints then draw
the same correspondences, so the comparison does not change wholesale when one inlier more or
less re-indexes the pool. Measured on the Middlebury temple and the Strecha scenes (README,
"Previous round: `limited` measured with paired draws, and the map's points weighted by the
refiner's uncertainties"): with 20 unpaired draws a variant's median moved by 2-10% with the
draws' seed alone, as much as the gains it is meant to show; 200 paired draws are the default.
Use it as a ``fold_hook`` of
:func:`hloc_bpnp.protocols.leave_one_out.leave_one_out` (the 3D points come from the fold's map).
"""
from __future__ import annotations

import math
from typing import Dict, List, Optional

import numpy as np
import torch


def paired_draws(keypoint_ids: np.ndarray, n: int, draws: int, seed: int = 0) -> np.ndarray:
    """(draws, n) positions into ``keypoint_ids`` (the (M,) query keypoint index of each of M >= n
    candidate correspondences): draw d takes the ``n`` candidates whose keypoints have the
    smallest priorities ``u_d[k]`` (uniform, seeded by ``seed`` and ``d`` only, over keypoint
    indices). A keypoint with several candidates keeps its priority for each of them (ties in
    the candidates' order). The same keypoints in another candidate list give the same draws.
    """
    kid = np.asarray(keypoint_ids, np.int64).reshape(-1)
    if kid.size < n:
        raise ValueError(f"paired_draws: {kid.size} candidates, fewer than n = {n}")
    if kid.size and kid.min() < 0:
        raise ValueError("paired_draws: keypoint ids must be >= 0")
    size = int(kid.max()) + 1 if kid.size else 0
    out = np.empty((draws, n), np.int64)
    for d in range(draws):
        u = np.random.default_rng([seed, d]).random(size)
        out[d] = np.argsort(u[kid], kind="stable")[:n]
    return out


def limited_pose_errors(result, fold_map, gt_pose, n: int = 50, draws: int = 200, seed: int = 0,
                        scale_to_cm: float = 100.0, use_weights: bool = False) -> Optional[Dict[str, np.ndarray]]:
    """Rotation (deg) and position (cm) errors of ``draws`` poses, each from ``n`` inliers.

    Args:
        result: a :class:`~hloc_bpnp.localization.LocalizationResult` (success, pose, camera,
            points2D, point3D_ids, inlier_mask).
        fold_map: the :class:`~hloc_bpnp.mapping.Map` it was localized against.
        gt_pose: the query's cam_from_world :class:`~hloc_bpnp.geometry.pose.Pose`.
        use_weights: weigh the correspondences with ``result.weights`` as the localizer's
            refinement did (``refinement.use_weights``).
        The draws are :func:`paired_draws` over ``result.keypoint_ids`` (a result without them,
        e.g. read from an older log, draws over the inliers' order instead).
    Returns:
        ``{"rot_deg": (draws,), "pos_cm": (draws,)}``, or None when the query was not localized
        or has fewer than ``n`` inliers.
    """
    from ..bpnp import solve_pnp
    from ..geometry.pose import Pose
    from ..io.colmap import rows_of_ids

    if not result.success or result.inlier_mask is None or result.points2D is None:
        return None
    inl = np.flatnonzero(np.asarray(result.inlier_mask))
    if inl.size < n:
        return None
    ids = np.asarray(result.point3D_ids)[inl]
    rows = rows_of_ids(fold_map.point3D_ids, ids)
    if np.any(rows < 0):
        raise ValueError(f"query {result.name!r}: inlier 3D point ids not in the fold map")
    p2 = torch.as_tensor(np.asarray(result.points2D)[inl], dtype=torch.float64)
    X = torch.as_tensor(fold_map.points3D[rows], dtype=torch.float64)
    kid = getattr(result, "keypoint_ids", None)
    if kid is not None:
        sel = torch.as_tensor(paired_draws(np.asarray(kid)[inl], n, draws, seed))
    else:
        rng = np.random.default_rng(seed)
        sel = torch.as_tensor(np.stack([rng.choice(inl.size, n, replace=False) for _ in range(draws)]))
    init = result.pose.to(torch.float64).aa_t().reshape(1, 6).expand(draws, 6).contiguous()
    cam = result.camera if result.camera is not None else None
    if cam is None:
        raise ValueError(f"query {result.name!r}: result has no camera")
    w = None
    if use_weights:
        if result.weights is None:
            raise ValueError(f"query {result.name!r}: use_weights but the result has no correspondence weights")
        w = torch.as_tensor(np.asarray(result.weights)[inl], dtype=torch.float64)[sel]
    res = solve_pnp(p2[sel], X[sel], cam.to(torch.float64), weights=w, pose_init=init, loss="cauchy", loss_scale=2.0)
    est = Pose.from_aa(res.pose.detach().to(torch.float64))
    gt = gt_pose.to(torch.float64)
    dR = est.R @ gt.R.transpose(-1, -2)
    cos = ((dR.diagonal(dim1=-2, dim2=-1).sum(-1) - 1) / 2).clamp(-1, 1)
    rot = torch.rad2deg(torch.arccos(cos))
    pos = (est.center - gt.center).norm(dim=-1) * scale_to_cm
    ok = res.valid
    rot = torch.where(ok, rot, torch.full_like(rot, math.inf))
    pos = torch.where(ok, pos, torch.full_like(pos, math.inf))
    return {"rot_deg": rot.cpu().numpy(), "pos_cm": pos.cpu().numpy()}


class LimitedCollector:
    """``fold_hook`` gathering :func:`limited_pose_errors` of one localization variant."""

    def __init__(self, scene, label: Optional[str] = None, n: int = 50, draws: int = 200, seed: int = 0,
                 scale_to_cm: float = 100.0, use_weights: bool = False) -> None:
        self.scene, self.label, self.n, self.draws, self.seed, self.scale = scene, label, n, draws, seed, scale_to_cm
        self.use_weights = use_weights
        self.per_query: Dict[str, Dict[str, np.ndarray]] = {}
        self.skipped: List[str] = []

    def __call__(self, query, fold_map, results) -> None:
        res = results[self.label] if self.label else next(iter(results.values()))
        e = limited_pose_errors(res, fold_map, self.scene[query].pose, self.n, self.draws, self.seed, self.scale,
                                self.use_weights)
        if e is None:
            self.skipped.append(query)
        else:
            self.per_query[query] = e

    def summary(self) -> Dict[str, object]:
        """Medians over all draws of all evaluated queries (None when none), counts."""
        return summarize_limited([self])


def summarize_limited(collectors) -> Dict[str, object]:
    """:meth:`LimitedCollector.summary` of several collectors together (e.g. one per fold of a
    k-fold protocol): medians over all draws of all their queries, counts."""
    per = {q: e for c in collectors for q, e in c.per_query.items()}
    skipped = sum(len(c.skipped) for c in collectors)
    if not per:
        return {"median_rot_deg": None, "median_pos_cm": None, "n_queries": 0, "n_skipped": skipped}
    rot = np.concatenate([v["rot_deg"] for v in per.values()])
    pos = np.concatenate([v["pos_cm"] for v in per.values()])
    return {"median_rot_deg": float(np.median(rot)), "median_pos_cm": float(np.median(pos)),
            "n_queries": len(per), "n_skipped": skipped}
