"""Trajectories: TUM-format files, ATE / RPE with evo, a top-down plot.

TUM trajectory lines are ``timestamp tx ty tz qx qy qz qw`` with the camera's pose in the
world (world_from_cam, i.e. the inverse of our ``cam_from_world``): ``t`` is the camera centre.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from ..geometry import Pose
from .frames import read_tum_groundtruth

logger = logging.getLogger(__name__)

PathLike = Union[str, Path]


def write_tum_trajectory(path: PathLike, timestamps: Sequence[float], poses: Sequence[Pose]) -> Path:
    """Write cam_from_world ``poses`` as a TUM trajectory (world_from_cam), atomically."""
    path = Path(path)
    if len(timestamps) != len(poses):
        raise ValueError(f"{path}: {len(timestamps)} timestamps but {len(poses)} poses")
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = ["# timestamp tx ty tz qx qy qz qw (world_from_cam; written by hloc_bpnp)"]
    for t, p in zip(timestamps, poses):
        w = p.inv()
        q = w.qvec().double().tolist()  # (w, x, y, z)
        c = w.t.double().tolist()
        lines.append(f"{float(t):.6f} " + " ".join(f"{v:.12g}" for v in c + [q[1], q[2], q[3], q[0]]))
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("\n".join(lines) + "\n")
    os.replace(tmp, path)
    return path


def read_tum_trajectory(path: PathLike) -> Tuple[np.ndarray, List[Pose]]:
    """(timestamps (N,), cam_from_world Poses) of a TUM trajectory file."""
    return read_tum_groundtruth(path)


def _evo_trajectory(poses: Sequence[Pose], timestamps: Sequence[float]):
    from evo.core.trajectory import PoseTrajectory3D

    mats = []
    for p in poses:
        T = np.eye(4)
        w = p.inv()
        T[:3, :3] = w.R.double().numpy()
        T[:3, 3] = w.t.double().numpy()
        mats.append(T)
    return PoseTrajectory3D(poses_se3=mats, timestamps=np.asarray(timestamps, np.float64))


def trajectory_errors(est: Sequence[Pose], gt: Sequence[Pose], timestamps: Sequence[float], align: str = "none",
                      rpe_delta: int = 1) -> Dict[str, Optional[float]]:
    """ATE and RPE of an estimated trajectory against ground truth, with evo.

    Args:
        est, gt: cam_from_world poses, frame by frame (same length >= 1).
        timestamps: (N,) seconds (or indices).
        align: ``none`` (map frame, as localization), ``se3`` or ``sim3`` (Umeyama; e.g. to
            compare with an SfM of arbitrary scale).
        rpe_delta: RPE between frames ``i`` and ``i + rpe_delta``.
    Returns:
        {n, ate_rmse, ate_mean, ate_median, ate_max, rpe_trans_rmse, rpe_rot_deg_rmse, scale}
        in the input units (RPE values None with fewer than ``rpe_delta + 1`` poses).
    """
    import copy

    from evo.core import metrics
    from evo.core.metrics import PoseRelation, Unit

    if len(est) != len(gt) or len(est) != len(timestamps):
        raise ValueError(f"trajectory_errors: {len(est)} estimated, {len(gt)} GT poses and "
                         f"{len(timestamps)} timestamps must be equal in number")
    if len(est) < 1:
        raise ValueError("trajectory_errors: no pose")
    if align not in ("none", "se3", "sim3"):
        raise ValueError(f"align must be none | se3 | sim3, got {align!r}")
    t_est, t_gt = _evo_trajectory(est, timestamps), _evo_trajectory(gt, timestamps)
    scale = 1.0
    if align != "none":
        if len(est) < 3:
            raise ValueError(f"{align} alignment needs at least 3 poses, got {len(est)}")
        t_est = copy.deepcopy(t_est)
        _, _, s = t_est.align(t_gt, correct_scale=(align == "sim3"))
        scale = float(s)
    ape = metrics.APE(PoseRelation.translation_part)
    ape.process_data((t_gt, t_est))
    st = ape.get_all_statistics()
    out = {"n": len(est), "ate_rmse": float(st["rmse"]), "ate_mean": float(st["mean"]),
           "ate_median": float(st["median"]), "ate_max": float(st["max"]),
           "rpe_trans_rmse": None, "rpe_rot_deg_rmse": None, "scale": scale}
    if len(est) > rpe_delta:
        rt = metrics.RPE(PoseRelation.translation_part, delta=rpe_delta, delta_unit=Unit.frames, all_pairs=False)
        rt.process_data((t_gt, t_est))
        rr = metrics.RPE(PoseRelation.rotation_angle_deg, delta=rpe_delta, delta_unit=Unit.frames, all_pairs=False)
        rr.process_data((t_gt, t_est))
        out["rpe_trans_rmse"] = float(rt.get_statistic(metrics.StatisticsType.rmse))
        out["rpe_rot_deg_rmse"] = float(rr.get_statistic(metrics.StatisticsType.rmse))
    return out


STATUS_STYLE = {"tracked": ("tab:blue", "o"), "relocalized": ("tab:orange", "s")}


def plot_trajectory(path: PathLike, est_centers: np.ndarray, gt_centers: Optional[np.ndarray],
                    status: Sequence[str], map_centers: Optional[np.ndarray] = None, title: str = "") -> Path:
    """Top-down plot of a tracked sequence (the two axes of largest spread).

    Args:
        est_centers: (N, 3) estimated camera centres, NaN rows for frames without a pose.
        gt_centers: (N, 3) ground-truth centres or None.
        status: (N,) per frame 'tracked' | 'relocalized' | 'lost'.
        map_centers: (M, 3) keyframe centres of the map, or None.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..evaluation.plot import save_figure

    est = np.asarray(est_centers, np.float64).reshape(-1, 3)
    if len(status) != len(est):
        raise ValueError(f"plot_trajectory: {len(status)} statuses for {len(est)} frames")
    allc = [est]
    if gt_centers is not None:
        allc.append(np.asarray(gt_centers, np.float64).reshape(-1, 3))
    if map_centers is not None:
        allc.append(np.asarray(map_centers, np.float64).reshape(-1, 3))
    stack = np.concatenate(allc)
    stack = stack[np.isfinite(stack).all(1)]
    spread = stack.std(0) if len(stack) else np.ones(3)
    ax_ids = np.sort(np.argsort(-spread)[:2])
    a, b = int(ax_ids[0]), int(ax_ids[1])
    fig, ax = plt.subplots(figsize=(7, 6))
    if map_centers is not None and len(map_centers):
        m = np.asarray(map_centers, np.float64).reshape(-1, 3)
        ax.scatter(m[:, a], m[:, b], marker="^", c="0.6", s=40, label="map keyframes")
    if gt_centers is not None:
        g = np.asarray(gt_centers, np.float64).reshape(-1, 3)
        ax.plot(g[:, a], g[:, b], "-", c="k", lw=1, label="ground truth")
    ok = np.isfinite(est).all(1)
    ax.plot(est[ok, a], est[ok, b], "-", c="tab:blue", lw=0.8, alpha=0.6)
    st = np.asarray(status)
    for s, (col, mk) in STATUS_STYLE.items():
        sel = ok & (st == s)
        if sel.any():
            ax.scatter(est[sel, a], est[sel, b], c=col, marker=mk, s=25, label=f"{s} ({int(sel.sum())})", zorder=3)
    lost = st == "lost"
    if lost.any():
        if gt_centers is not None:
            g = np.asarray(gt_centers, np.float64).reshape(-1, 3)
            gl = lost & np.isfinite(g).all(1)
            if gl.any():
                ax.scatter(g[gl, a], g[gl, b], c="tab:red", marker="x", s=50, label=f"lost ({int(lost.sum())})",
                           zorder=4)
        else:
            ax.plot([], [], "x", c="tab:red", label=f"lost ({int(lost.sum())}, no GT to place them)")
    names = "xyz"
    ax.set_xlabel(names[a])
    ax.set_ylabel(names[b])
    ax.set_aspect("equal", adjustable="datalim")
    ax.legend(loc="best", fontsize=8)
    ax.set_title(title or "trajectory (top-down)")
    ax.grid(alpha=0.3)
    try:
        return save_figure(fig, path)
    finally:
        plt.close(fig)


__all__ = ["write_tum_trajectory", "read_tum_trajectory", "trajectory_errors", "plot_trajectory"]
