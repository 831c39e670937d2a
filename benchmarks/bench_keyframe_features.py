#!/usr/bin/env python
"""Keyframes at the map's resolution or with their tracking features: which map localizes better?

Sequence mode tracks SIFT maps' frames with lighter features (800 px where the map has 1600 px).
A keyframe either joins the map re-extracted at the map's resolution (``growth.reextract:
true``; kornia SIFT at 1600 px costs 1.3-2.3 s per 3072-px Strecha image) or with the features
it was tracked with (``false``: mixed resolutions in one map). Both are run here on the same
data: a map triangulated from the first images, grown by tracking the next ones in order (every
other one; inline insertion, deterministic), then every held-out image between them localized on
its own (full localizer, full-resolution query features) against the grown map.

    flock /tmp/hloc_cpu.lock env OMP_NUM_THREADS=2 python benchmarks/bench_keyframe_features.py \\
        --scene ../shared/data/strecha_fountain_P11 [--map-images 4]
    ... --synthetic [--tracking-resize-max 320]     # 640x480 frames: track at half resolution

Prints one row per mode: keyframes, new points, the tracked frames' and the held-out queries'
localized / ATE / median errors / mean inliers, and the tracking run's seconds per frame.
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np

from hloc_bpnp.config import merge
from hloc_bpnp.mapping import build_map_from_poses
from hloc_bpnp.sequence import sequence_config
from hloc_bpnp.sequence.benchmark import compare_keyframe_features

LABELS = {"map": "map resolution (reextract)", "tracking": "tracking features (mixed)"}


def strecha_inputs(scene_dir: Path, n_map: int):
    """(map scene, image root, frames, queries, cameras, gt): map from the first ``n_map``
    images, the rest alternately tracked frames and held-out queries."""
    from hloc_bpnp.io.datasets import read_strecha

    scene = read_strecha(scene_dir)
    names = scene.names
    rest = names[n_map:]
    frames = [(n, scene.image_dir / n, float(names.index(n))) for n in rest[::2]]
    queries = [(n, scene.image_dir / n, float(names.index(n))) for n in rest[1::2]]
    return (scene.subset(names[:n_map]), scene.image_dir, frames, queries,
            {n: scene[n].camera for n in rest}, {n: scene[n].pose for n in rest})


def synthetic_inputs(seed: int = 0):
    """The ``--synthetic`` sequence's first stretch (before the cut): even frames tracked,
    odd ones held out."""
    from hloc_bpnp.sequence.synthetic import generate_sequence

    seq = generate_sequence(None, seed=seed)
    fr = seq.frames()[: seq.cut_index]
    return (seq.scene.map_scene, seq.scene.images, fr[::2], fr[1::2], {n: seq.camera for n in seq.names},
            seq.poses)


def format_table(results) -> str:
    def f(v, fmt):
        return "-" if v is None else format(v, fmt)

    lines = ["| keyframes | kf | new points | frames localized | frames ATE | frames median rot / pos | "
             "queries localized | queries median rot / pos | queries mean inliers | s / tracked frame |",
             "|" + " --- |" * 10]
    for mode, r in results.items():
        s, q = r["sequence"], r["queries"]
        inl = [v["num_inliers"] for v in r["query_frames"].values()]
        lines.append(
            f"| {mode} | {len(r['keyframes'])} | {r['new_points']} | {s['n_localized']}/{s['n_frames']} | "
            f"{f(s['ate_cm'], '.3f')} cm | {f(s['median_rot_deg'], '.4f')} deg / {f(s['median_pos_cm'], '.3f')} cm | "
            f"{q['n_localized']}/{q['n_frames']} | {f(q['median_rot_deg'], '.4f')} deg / "
            f"{f(q['median_pos_cm'], '.3f')} cm | {np.mean(inl):.0f} | {s['seconds_per_frame']:.2f} |")
    lines.append("")
    lines.append("| query | " + " | ".join(results) + " |")
    lines.append("|" + " --- |" * (len(results) + 1))
    for n in next(iter(results.values()))["query_frames"]:
        cells = []
        for r in results.values():
            v = r["query_frames"][n]
            cells.append(f"{v['num_inliers']} inl, {f(v['rot_err_deg'], '.4f')} deg / {f(v['pos_err_cm'], '.3f')} cm"
                         if v["success"] else "failed")
        lines.append(f"| {n} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--scene", type=Path, help="Strecha-layout scene folder")
    src.add_argument("--synthetic", action="store_true", help="the --synthetic sequence's first stretch")
    p.add_argument("--map-images", type=int, default=4, help="Strecha: map from the first N images (default 4)")
    p.add_argument("--tracking-resize-max", type=int, default=None,
                   help="tracking extractor's resize_max (default: the preset's; --synthetic: 320)")
    p.add_argument("--output", type=Path, default=Path("outputs/bench_keyframe_features"))
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    if args.synthetic:
        map_scene, root, frames, queries, cams, gt = synthetic_inputs(args.seed)
        resize = args.tracking_resize_max or 320
    else:
        map_scene, root, frames, queries, cams, gt = strecha_inputs(args.scene, args.map_images)
        resize = args.tracking_resize_max
    seq_conf = sequence_config("default")
    if resize:
        seq_conf = merge(seq_conf, {"tracking": {"features": {"resize_max": resize}}})
    map_dir = build_map_from_poses(map_scene, root, "default", progress=False).save(args.output / "map")
    res = compare_keyframe_features(map_dir, frames, cams, queries, gt, "default", seq_conf)
    print(format_table({LABELS[k]: v for k, v in res.items()}))


if __name__ == "__main__":
    main()
