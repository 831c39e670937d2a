"""Trajectories: TUM-format files, ATE / RPE with evo, a top-down plot.

TUM trajectory lines are ``timestamp tx ty tz qx qy qz qw`` with the camera's pose in the
world (world_from_cam, the inverse of our ``cam_from_world``): ``t`` is the camera centre,
the quaternion is Hamilton, scalar last. evo (https://github.com/MichaelGrupp/evo) reads and
compares these files (``evo_ape tum gt.txt est.txt``) as this module does.
"""
from __future__ import annotations

import copy
import logging
import math
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from ..geometry import Pose
from ..io.atomic import atomic_write_text
from .frames import read_tum_groundtruth

logger = logging.getLogger(__name__)

PathLike = Union[str, Path]

ALIGNMENTS = ("none", "se3", "sim3")


def _check_single(p: Pose, i: int, what: str) -> None:
    if not isinstance(p, Pose) or tuple(p.R.shape) != (3, 3):
        raise ValueError(f"{what} #{i}: expected an unbatched Pose, got {p!r}")
    if not (bool(p.R.isfinite().all()) and bool(p.t.isfinite().all())):
        raise ValueError(f"{what} #{i}: pose is not finite")


def write_tum_trajectory(path: PathLike, timestamps: Sequence[float], poses: Sequence[Pose]) -> Path:
    """Write ``cam_from_world`` poses as a TUM trajectory, atomically.

    Args:
        path: output file (parent folders are created); written to ``<path>.tmp``, then renamed.
        timestamps: (N,) seconds (or frame indices), written with 6 decimals.
        poses: N unbatched ``cam_from_world`` Poses; each line holds the inverse (the camera
            centre and the camera-to-world rotation, quaternion ``qx qy qz qw`` with qw >= 0),
            values with 17 significant digits.
    Returns:
        ``path``.
    """
    path = Path(path)
    if len(timestamps) != len(poses):
        raise ValueError(f"{path}: {len(timestamps)} timestamps but {len(poses)} poses")
    lines = ["# timestamp tx ty tz qx qy qz qw (camera pose in the world: world_from_cam; written by hloc_bpnp)"]
    for i, (t, p) in enumerate(zip(timestamps, poses)):
        _check_single(p, i, f"{path}: pose")
        w = p.inv()
        q = w.qvec().detach().cpu().double().tolist()  # (w, x, y, z), w >= 0
        c = w.t.detach().cpu().double().tolist()
        vals = c + [q[1], q[2], q[3], q[0]]
        lines.append(f"{float(t):.6f} " + " ".join(f"{v:.17g}" for v in vals))
    atomic_write_text(path, "\n".join(lines) + "\n")
    logger.debug("Wrote %d poses to %s", len(poses), path)
    return path


def read_tum_trajectory(path: PathLike) -> Tuple[np.ndarray, List[Pose]]:
    """(timestamps (N,), N unbatched ``cam_from_world`` Poses) of a TUM trajectory file;
    errors as :func:`hloc_bpnp.sequence.frames.read_tum_groundtruth`."""
    return read_tum_groundtruth(path)


def _require_evo() -> None:
    try:
        import evo  # noqa: F401
    except ImportError:
        raise ImportError("ATE / RPE need the evo package: pip install -e '.[sequence]' "
                          "(make setup installs it)") from None


def _evo_trajectory(poses: Sequence[Pose], timestamps: np.ndarray, what: str):
    """evo ``PoseTrajectory3D`` of the world_from_cam matrices of cam_from_world ``poses``."""
    from evo.core.trajectory import PoseTrajectory3D

    mats = []
    for i, p in enumerate(poses):
        _check_single(p, i, what)
        mats.append(p.inv().matrix().detach().cpu().double().numpy())
    return PoseTrajectory3D(poses_se3=mats, timestamps=timestamps)


def _none_if_nan(x) -> Optional[float]:
    x = float(x)
    return None if math.isnan(x) else x


def trajectory_errors(est: Sequence[Pose], gt: Sequence[Pose], timestamps: Sequence[float], align: str = "none",
                      rpe_delta: int = 1) -> Dict[str, Optional[float]]:
    """ATE and RPE of an estimated trajectory against ground truth, computed by evo on the
    camera poses in the world (world_from_cam).

    Args:
        est, gt: N unbatched ``cam_from_world`` poses each, frame by frame (N >= 1).
        timestamps: (N,) seconds or frame indices (only carried along: pairs are by index).
        align: ``"none"`` (errors in the map frame, as for localization), ``"se3"`` (rigid
            Umeyama alignment of est onto gt) or ``"sim3"`` (with scale; e.g. against an SfM
            of arbitrary scale). Alignment needs N >= 3.
        rpe_delta: RPE between frames ``i`` and ``i + rpe_delta`` (in frames, >= 1).
    Returns:
        ``{"n", "ate_rmse", "ate_mean", "ate_median", "ate_max", "rpe_trans_rmse",
        "rpe_rot_deg_rmse", "scale"}``: ATE statistics of the camera-centre distances after
        alignment and RPE RMSEs, in the input units (rotation in degrees); the RPE values are
        None when N <= ``rpe_delta``. ``scale`` is the factor of the similarity applied to the
        estimate (gt ~ scale * R @ est + t, evo's "scale correction"); 1.0 unless ``"sim3"``.
    Raises:
        ValueError: lengths differ, no pose, an unknown ``align``, too few poses to align.
    """
    _require_evo()
    from evo.core import metrics
    from evo.core.metrics import PoseRelation, Unit

    if not (len(est) == len(gt) == len(timestamps)):
        raise ValueError(f"trajectory_errors: {len(est)} estimated poses, {len(gt)} GT poses and "
                         f"{len(timestamps)} timestamps must be equal in number")
    if len(est) < 1:
        raise ValueError("trajectory_errors: no pose")
    if align not in ALIGNMENTS:
        raise ValueError(f"trajectory_errors: align must be one of {ALIGNMENTS}, got {align!r}")
    if int(rpe_delta) < 1:
        raise ValueError(f"trajectory_errors: rpe_delta must be >= 1, got {rpe_delta}")
    stamps = np.asarray(timestamps, np.float64).reshape(-1)
    t_est = _evo_trajectory(est, stamps, "estimated pose")
    t_gt = _evo_trajectory(gt, stamps, "GT pose")
    scale = 1.0
    if align != "none":
        if len(est) < 3:
            raise ValueError(f"trajectory_errors: {align} alignment needs at least 3 poses, got {len(est)}")
        t_est = copy.deepcopy(t_est)
        _, _, s = t_est.align(t_gt, correct_scale=(align == "sim3"))
        scale = float(s)
    ape = metrics.APE(PoseRelation.translation_part)
    ape.process_data((t_gt, t_est))
    st = ape.get_all_statistics()
    out: Dict[str, Optional[float]] = {
        "n": len(est), "ate_rmse": float(st["rmse"]), "ate_mean": float(st["mean"]),
        "ate_median": float(st["median"]), "ate_max": float(st["max"]),
        "rpe_trans_rmse": None, "rpe_rot_deg_rmse": None, "scale": scale,
    }
    if len(est) > rpe_delta:
        for key, rel in (("rpe_trans_rmse", PoseRelation.translation_part),
                         ("rpe_rot_deg_rmse", PoseRelation.rotation_angle_deg)):
            rpe = metrics.RPE(rel, delta=int(rpe_delta), delta_unit=Unit.frames, all_pairs=False)
            rpe.process_data((t_gt, t_est))
            out[key] = _none_if_nan(rpe.get_statistic(metrics.StatisticsType.rmse))
    return out


STATUS_STYLE = {"tracked": ("tab:blue", "o"), "relocalized": ("tab:orange", "s")}
"""Marker colour and shape of the estimated centres per frame status (others: grey dots)."""


def _centres(x, name: str, n: Optional[int] = None) -> np.ndarray:
    a = np.asarray(x, np.float64)
    if a.ndim != 2 or a.shape[1] != 3 or (n is not None and a.shape[0] != n):
        want = f"({n}, 3)" if n is not None else "(M, 3)"
        raise ValueError(f"plot_trajectory: {name} must be {want}, got {a.shape}")
    return a


def plot_trajectory(path: PathLike, est_centers: np.ndarray, gt_centers: Optional[np.ndarray],
                    status: Sequence[str], map_centers: Optional[np.ndarray] = None, title: str = "",
                    dpi: float = 120) -> Path:
    """Top-down plot of a tracked sequence, on the two world axes along which all the centres
    spread most.

    Args:
        path: output image (PNG unless another suffix), written by
            :func:`hloc_bpnp.evaluation.plot.save_figure` (atomic, safe after pycolmap).
        est_centers: (N, 3) estimated camera centres, NaN rows for frames without a pose;
            drawn as a line (broken where frames have no pose) with markers per status.
        gt_centers: (N, 3) ground-truth centres (NaN rows where unknown) or None; a black line.
        status: (N,) per frame ``"tracked"`` (blue), ``"relocalized"`` (orange) or ``"lost"``
            (red x at the ground-truth centre when known); other values are grey dots.
        map_centers: (M, 3) keyframe centres of the map (grey triangles), or None.
        title: figure title.
    Returns:
        ``path``.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from ..evaluation.plot import save_figure

    est = _centres(est_centers, "est_centers")
    n = len(est)
    if len(status) != n:
        raise ValueError(f"plot_trajectory: {len(status)} statuses for {n} frames")
    gtc = _centres(gt_centers, "gt_centers", n) if gt_centers is not None else None
    mc = _centres(map_centers, "map_centers") if map_centers is not None else None
    stack = np.concatenate([c for c in (est, gtc, mc) if c is not None])
    stack = stack[np.isfinite(stack).all(1)]
    spread = stack.std(0) if len(stack) > 1 else np.array([2.0, 0.0, 1.0])
    a, b = (int(i) for i in np.sort(np.argsort(-spread, kind="stable")[:2]))

    fig = Figure(figsize=(7, 6))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    if mc is not None and len(mc):
        ax.scatter(mc[:, a], mc[:, b], marker="^", c="0.6", s=40, label=f"map keyframes ({len(mc)})", zorder=1)
    if gtc is not None:
        ax.plot(gtc[:, a], gtc[:, b], "-", c="k", lw=1, label="ground truth", zorder=2)
    ax.plot(est[:, a], est[:, b], "-", c="tab:blue", lw=0.8, alpha=0.6, label="estimate", zorder=2)
    st = np.asarray([str(s) for s in status])
    ok = np.isfinite(est).all(1)
    for s in sorted(set(st[ok]), key=lambda s: (s not in STATUS_STYLE, s)):
        col, mk = STATUS_STYLE.get(s, ("0.4", "."))
        sel = ok & (st == s)
        ax.scatter(est[sel, a], est[sel, b], c=col, marker=mk, s=25, label=f"{s} ({int(sel.sum())})", zorder=3)
    lost = st == "lost"
    if lost.any():
        placed = lost & np.isfinite(gtc).all(1) if gtc is not None else np.zeros(n, bool)
        label = f"lost ({int(lost.sum())}" + (f", {int((lost & ~placed).sum())} without GT)"
                                              if (lost & ~placed).any() else ")")
        if placed.any():
            ax.scatter(gtc[placed, a], gtc[placed, b], c="tab:red", marker="x", s=50, label=label, zorder=4)
        else:
            ax.plot([], [], "x", c="tab:red", label=label)
    ax.set_xlabel("xyz"[a])
    ax.set_ylabel("xyz"[b])
    ax.set_aspect("equal", adjustable="datalim")
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize=8)
    ax.set_title(title or "trajectory (top-down)")
    fig.tight_layout()
    path = save_figure(fig, path, dpi)
    logger.info("Wrote trajectory plot to %s", path)
    return path


__all__ = ["write_tum_trajectory", "read_tum_trajectory", "trajectory_errors", "plot_trajectory"]
