"""Summaries and output files of a tracked sequence.

Summary ``M`` (the pipeline contract of ``pipelines/sequence.py``)::

    {n_frames, n_localized, n_relocalized, ate_cm, median_rot_deg, median_pos_cm,
     seconds_per_frame, rpe_trans_cm, rpe_rot_deg}

``ate_cm``: RMSE of the camera centres of the localized frames against ground truth, in the
map frame, without alignment (computed with evo), times ``unit_to_cm`` (100 for metric
scenes). ``seconds_per_frame``: mean wall time per frame, feature extraction included.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence

import numpy as np

from ..geometry import Pose
from ..geometry.metrics import pose_error

logger = logging.getLogger(__name__)


def frame_errors(pose: Optional[Pose], gt: Optional[Pose]):
    """(rotation error deg, centre distance in scene units) or (None, None)."""
    if pose is None or gt is None:
        return None, None
    r, c = pose_error(pose, gt)
    return float(r), float(c)


def summarize(names: Sequence[str], poses: Mapping[str, Optional[Pose]], seconds: Mapping[str, float],
              gt: Mapping[str, Pose], unit_to_cm: float = 100.0, n_relocalized: int = 0,
              timestamps: Optional[Sequence[float]] = None) -> Dict:
    """Summary ``M`` over ``names`` (in sequence order); frames without a pose count as not
    localized; frames without GT are left out of the error statistics."""
    from .trajectory import trajectory_errors

    loc = [n for n in names if poses.get(n) is not None]
    ev = [n for n in loc if n in gt]
    rot, pos = [], []
    for n in ev:
        r, c = frame_errors(poses[n], gt[n])
        rot.append(r)
        pos.append(c)
    out = {
        "n_frames": len(names),
        "n_localized": len(loc),
        "n_relocalized": int(n_relocalized),
        "ate_cm": None,
        "median_rot_deg": float(np.median(rot)) if rot else None,
        "median_pos_cm": float(np.median(pos)) * unit_to_cm if pos else None,
        "seconds_per_frame": float(np.mean([seconds[n] for n in names])) if names else None,
        "rpe_trans_cm": None,
        "rpe_rot_deg": None,
    }
    if ev:
        ts = list(range(len(ev))) if timestamps is None else [timestamps[list(names).index(n)] for n in ev]
        err = trajectory_errors([poses[n] for n in ev], [gt[n] for n in ev], ts, align="none")
        out["ate_cm"] = float(err["ate_rmse"]) * unit_to_cm
        if err.get("rpe_trans_rmse") is not None:
            out["rpe_trans_cm"] = float(err["rpe_trans_rmse"]) * unit_to_cm
            out["rpe_rot_deg"] = float(err["rpe_rot_deg_rmse"])
    return out


#: stages of a frame's time (``FrameResult.result.timings`` keys), in pipeline order
TIMING_STAGES = ("read", "prefetch_wait", "features", "projection", "track_pose", "mapping_wait",
                 "tracking_fallback", "relocalization", "features_full")
#: stages run on the prefetch thread, overlapping the previous frame's tracking (not part of
#: a frame's ``total`` on the tracking thread)
OVERLAPPED_STAGES = ("prefetch_read", "prefetch_features")


def timing_breakdown(frames: Sequence, window: int = 50) -> Dict:
    """Mean seconds per frame of each stage over all frames (a stage a frame skipped counts
    0), the rest (``other``: bookkeeping, keyframe hand-off), the prefetch thread's stages
    (``OVERLAPPED_STAGES``, outside the totals), and the mean total of the first
    and last ``window`` frames with their ratio (``last_over_first``)."""
    if not frames:
        return {}
    totals = np.array([float(f.result.timings.get("total", 0.0)) for f in frames])
    out = {k: float(np.mean([float(f.result.timings.get(k, 0.0)) for f in frames])) for k in TIMING_STAGES}
    out["other"] = float(totals.mean() - sum(out.values()))
    for k in OVERLAPPED_STAGES:
        out[k] = float(np.mean([float(f.result.timings.get(k, 0.0)) for f in frames]))
    out["total"] = float(totals.mean())
    w = min(window, len(frames))
    out["first_window_s"] = float(totals[:w].mean())
    out["last_window_s"] = float(totals[-w:].mean())
    out["last_over_first"] = out["last_window_s"] / out["first_window_s"] if out["first_window_s"] > 0 else None
    out["window"] = w
    return out


def write_outputs(output, frames: List, prefix: str = "") -> Dict[str, Path]:
    """Write a tracked sequence: ``{prefix}trajectory.txt`` (TUM format, localized frames),
    ``{prefix}results.txt`` (hloc results format) and ``{prefix}frames.json`` (every frame:
    status, reason, keyframe, timings, pose). Each file is written atomically."""
    from ..io.json_io import write_json
    from ..localization.results import write_results
    from .trajectory import write_tum_trajectory

    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    loc = [f for f in frames if f.pose is not None]
    paths = {
        "trajectory": write_tum_trajectory(output / f"{prefix}trajectory.txt", [f.timestamp for f in loc],
                                           [f.pose for f in loc]),
        "results": output / f"{prefix}results.txt",
        "frames": output / f"{prefix}frames.json",
    }
    write_results({f.name: f.result for f in frames}, paths["results"],
                  output / f"{prefix}results_log.json")
    write_json(paths["frames"], {"frames": [f.to_dict() for f in frames]}, indent=1)
    return paths
