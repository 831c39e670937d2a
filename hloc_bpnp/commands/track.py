"""``hloc-bpnp track``: sequence (SLAM) mode on a video's frames against a map.

Frames come from an image folder (numeric order when the names are numbers, else natural
order), a TUM RGB-D folder / ``rgb.txt`` (with ``groundtruth.txt`` when present), a 7-Scenes
sequence folder or scene (its ``TestSplit.txt`` sequences; ``.pose.txt`` as ground truth; camera
f = 525 unless given) or a video file (decoded with PyAV as it is tracked; timestamps from the
stream; a frame that fails to decode is lost with its reason). Each frame is tracked from the
previous pose (motion prior, covisible keyframes, guided matching, BPnP), relocalized with the
full localizer when tracking fails, or recorded as lost with its reason; the map grows where
the camera goes. The tracker's settings are the sequence preset ``--sequence-config`` (default
``default``, ``configs/sequence/default.yaml``, as ``pipelines/sequence.py``); ``--config`` is the
localization preset used for relocalization.

Writes into ``--output``: ``trajectory.txt`` (TUM format), ``results.txt`` (hloc format) and
its ``results_log.json``, ``frames.json`` (status / reason / keyframe / timings per frame),
``summary.json`` (counts, and ATE / RPE with evo when ground truth is known), and with
``--plot`` ``trajectory.png``; with ``--save-map DIR`` the grown map; with ``--rerun FILE.rrd``
a Rerun recording (map points, keyframes, trajectories, each frame with its inliers; open it
with ``rerun FILE.rrd``; ``--rerun-live`` streams to a live viewer instead or as well).

    hloc-bpnp track --map outputs/map --frames ../shared/data/tum_fr3_long_office/rgb \
        --intrinsics 535.4 539.2 320.1 247.6 --output outputs/track --plot
    hloc-bpnp track --map outputs/map --frames walk.mp4 --intrinsics 1450 1450 960 540 \
        --output outputs/walk --rerun outputs/walk/track.rrd
"""
from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

logger = logging.getLogger(__name__)

VIDEO_CHUNK = 64
"""A video is decoded and tracked this many frames at a time (memory stays bounded)."""


def register(sub, help_text):
    p = sub.add_parser("track", help=help_text, description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--map", type=Path, required=True, help="map folder written by `hloc-bpnp map`")
    p.add_argument("--frames", type=Path, required=True,
                   help="image folder (numeric / natural name order), TUM folder with rgb.txt or an rgb.txt file, "
                        "7-Scenes sequence folder or scene, or a video file (.mp4, .mkv, .avi, ...)")
    cam = p.add_mutually_exclusive_group()
    cam.add_argument("--intrinsics", type=float, nargs=4, metavar=("FX", "FY", "CX", "CY"),
                     help="PINHOLE intrinsics of every frame (image size read from the first frame)")
    cam.add_argument("--camera", nargs="+", metavar="MODEL_W_H_PARAMS",
                     help="COLMAP camera as in hloc query lists: MODEL WIDTH HEIGHT PARAMS...")
    p.add_argument("--groundtruth", default="auto",
                   help="TUM groundtruth.txt ('auto': beside rgb.txt, or the 7-Scenes .pose.txt; 'none': ignore)")
    p.add_argument("--max-frames", type=int, default=None, help="track only the first N frames")
    p.add_argument("--config", default="default",
                   help="localization preset (configs/localization) or YAML path: relocalization")
    p.add_argument("--sequence-config", default=None, metavar="PRESET",
                   help="sequence-mode preset (configs/sequence: 'default', or 'realtime' for XFeat maps "
                        "of VGA video) or YAML path; default: 'default', as pipelines/sequence.py")
    p.add_argument("--no-growth", action="store_true", help="do not add keyframes to the map")
    p.add_argument("--local-ba", action="store_true", help="local bundle adjustment on keyframe insertion")
    p.add_argument("--save-map", type=Path, default=None, help="write the grown map there")
    p.add_argument("--plot", action="store_true", help="write trajectory.png")
    p.add_argument("--rerun", type=Path, default=None, metavar="FILE.rrd",
                   help="write a Rerun recording of the run (needs the 'viewer' extra: rerun-sdk)")
    p.add_argument("--rerun-live", action="store_true", help="stream the run to a live Rerun viewer")
    p.add_argument("--output", type=Path, required=True, help="output folder")
    p.set_defaults(func=run)


def _camera(args, first, seven_scenes: bool = False):
    """The frames' Camera: --camera / --intrinsics, 7-Scenes' default, or a guess from the
    first frame (a :class:`~hloc_bpnp.sequence.frames.Frame`)."""
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
    image = first.image if first.image is not None else read_image(first.path)
    h, w = image.shape[:2]
    if args.intrinsics:
        return Camera("PINHOLE", w, h, torch.tensor(args.intrinsics, dtype=torch.float64))
    if seven_scenes:
        from ..io.datasets.seven_scenes import DEFAULT_CAMERA

        if (w, h) == (int(DEFAULT_CAMERA.width), int(DEFAULT_CAMERA.height)):
            logger.info("7-Scenes frames: camera %s (f = 525, as hloc; pass --intrinsics to change it)",
                        DEFAULT_CAMERA.params.tolist())
            return DEFAULT_CAMERA
    cam, source = guess_camera(w, h, first.path if first.image is None else None)
    logger.warning("No --intrinsics/--camera: camera guessed from %s (%s); pass the calibration for "
                   "accurate poses", first.path if first.image is None else first.name, source)
    return cam


def _track_video(sl, frame_iter, camera, on_frame, total=None):
    """Track a video's frames as they are decoded, :data:`VIDEO_CHUNK` at a time through
    ``sl.run``; a frame that failed to decode is a lost frame with its reason. Decoding time
    is added to each frame's ``timings`` (``read`` and ``total``). Returns (results, frames);
    the frames' images are dropped once tracked."""
    from tqdm import tqdm

    out, frames, buf = [], [], []
    bar = tqdm(total=total, desc="track", unit="frame")

    def flush():
        if buf:
            out.extend(sl.run([(f.name, f.image, f.timestamp) for f in buf], camera, progress=False,
                              on_frame=on_frame))
            for f in buf:
                f.image = None
            bar.update(len(buf))
            bar.set_postfix_str(out[-1].status)
            buf.clear()

    for f in frame_iter:
        frames.append(f)
        if f.error is None:
            buf.append(f)
            if len(buf) >= VIDEO_CHUNK:
                flush()
            continue
        flush()
        t0 = time.perf_counter()
        out.append(sl.track(None, camera, f.name, f.timestamp, image_error=f.error))
        out[-1].result.timings["total"] = time.perf_counter() - t0
        if on_frame is not None:
            on_frame(out[-1])
        bar.update(1)
    flush()
    bar.close()
    return out, frames


def confs(args):
    """(localization conf, sequence conf) of a ``track`` command line, both checked before any
    work: the shipped sequence preset (``--sequence-config``, default ``default``: the one
    ``pipelines/sequence.py`` uses, through the same :func:`~hloc_bpnp.sequence.sequence_config`)
    with ``--no-growth`` / ``--local-ba`` over it. A preset with an unknown key (e.g. a
    localization preset given as the sequence one) is an error naming the file and the key."""
    from ..localization import localization_config
    from ..sequence import DEFAULT_PRESET, sequence_config

    loc = localization_config(args.config)
    seq = sequence_config(args.sequence_config or DEFAULT_PRESET,
                          {"growth": {"enabled": not args.no_growth, "local_ba": bool(args.local_ba)}})
    return loc, seq


def run(args) -> int:
    import itertools

    from ..io.json_io import write_json
    from ..localization import Localizer
    from ..mapping import Map
    from ..sequence import SequenceLocalizer
    from ..sequence.frames import is_seven_scenes, is_video, load_frames
    from ..sequence.report import summarize, write_outputs

    loc_conf, seq_conf = confs(args)
    gt_arg = None if str(args.groundtruth).lower() == "none" else args.groundtruth
    if args.max_frames is not None and args.max_frames < 1:
        raise ValueError(f"--max-frames must be >= 1, got {args.max_frames}")
    video = is_video(args.frames)
    if video:
        from ..sequence.video import iter_video, probe_video

        info = probe_video(args.frames)
        logger.info("Video %s: %dx%d %s, %s frames/s, %s frames", args.frames, info.width, info.height, info.codec,
                    f"{info.fps:.3g}" if info.fps else "?", info.num_frames or "?")
        frame_iter = iter_video(args.frames, max_frames=args.max_frames)
        first = next(frame_iter)
        while first.error is not None:  # the camera needs a decodable frame
            logger.warning("%s", first.error)
            first = next(frame_iter, None)
            if first is None:
                raise ValueError(f"--frames {args.frames}: no frame could be decoded")
        frame_iter = itertools.chain([first], frame_iter)
        total = min(info.num_frames, args.max_frames or info.num_frames) if info.num_frames else args.max_frames
        frames = None
    else:
        frames = load_frames(args.frames, groundtruth=gt_arg)
        if not frames:
            raise ValueError(f"--frames {args.frames}: no frames")
        frames = frames[: args.max_frames] if args.max_frames else frames
        first = frames[0]
    camera = _camera(args, first, seven_scenes=not video and is_seven_scenes(args.frames))
    m = Map.load(args.map)
    viewer = None
    if args.rerun or args.rerun_live:
        from ..sequence.viewer import SequenceViewer

        viewer = SequenceViewer(args.rerun, spawn=args.rerun_live,
                                expected_frames=len(frames) if frames is not None else total)
        viewer.log_map(m)
    sl = SequenceLocalizer(Localizer(m, loc_conf), seq_conf)
    try:
        if video:
            by_name = {}

            def on_frame(fr):
                f = by_name.pop(fr.name, None)
                if f is not None and f.read_seconds:
                    fr.result.timings["read"] = f.read_seconds
                    fr.result.timings["total"] = fr.result.timings.get("total", 0.0) + f.read_seconds
                if viewer is not None:
                    viewer.log_frame(fr, f.image if f is not None else None, sl.map)

            def remember(it):
                for f in it:
                    by_name[f.name] = f
                    yield f

            out, frames = _track_video(sl, remember(frame_iter), camera, on_frame, total)
        else:
            out = sl.run(frames, camera, progress=True,
                         on_frame=viewer.callback(frames, sl) if viewer is not None else None)
    finally:
        if viewer is not None:
            viewer.close()
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
            return np.stack([p.center.cpu().numpy() if p is not None else np.full(3, np.nan) for p in poses])

        plot_trajectory(args.output / "trajectory.png", centers([f.pose for f in out]),
                        centers([gt.get(n) for n in names]) if gt else None, [f.status for f in out],
                        map_centers=centers([m.pose(n) for n in m.image_names]), title=str(args.frames))
    logger.info("Tracked %d frames: %d localized (%d relocalized), %d lost, %d keyframes added%s; outputs in %s",
                len(out), summary["n_localized"], summary["n_relocalized"], summary["n_lost"],
                len(sl.keyframes), f", ATE {summary['ate_cm']:.2f} cm" if summary["ate_cm"] is not None else "",
                args.output)
    return 0
