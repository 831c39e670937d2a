"""``hloc-bpnp track``: sequence (SLAM) mode on a video's frames against a map.

Frames come from an image folder (name order) or a TUM RGB-D folder / ``rgb.txt`` (with
``groundtruth.txt`` when present). Each frame is tracked from the previous pose (motion prior,
covisible keyframes, guided matching, BPnP), relocalized with the full localizer when tracking
fails, or recorded as lost with its reason; the map grows where the camera goes.

Writes into ``--output``: ``trajectory.txt`` (TUM format), ``results.txt`` (hloc format) and
its ``results_log.json``, ``frames.json`` (status / reason / keyframe / timings per frame),
``summary.json`` (counts, and ATE / RPE with evo when ground truth is known), and with
``--plot`` ``trajectory.png``; with ``--save-map DIR`` the grown map.

    hloc-bpnp track --map outputs/map --frames ../shared/data/tum_fr3_long_office/rgb \
        --intrinsics 535.4 539.2 320.1 247.6 --output outputs/track --plot
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

logger = logging.getLogger(__name__)


def register(sub, help_text):
    p = sub.add_parser("track", help=help_text, description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--map", type=Path, required=True, help="map folder written by `hloc-bpnp map`")
    p.add_argument("--frames", type=Path, required=True,
                   help="image folder (name order), TUM folder with rgb.txt, or an rgb.txt file")
    cam = p.add_mutually_exclusive_group()
    cam.add_argument("--intrinsics", type=float, nargs=4, metavar=("FX", "FY", "CX", "CY"),
                     help="PINHOLE intrinsics of every frame (image size read from the first frame)")
    cam.add_argument("--camera", nargs="+", metavar="MODEL_W_H_PARAMS",
                     help="COLMAP camera as in hloc query lists: MODEL WIDTH HEIGHT PARAMS...")
    p.add_argument("--groundtruth", default="auto",
                   help="TUM groundtruth.txt ('auto': beside rgb.txt; 'none': ignore)")
    p.add_argument("--config", default="default", help="localization preset or YAML path")
    p.add_argument("--no-growth", action="store_true", help="do not add keyframes to the map")
    p.add_argument("--local-ba", action="store_true", help="local bundle adjustment on keyframe insertion")
    p.add_argument("--save-map", type=Path, default=None, help="write the grown map there")
    p.add_argument("--plot", action="store_true", help="write trajectory.png")
    p.add_argument("--output", type=Path, required=True, help="output folder")
    p.set_defaults(func=run)


def _camera(args, first_frame_path):
    import torch

    from ..geometry import Camera
    from ..io.image import read_image
    from ..localization.camera_prior import guess_camera

    if args.camera:
        model, w, h, *params = args.camera
        try:
            return Camera.from_hloc_line(model, int(w), int(h), [float(x) for x in params])
        except (ValueError, TypeError) as e:
            raise ValueError(f"--camera {' '.join(args.camera)}: {e}") from None
    h, w = read_image(first_frame_path).shape[:2]
    if args.intrinsics:
        return Camera("PINHOLE", w, h, torch.tensor(args.intrinsics, dtype=torch.float64))
    cam, source = guess_camera(w, h, first_frame_path)
    logger.warning("No --intrinsics/--camera: camera guessed from %s (%s); pass the calibration for "
                   "accurate poses", first_frame_path, source)
    return cam


def run(args) -> int:
    from ..io.json_io import write_json
    from ..localization import Localizer
    from ..mapping import Map
    from ..sequence import SequenceLocalizer
    from ..sequence.frames import load_frames
    from ..sequence.report import summarize, write_outputs

    gt_arg = None if str(args.groundtruth).lower() == "none" else args.groundtruth
    frames = load_frames(args.frames, groundtruth=gt_arg)
    if not frames:
        raise ValueError(f"--frames {args.frames}: no frames")
    camera = _camera(args, frames[0].path)
    m = Map.load(args.map)
    conf = {"growth": {"enabled": not args.no_growth, "local_ba": bool(args.local_ba)}}
    sl = SequenceLocalizer(Localizer(m, args.config), conf)
    out = sl.run(frames, camera, progress=True)
    args.output.mkdir(parents=True, exist_ok=True)
    write_outputs(args.output, out)
    gt = {f.name: f.gt_pose for f in frames if f.gt_pose is not None}
    names = [f.name for f in out]
    summary = summarize(names, {f.name: f.pose for f in out}, {f.name: f.seconds for f in out}, gt, 100.0,
                        n_relocalized=sum(f.status == "relocalized" for f in out),
                        timestamps=[f.timestamp for f in frames])
    summary["n_lost"] = sum(f.status == "lost" for f in out)
    summary["n_keyframes_added"] = len(sl.keyframes)
    summary["has_groundtruth"] = bool(gt)
    write_json(args.output / "summary.json", summary, indent=1)
    if args.save_map:
        sl.map.save(args.save_map)
    if args.plot:
        import numpy as np

        from ..sequence.trajectory import plot_trajectory

        def centers(poses):
            return np.stack([p.center.numpy() if p is not None else np.full(3, np.nan) for p in poses])

        plot_trajectory(args.output / "trajectory.png", centers([f.pose for f in out]),
                        centers([gt.get(n) for n in names]) if gt else None, [f.status for f in out],
                        map_centers=centers([m.pose(n) for n in m.image_names]), title=str(args.frames))
    logger.info("Tracked %d frames: %d localized (%d relocalized), %d lost, %d keyframes added%s; outputs in %s",
                len(out), summary["n_localized"], summary["n_relocalized"], summary["n_lost"],
                len(sl.keyframes), f", ATE {summary['ate_cm']:.2f} cm" if summary["ate_cm"] is not None else "",
                args.output)
    return 0
