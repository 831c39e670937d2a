#!/usr/bin/env python
"""Sequence (SLAM) mode against independent per-frame localization, on the same map.

Four sources of an ordered sequence:

* ``--scene DIR`` (Strecha layout: images/ + gt_dense_cameras/, metres): the map is
  triangulated from every K-th image (``--map-every``, default 2) with the GT poses; the other
  images, in name order, are the sequence.
* ``--scene DIR`` (7-Scenes layout: TrainSplit.txt, TestSplit.txt, seq-XX/, metres): the map is
  triangulated from every K-th training frame (``--map-step``, default 10) with the KinectFusion
  poses (XFeat at 640x480, ``configs/mapping/sequence_xfeat.yaml``); the test sequences' frames
  in order (the first ``--max-frames``) are tracked with ``configs/sequence/realtime.yaml``;
  every ``--independent-every``-th frame is also localized on its own (``fast_learned``).
* ``--synthetic``: a generated scene whose prebuilt map covers part of the camera ellipse; the
  sequence leaves that coverage for a long stretch, then cuts abruptly to another place (exact
  GT, metres). This is also the embedded demo of the mode.
* ``--frames DIR`` (an image folder, or a TUM RGB-D folder with rgb.txt): no ground truth is
  needed: an SfM of ALL frames (known intrinsics ``--intrinsics fx fy cx cy``) is the
  reference; the map is triangulated from every K-th registered frame with the SfM poses and
  the others are tracked; errors are against the SfM poses (SfM units x 100, not centimetres).

Writes ``DIR/results.json`` = ``{"summary": {"sequence": M, "independent": M, ...}, "frames": [...]}``
with M = {n_frames, n_localized, n_relocalized, ate_cm, median_rot_deg, median_pos_cm,
seconds_per_frame, ...}; ``seconds_per_frame`` is the wall time of the whole run over the
frames (reading, tracking, relocalization and map growth included: the mapping thread is
drained before the clock stops) / n_frames. ``summary`` also holds
``sequence_on_independent_frames`` (M of the sequence on the frames localized on their own),
``timing`` (mean seconds per frame by stage; first vs last 50 frames) and ``mapping_thread``
(keyframes inserted, seconds). Also written: both trajectories (TUM + hloc formats), the
grown map and ``trajectory.png``.

    python pipelines/sequence.py --scene ../shared/data/strecha_fountain_P11 --output outputs/seq_fountain
    python pipelines/sequence.py --scene ../shared/data/seven_scenes_redkitchen --output outputs/seq_redkitchen
    python pipelines/sequence.py --synthetic --output outputs/seq_synthetic
    python pipelines/sequence.py --frames ../shared/data/tum_fr3_long_office --intrinsics 535.4 539.2 320.1 247.6 \
        --output outputs/seq_tum
"""
from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import torch

from hloc_bpnp.cli import configure_logging
from hloc_bpnp.geometry import Camera
from hloc_bpnp.mapping import build_map_from_poses
from hloc_bpnp.sequence import DEFAULT_PRESET, sequence_config
from hloc_bpnp.sequence.benchmark import format_summary, run_sequence_benchmark

logger = logging.getLogger("pipelines.sequence")


def run_scene(scene_dir: Path, output: Path, map_every: int = 2, mapping="default", loc_conf="default",
              seq_conf=DEFAULT_PRESET, progress=True):
    from hloc_bpnp.io.datasets import read_strecha

    scene = read_strecha(scene_dir)
    names = scene.names
    map_names = names[::map_every]
    seq_names = [n for n in names if n not in set(map_names)]
    logger.info("%s: map from %d images (every %d-th), %d frames in sequence", scene_dir.name, len(map_names),
                map_every, len(seq_names))
    t0 = time.time()
    map_ = build_map_from_poses(scene.subset(map_names), scene.image_dir, mapping, progress=progress)
    map_.save(output / "map")
    frames = [(n, scene.image_dir / n, float(names.index(n))) for n in seq_names]
    cams = {n: scene[n].camera for n in seq_names}
    gt = {n: scene[n].pose for n in seq_names}
    return run_sequence_benchmark(output / "map", frames, cams, gt, output, loc_conf, seq_conf, 100.0,
                                  f"{scene_dir.name}: sequence mode vs per-frame (map every {map_every})",
                                  progress, extra={"mapping_seconds": time.time() - t0,
                                                   "map_images": map_names})


def run_seven_scenes(scene_dir: Path, output: Path, map_step: int = 10, max_frames=None, independent_every: int = 1,
                     mapping="sequence_xfeat", loc_conf="fast_learned", seq_conf="realtime", progress=True):
    """7-Scenes layout: the map is triangulated from every ``map_step``-th frame of the
    ``TrainSplit`` sequences with their KinectFusion poses; the frames are the ``TestSplit``
    sequences in order (the first ``max_frames``); every ``independent_every``-th of them is
    also localized on its own."""
    from hloc_bpnp.io.datasets import read_7scenes

    train = read_7scenes(scene_dir, "train", step=map_step)
    test = read_7scenes(scene_dir, "test")
    names = test.names[:max_frames] if max_frames else test.names
    logger.info("%s: map from %d training frames (every %d-th), %d test frames in sequence", scene_dir.name,
                len(train.names), map_step, len(names))
    t0 = time.time()
    map_ = build_map_from_poses(train, train.image_dir, mapping, progress=progress)
    map_.save(output / "map")
    mapping_seconds = time.time() - t0
    frames = [(n, test.image_dir / n, float(i)) for i, n in enumerate(names)]
    return run_sequence_benchmark(output / "map", frames, {n: test[n].camera for n in names},
                                  {n: test[n].pose for n in names}, output, loc_conf, seq_conf, 100.0,
                                  f"7-Scenes {scene_dir.name}: sequence mode vs per-frame (map every {map_step})",
                                  progress, extra={"mapping_seconds": mapping_seconds, "map_images": train.names},
                                  independent_every=independent_every)


def run_synthetic(output: Path, seed: int = 0, seq_source=None, mapping="default", loc_conf="default",
                  seq_conf=DEFAULT_PRESET, progress=True):
    from hloc_bpnp.sequence.synthetic import generate_sequence

    seq = generate_sequence(seq_source, seed=seed, progress=progress)
    t0 = time.time()
    map_ = build_map_from_poses(seq.scene.map_scene, seq.scene.images, mapping, progress=progress)
    map_.save(output / "map")
    cams = {n: seq.camera for n in seq.names}
    extra = {"mapping_seconds": time.time() - t0, "cut_index": seq.cut_index,
             "outside_coverage": [n for n, o in zip(seq.names, seq.outside) if o],
             "path_deg": seq.path_deg}
    res = run_sequence_benchmark(output / "map", seq.frames(), cams, seq.poses, output, loc_conf, seq_conf, 100.0,
                                 f"synthetic sequence (seed {seed}): sequence mode vs per-frame", progress, extra)
    outside = set(extra["outside_coverage"])
    fr = res["frames"]
    res["summary"]["outside_coverage"] = {
        "n_frames": len(outside),
        "sequence_localized": sum(f["status"] != "lost" for f in fr if f["name"] in outside),
        "independent_localized": sum(f["independent"]["success"] for f in fr if f["name"] in outside),
    }
    cut = fr[seq.cut_index]
    res["summary"]["cut"] = {"frame": cut["name"], "status": cut["status"], "reason": cut["reason"]}
    from hloc_bpnp.io.json_io import write_json

    write_json(output / "results.json", res, indent=1)
    return res


def run_frames(frames_dir: Path, output: Path, intrinsics, map_every: int = 2, mapping="default",
               sfm_mapping="sfm", loc_conf="default", seq_conf=DEFAULT_PRESET, progress=True):
    from hloc_bpnp.io.scene import Scene
    from hloc_bpnp.mapping import build_map_sfm
    from hloc_bpnp.sequence.frames import load_frames

    frames = load_frames(frames_dir, groundtruth=None)
    root = frames_dir if frames_dir.is_dir() else frames_dir.parent
    from hloc_bpnp.io.image import read_image

    h, w = read_image(frames[0].path).shape[:2]
    fx, fy, cx, cy = intrinsics
    cam = Camera("PINHOLE", w, h, torch.tensor([fx, fy, cx, cy], dtype=torch.float64))
    images = {f.name: f.path for f in frames}
    names = [f.name for f in frames]
    t0 = time.time()
    sfm = build_map_sfm(root, sfm_mapping, names=names, cameras=cam, camera_mode="single", progress=progress)
    ref = Scene.from_reconstruction(sfm.reconstruction, root)
    reg = [n for n in names if n in set(ref.names)]
    logger.info("SfM of all frames: %d / %d registered", len(reg), len(names))
    map_names = reg[::map_every]
    seq_names = [n for n in names if n not in set(map_names)]
    ref_map = ref.subset(map_names)
    map_ = build_map_from_poses(ref_map, root, mapping, progress=progress)
    map_.save(output / "map")
    ts = {f.name: f.timestamp for f in frames}
    seq_frames = [(n, images[n], ts[n]) for n in seq_names]
    gt = {n: ref[n].pose for n in seq_names if n in set(reg)}
    return run_sequence_benchmark(output / "map", seq_frames, {n: cam for n in seq_names}, gt, output, loc_conf,
                                  seq_conf, 100.0, f"{frames_dir.name}: sequence vs per-frame against an SfM of "
                                  f"all frames (units: SfM x 100)", progress,
                                  extra={"sfm_registered": len(reg), "mapping_seconds": time.time() - t0,
                                         "map_images": map_names, "units": "SfM units x 100 (not cm)"})


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--scene", type=Path, help="Strecha-layout scene folder, or a 7-Scenes scene folder "
                     "(TrainSplit.txt, TestSplit.txt, seq-XX/)")
    src.add_argument("--synthetic", action="store_true", help="generated sequence with exact GT")
    src.add_argument("--frames", type=Path, help="image folder or TUM folder (rgb.txt); SfM reference")
    p.add_argument("--output", type=Path, required=True)
    p.add_argument("--map-every", type=int, default=2, help="Strecha / --frames: map from every K-th image (default 2)")
    p.add_argument("--map-step", type=int, default=10,
                   help="7-Scenes: map from every K-th training frame (default 10)")
    p.add_argument("--max-frames", type=int, default=None, help="7-Scenes: track only the first N test frames")
    p.add_argument("--independent-every", type=int, default=1,
                   help="7-Scenes: localize every K-th frame on its own for comparison (default 1)")
    p.add_argument("--mapping", default=None, help="mapping preset (configs/mapping; default: 'default', "
                   "'sequence_xfeat' for 7-Scenes)")
    p.add_argument("--config", default=None, help="localization preset (configs/localization; default: "
                   "'default', 'fast_learned' for 7-Scenes)")
    p.add_argument("--sequence-config", default=None, help="sequence-mode preset (configs/sequence; default: "
                   "'default', 'realtime' for 7-Scenes)")
    p.add_argument("--intrinsics", type=float, nargs=4, metavar=("FX", "FY", "CX", "CY"),
                   help="PINHOLE intrinsics of --frames")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--local-ba", action="store_true", help="local bundle adjustment on keyframe insertion")
    p.add_argument("--no-growth", action="store_true", help="do not grow the map")
    p.add_argument("-v", "--verbose", action="store_true")
    args = p.parse_args(argv)
    configure_logging(args.verbose)
    if args.map_every < 2:
        p.error("--map-every must be >= 2 (the other images are the sequence)")
    seven = bool(args.scene) and (args.scene / "TrainSplit.txt").is_file()
    mapping = args.mapping or ("sequence_xfeat" if seven else "default")
    loc_conf = args.config or ("fast_learned" if seven else "default")
    from hloc_bpnp.localization import localization_config
    from hloc_bpnp.mapping.build import mapping_config

    # every preset checked before the map is built: a misplaced or misspelt key (a sequence
    # preset given as --config, ...) is an error naming the file and the key(s), at once
    from hloc_bpnp.config import UnknownConfigKeyError

    try:
        mapping_config(mapping)
        localization_config(loc_conf)
        seq_conf = sequence_config(args.sequence_config or ("realtime" if seven else DEFAULT_PRESET),
                                   {"growth": {"local_ba": bool(args.local_ba), "enabled": not args.no_growth}})
    except (UnknownConfigKeyError, FileNotFoundError, ValueError) as e:
        p.error(str(e))
    args.output.mkdir(parents=True, exist_ok=True)
    if args.synthetic:
        res = run_synthetic(args.output, args.seed, None, mapping, loc_conf, seq_conf)
    elif seven:
        if args.map_step < 1 or args.independent_every < 1:
            p.error("--map-step and --independent-every must be >= 1")
        res = run_seven_scenes(args.scene, args.output, args.map_step, args.max_frames, args.independent_every,
                               mapping, loc_conf, seq_conf)
    elif args.scene:
        res = run_scene(args.scene, args.output, args.map_every, mapping, loc_conf, seq_conf)
    else:
        if not args.intrinsics:
            p.error("--frames needs --intrinsics FX FY CX CY")
        res = run_frames(args.frames, args.output, args.intrinsics, args.map_every, mapping, "sfm",
                         loc_conf, seq_conf)
    print(format_summary(res["summary"]))
    return res


if __name__ == "__main__":
    main()
