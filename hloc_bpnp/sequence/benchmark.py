"""Sequence mode against independent per-frame localization, on the same prebuilt map.

:func:`run_sequence_benchmark` tracks the frames in order with a :class:`SequenceLocalizer`
and localizes each of them from scratch with a :class:`Localizer` (on an unchanged copy of
the map), then writes ``results.json`` = ``{"summary": {"sequence": M, "independent": M},
"frames": [...]}`` (``M`` in :mod:`hloc_bpnp.sequence.report`), both trajectories (TUM and hloc
formats), the grown map and a trajectory plot. For the independent path ``n_relocalized``
counts its localized frames: each one is a global relocalization.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Dict, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
from tqdm import tqdm

from ..geometry import Camera, Pose
from ..localization import Localizer
from ..localization import results as R
from ..localization.results import LocalizationResult
from . import report
from .tracker import RELOCALIZED, SequenceLocalizer, read_frame

logger = logging.getLogger(__name__)

FrameInput = Tuple[str, Union[np.ndarray, Path, str, None], float]


def run_independent(map_, frames: Sequence[FrameInput], cameras: Mapping[str, Camera], loc_conf=None,
                    progress: bool = True) -> Dict[str, LocalizationResult]:
    """Localize every frame from scratch (retrieval, matching, RANSAC, BPnP)."""
    loc = Localizer(map_, loc_conf)
    out = {}
    for name, img, _ in tqdm(frames, desc="independent", disable=not progress):
        t0 = time.perf_counter()
        image, err = read_frame(img)
        if image is None:
            out[name] = LocalizationResult(name=name, timings={"total": 0.0}).fail(R.IMAGE_ERROR, err)
            continue
        out[name] = loc.localize(image, cameras[name], name=name)
        out[name].timings["total"] = time.perf_counter() - t0  # image reading included, as in sequence mode
    return out


def grow_and_localize(map_, frames: Sequence[FrameInput], cameras: Mapping[str, Camera],
                      queries: Sequence[FrameInput], gt: Mapping[str, Pose], loc_conf=None,
                      seq_conf: Optional[Dict] = None, unit_to_cm: float = 100.0,
                      progress: bool = False) -> Dict:
    """Grow ``map_`` (in place) by tracking ``frames`` in order, then localize each of the
    held-out ``queries`` on its own against the grown map: how well a map grown by
    keyframes localizes (e.g. keyframes inserted at the map's resolution or with their
    tracking features, ``growth.reextract``).

    Returns:
        ``{"sequence": M, "queries": M, "query_frames": {name: {success, num_inliers,
        rot_err_deg, pos_err_cm}}, "keyframes": [...], "new_points": int}`` (``M`` in
        :mod:`hloc_bpnp.sequence.report`; ``seconds_per_frame``: the tracking run's wall time).
    """
    n_points = int(len(map_.points3D))
    sl = SequenceLocalizer(Localizer(map_, loc_conf), seq_conf)
    t0 = time.perf_counter()
    try:
        seq_frames = sl.run(frames, cameras, progress)
    finally:
        sl.close()
    wall = time.perf_counter() - t0
    names = [f[0] for f in frames]
    s_seq = report.summarize(names, {f.name: f.pose for f in seq_frames}, {f.name: f.seconds for f in seq_frames},
                             gt, unit_to_cm, n_relocalized=sum(f.status == RELOCALIZED for f in seq_frames))
    s_seq["seconds_per_frame"] = wall / max(len(names), 1)
    res = run_independent(map_, queries, cameras, loc_conf, progress)
    qnames = [q[0] for q in queries]
    s_q = report.summarize(qnames, {n: (r.pose if r.success else None) for n, r in res.items()},
                           {n: float(r.timings.get("total", 0.0)) for n, r in res.items()}, gt, unit_to_cm,
                           n_relocalized=sum(r.success for r in res.values()))
    per_query = {}
    for n in qnames:
        r = res[n]
        rot, pos = report.frame_errors(r.pose if r.success else None, gt.get(n))
        per_query[n] = {"success": bool(r.success), "num_inliers": int(r.num_inliers), "rot_err_deg": rot,
                        "pos_err_cm": None if pos is None else pos * unit_to_cm}
    return {"sequence": s_seq, "queries": s_q, "query_frames": per_query, "keyframes": list(sl.keyframes),
            "new_points": int(len(map_.points3D)) - n_points}


def compare_keyframe_features(map_dir: Union[str, Path], frames: Sequence[FrameInput], cameras: Mapping[str, Camera],
                              queries: Sequence[FrameInput], gt: Mapping[str, Pose], loc_conf=None,
                              seq_conf: Optional[Dict] = None, unit_to_cm: float = 100.0) -> Dict[str, Dict]:
    """:func:`grow_and_localize` twice on fresh copies of the map saved in ``map_dir``:
    keyframes re-extracted at the map's resolution (``"map"``: ``growth.reextract: true``)
    and keyframes joining the map with their tracking features (``"tracking"``: mixed
    resolutions); insertion inline (deterministic), else ``seq_conf``."""
    from ..config import merge
    from ..mapping import Map

    out = {}
    for mode, reextract in (("map", True), ("tracking", False)):
        conf = merge(seq_conf or {}, {"growth": {"reextract": reextract, "threaded": False}})
        out[mode] = grow_and_localize(Map.load(map_dir), frames, cameras, queries, gt, loc_conf, conf, unit_to_cm)
    return out


def run_sequence_benchmark(map_dir: Union[str, Path], frames: Sequence[FrameInput], cameras: Mapping[str, Camera],
                           gt: Mapping[str, Pose], output: Union[str, Path], loc_conf=None,
                           seq_conf: Optional[Dict] = None, unit_to_cm: float = 100.0, title: str = "",
                           progress: bool = True, extra: Optional[Dict] = None,
                           independent_every: int = 1) -> Dict:
    """Run both modes on the map saved in ``map_dir``; write and return the results dict.

    ``independent_every``: localize only every K-th frame on its own (the comparison);
    ``summary["sequence_on_independent_frames"]`` is the sequence's ``M`` on those frames.
    ``seconds_per_frame`` is the wall time of the whole run over the frames (reading,
    tracking, relocalization and the map growth drained at the end included);
    ``summary["timing"]`` breaks a frame's time down by stage (means over the frames) and
    compares the first and last 50 frames; ``summary["mapping_thread"]`` the keyframe work."""
    from ..io.json_io import write_json
    from ..mapping import Map

    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    names = [f[0] for f in frames]
    stamps = [float(f[2]) for f in frames]

    ind_frames = list(frames)[::max(1, int(independent_every))]
    ind_names = [f[0] for f in ind_frames]
    t0 = time.perf_counter()
    indep = run_independent(Map.load(map_dir), ind_frames, cameras, loc_conf, progress)
    wall_ind = time.perf_counter() - t0

    map_ = Map.load(map_dir)
    n_map, n_points = len(map_.image_names), int(len(map_.points3D))
    map_centers = np.stack([map_.pose(n).center.cpu().numpy() for n in map_.image_names])
    sl = SequenceLocalizer(Localizer(map_, loc_conf), seq_conf)  # grows map_ in place
    t0 = time.perf_counter()
    try:
        seq_frames = sl.run(frames, cameras, progress)  # image reading timed, as in run_independent
    finally:
        sl.close()
    wall = time.perf_counter() - t0  # tracking, relocalization and map growth (drained) included
    by_name = {f.name: f for f in seq_frames}

    s_seq = report.summarize(names, {f.name: f.pose for f in seq_frames},
                             {f.name: f.seconds for f in seq_frames}, gt, unit_to_cm,
                             n_relocalized=sum(f.status == RELOCALIZED for f in seq_frames), timestamps=stamps)
    s_seq["seconds_per_frame"] = wall / max(len(names), 1)
    s_seq["frames_per_second"] = len(names) / wall if wall > 0 else None
    ind_stamps = [float(f[2]) for f in ind_frames]
    s_ind = report.summarize(ind_names, {n: (r.pose if r.success else None) for n, r in indep.items()},
                             {n: float(r.timings.get("total", 0.0)) for n, r in indep.items()}, gt, unit_to_cm,
                             n_relocalized=sum(r.success for r in indep.values()), timestamps=ind_stamps)
    s_ind["seconds_per_frame"] = wall_ind / max(len(ind_names), 1)
    s_same = report.summarize(ind_names, {n: by_name[n].pose for n in ind_names},
                              {n: by_name[n].seconds for n in ind_names}, gt, unit_to_cm,
                              n_relocalized=sum(by_name[n].status == RELOCALIZED for n in ind_names),
                              timestamps=ind_stamps)
    s_time = report.timing_breakdown(seq_frames)
    s_map = sl.mapper.stats() if sl.mapper is not None else {}
    rows = []
    for name, ts in zip(names, stamps):
        f = by_name[name]
        rs, ps = report.frame_errors(f.pose, gt.get(name))
        row = {
            "name": name, "timestamp": ts, "status": f.status, "reason": f.reason, "keyframe": f.keyframe,
            "num_inliers": int(f.result.num_inliers), "seconds": f.seconds,
            "timings": {k: float(v) for k, v in f.result.timings.items()},
            "rot_err_deg": rs, "pos_err_cm": None if ps is None else ps * unit_to_cm,
            "ransac": f.info.get("ransac"), "fallback": bool(f.info.get("fallback", False)),
        }
        if name in indep:
            r = indep[name]
            ri, pi = report.frame_errors(r.pose if r.success else None, gt.get(name))
            row["independent"] = {"success": bool(r.success), "reason": r.failure_reason or "",
                                  "num_inliers": int(r.num_inliers), "seconds": float(r.timings.get("total", 0.0)),
                                  "rot_err_deg": ri, "pos_err_cm": None if pi is None else pi * unit_to_cm}
        rows.append(row)
    results = {"summary": {"sequence": s_seq, "independent": s_ind, "sequence_on_independent_frames": s_same,
                           "timing": s_time, "mapping_thread": s_map,
                           "n_keyframes_added": len(sl.keyframes)},
               "frames": rows,
               "map": {"prebuilt_images": n_map, "grown_images": len(sl.map.image_names),
                       "prebuilt_points": n_points,
                       "grown_points": int(len(sl.map.points3D)), "keyframes_added": list(sl.keyframes)},
               "conf": {"sequence": sl.conf, "unit_to_cm": unit_to_cm}}
    if extra:
        results.update(extra)
    report.write_outputs(output, seq_frames, prefix="sequence_")
    from ..localization.results import write_results

    write_results(indep, output / "independent_results.txt", output / "independent_results_log.json")
    if gt:
        from .trajectory import write_tum_trajectory

        gnames = [n for n in names if n in gt]
        write_tum_trajectory(output / "groundtruth.txt", [stamps[names.index(n)] for n in gnames],
                             [gt[n] for n in gnames])
    sl.map.save(output / "grown_map")
    try:
        _plot(output / "trajectory.png", names, seq_frames, indep, gt, map_centers, title)
    except Exception as e:  # a plot must never lose the results
        logger.warning("Trajectory plot failed: %s", e)
    write_json(output / "results.json", results, indent=1)
    logger.info("%s\n%s", title, format_summary(results["summary"]))
    return results


def _plot(path, names, seq_frames, indep, gt, mc, title):
    from .trajectory import plot_trajectory

    def centers(poses):
        return np.stack([p.center.cpu().numpy() if p is not None else np.full(3, np.nan) for p in poses])

    est = centers([f.pose for f in seq_frames])
    g = centers([gt.get(n) for n in names]) if gt else None
    plot_trajectory(path, est, g, [f.status for f in seq_frames], map_centers=mc, title=title)


def format_summary(summary: Mapping[str, Mapping]) -> str:
    """A text table of the ``{"sequence": M, "independent": M}`` summary."""
    keys = ["n_frames", "n_localized", "n_relocalized", "ate_cm", "median_rot_deg", "median_pos_cm",
            "rpe_trans_cm", "seconds_per_frame"]
    lines = ["| mode | " + " | ".join(keys) + " |", "|" + " --- |" * (len(keys) + 1)]
    for mode in ("sequence", "independent"):
        if mode not in summary:
            continue
        m = summary[mode]
        vals = []
        for k in keys:
            v = m.get(k)
            vals.append("-" if v is None else (f"{v:.4g}" if isinstance(v, float) else str(v)))
        lines.append(f"| {mode} | " + " | ".join(vals) + " |")
    return "\n".join(lines)


__all__ = ["run_sequence_benchmark", "run_independent", "grow_and_localize", "compare_keyframe_features",
           "format_summary"]
