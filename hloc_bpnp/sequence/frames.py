"""Frame sources of sequence mode: an image folder (numeric / natural name order), a TUM RGB-D
``rgb.txt`` (with ``groundtruth.txt`` when present), a 7-Scenes sequence folder or scene (its
``.pose.txt`` poses as ground truth) and a video file (decoded by :mod:`.video`).

TUM formats (https://cvg.cit.tum.de/data/datasets/rgbd-dataset/file_formats):

=================== =====================================================================
``rgb.txt``         ``timestamp filename`` (filename relative to the file's folder)
``groundtruth.txt`` ``timestamp tx ty tz qx qy qz qw``: the camera's pose in the world
                    (world_from_cam, Hamilton quaternion, scalar last)
=================== =====================================================================

Lines starting with ``#`` and blank lines are skipped. Poses are turned into our
``cam_from_world`` at this edge. A malformed line is a :class:`FormatError` whose message
starts with ``"<file>:<line>: "``.
"""
from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from ..geometry import Pose
from ..io.hloc_text import FormatError, format_error, iter_fields, parse_floats
from .frame import Frame

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".ppm", ".bmp", ".tif", ".tiff")
VIDEO_EXTENSIONS = (".mp4", ".m4v", ".mov", ".avi", ".mkv", ".webm", ".mpg", ".mpeg", ".ts", ".wmv", ".flv")
FRAME_ORDERS = ("auto", "numeric", "natural", "name")
SEVEN_SCENES_FPS = 30.0
"""Frame rate of the 7-Scenes Kinect recordings: 7-Scenes frame timestamps are index / 30 s."""
QUATERNION_NORM_TOL = 1e-2
"""Largest |‖q‖ - 1| of a ground-truth quaternion accepted (and normalized) before it is an error."""
PathLike = Union[str, Path]




def _number(tok: str) -> Optional[float]:
    """float(tok) when it is a finite number, else None."""
    try:
        v = float(tok)
    except ValueError:
        return None
    return v if np.isfinite(v) else None


def _list_images(image_dir: Path, extensions: Sequence[str], recursive: bool) -> List[str]:
    exts = {e.lower() if e.startswith(".") else "." + e.lower() for e in extensions}
    files = image_dir.rglob("*") if recursive else image_dir.iterdir()
    return sorted(p.relative_to(image_dir).as_posix() for p in files if p.suffix.lower() in exts and p.is_file())


def _natural_key(name: str):
    """Sort key comparing digit runs as integers (``frame2`` < ``frame10``), text as is."""
    return [(0, int(tok), tok) if tok.isdigit() else (1, 0, tok) for tok in re.split(r"(\d+)", name)]


def sort_frame_names(names: Sequence[str], order: str = "auto") -> Tuple[List[str], str]:
    """Order image names as the frames of a video.

    Args:
        names: file names (paths relative to the folder, ``/`` separators).
        order: ``"numeric"``: by the value of each stem (``1.png, 2.png, 10.png``; every stem
            must be a number); ``"natural"``: digit runs compared as integers, the rest as text
            (``frame-2.png`` before ``frame-10.png``); ``"name"``: plain string order;
            ``"auto"``: numeric when every stem is a number (and all names are in one
            folder), else natural. Numeric order sorts by folder first.
    Returns:
        (sorted names, the order used: ``"numeric"``, ``"natural"`` or ``"name"``). Ties keep
        the string order.
    Raises:
        ValueError: an unknown order, or ``"numeric"`` with a stem that is not a number.
    """
    if order not in FRAME_ORDERS:
        raise ValueError(f"frame order must be one of {FRAME_ORDERS}, got {order!r}")
    names = sorted(names)
    stems = {n: _number(Path(n).stem) for n in names}
    one_folder = len({Path(n).parent for n in names}) <= 1
    if order == "numeric" or (order == "auto" and one_folder and all(v is not None for v in stems.values())):
        bad = [n for n, v in stems.items() if v is None]
        if bad:
            raise ValueError(f"numeric frame order: {bad[0]!r} is not named by a number")
        return sorted(names, key=lambda n: (_natural_key(Path(n).parent.as_posix()), stems[n])), "numeric"
    if order == "name":
        return names, "name"
    return sorted(names, key=_natural_key), "natural"


def frames_from_folder(image_dir: PathLike, extensions: Sequence[str] = IMAGE_EXTENSIONS,
                       recursive: bool = False, order: str = "auto") -> List[Frame]:
    """The images of a folder as frames.

    Args:
        image_dir: the folder.
        extensions: accepted suffixes (case-insensitive).
        recursive: also look in subfolders.
        order: how names are ordered (:func:`sort_frame_names`): by default numerically when
            every stem is a number (``1, 2, 10``; TUM-style ``1341847980.722988``), else
            naturally (``frame-2`` before ``frame-10``). The order used is logged.
    Returns:
        Frames named by the path relative to ``image_dir`` (``/`` separators). Timestamps are
        the file stems when every stem is a number and they strictly increase in the frame
        order (TUM-style names), else the index 0, 1, 2, ...
    Raises:
        FileNotFoundError: ``image_dir`` is not a folder.
        ValueError: it holds no image (or ``order`` is invalid for these names).
    """
    image_dir = Path(image_dir)
    if not image_dir.is_dir():
        raise FileNotFoundError(2, "frame folder does not exist", str(image_dir))
    names = _list_images(image_dir, extensions, recursive)
    if not names:
        raise ValueError(f"{image_dir}: frame folder holds no image ({', '.join(extensions)}"
                         f"{', subfolders included' if recursive else ''})")
    names, used = sort_frame_names(names, order)
    logger.info("%s: %d frames in %s order (%s ... %s)", image_dir, len(names), used, names[0], names[-1])
    stems = [_number(Path(n).stem) for n in names]
    if all(s is not None for s in stems) and all(b > a for a, b in zip(stems, stems[1:])):
        stamps = [float(s) for s in stems]
    else:
        stamps = [float(i) for i in range(len(names))]
    return [Frame(n, image_dir / n, t) for n, t in zip(names, stamps)]


# ------------------------------------------------------------------ 7-Scenes
def _seven_scenes_kind(p: Path) -> Optional[str]:
    """"scene" (split files), "sequence" (``frame-*.color.*`` with ``.pose.txt``) or None."""
    from ..io.datasets.seven_scenes import COLOR_SUFFIXES

    if not p.is_dir():
        return None
    if (p / "TestSplit.txt").is_file() or (p / "TrainSplit.txt").is_file():
        return "scene"
    for suffix in COLOR_SUFFIXES:
        for fr in p.glob(f"frame-*{suffix}"):
            if (p / (fr.name[: -len(suffix)] + ".pose.txt")).is_file():
                return "sequence"
            break
    return None


def is_seven_scenes(source: PathLike) -> bool:
    """Whether ``source`` is a 7-Scenes scene folder (``TrainSplit.txt`` / ``TestSplit.txt``)
    or sequence folder (``frame-NNNNNN.color.{png,jpg}`` with ``.pose.txt``)."""
    return _seven_scenes_kind(Path(source)) is not None


def frames_from_7scenes(source: PathLike, split: str = "test", groundtruth: bool = True) -> List[Frame]:
    """Frames of a 7-Scenes sequence folder (``seq-XX``) or of a scene's split.

    Args:
        source: a sequence folder (``frame-NNNNNN.color.{png,jpg}`` + ``.pose.txt``), or a
            scene folder: then the sequences of its ``TestSplit.txt`` (``split="test"``),
            ``TrainSplit.txt`` (``"train"``) or both (``"all"``), in that order.
        split: which sequences of a scene.
        groundtruth: read each frame's ``.pose.txt`` (camera-to-world, metres) as ``gt_pose``
            (``cam_from_world``).
    Returns:
        Frames in frame-number order named ``seq-XX/frame-NNNNNN.color.jpg`` (the sequence
        folder's name, then the file), timestamps index / :data:`SEVEN_SCENES_FPS` seconds
        counted over the returned frames.
    Raises:
        FileNotFoundError: ``source`` (or a listed sequence) is not a folder, or a pose file is
            missing (with ``groundtruth``).
        ValueError: no frame, or ``source`` is no 7-Scenes folder.
        FormatError: a malformed split or pose file (naming ``file:line``).
    """
    from ..io.datasets.seven_scenes import COLOR_SUFFIXES, list_7scenes_frames, read_7scenes_pose, \
        read_7scenes_split

    p = Path(source)
    if not p.is_dir():
        raise FileNotFoundError(2, "7-Scenes folder does not exist", str(p))
    kind = _seven_scenes_kind(p)
    if kind == "scene":
        files = {"test": ["TestSplit.txt"], "train": ["TrainSplit.txt"], "all": ["TestSplit.txt", "TrainSplit.txt"]}
        if split not in files:
            raise ValueError(f"split must be 'test', 'train' or 'all', got {split!r}")
        seqs = [p / s for f in files[split] for s in read_7scenes_split(p / f)]
    elif kind == "sequence":
        seqs = [p]
    else:
        raise ValueError(f"{p}: not a 7-Scenes scene (TrainSplit.txt / TestSplit.txt) nor a sequence folder "
                         f"(frame-NNNNNN.color.png|jpg with .pose.txt)")
    frames: List[Frame] = []
    for seq in seqs:
        if not seq.is_dir():
            raise FileNotFoundError(2, "7-Scenes sequence folder does not exist", str(seq))
        for f in list_7scenes_frames(seq):
            stem = next(f.name[: -len(s)] for s in COLOR_SUFFIXES if f.name.endswith(s))
            gt = None
            if groundtruth:
                pose_file = seq / f"{stem}.pose.txt"
                if not pose_file.is_file():
                    raise FileNotFoundError(2, f"no pose file for frame {f.name}", str(pose_file))
                gt = read_7scenes_pose(pose_file)
            frames.append(Frame(f"{seq.name}/{f.name}", f, len(frames) / SEVEN_SCENES_FPS, gt))
    if not frames:
        raise ValueError(f"{p}: no frame-NNNNNN.color.png|jpg in {', '.join(s.name for s in seqs)}")
    logger.info("%s: %d 7-Scenes frames (%s) in frame-number order%s", p, len(frames),
                ", ".join(s.name for s in seqs), ", with ground-truth poses" if groundtruth else "")
    return frames


def read_tum_rgb(path: PathLike) -> List[Tuple[float, str, int]]:
    """Read a TUM ``rgb.txt``.

    Returns:
        [(timestamp, file path relative to the rgb.txt's folder, 1-based line number)], in
        file order, timestamps strictly increasing.
    Raises:
        FileNotFoundError: no such file.
        FormatError: a line without exactly two fields, a timestamp that is not a finite
            number or does not increase, or no line at all; the message names ``file:line``.
    """
    path = Path(path)
    out: List[Tuple[float, str, int]] = []
    for lineno, tok in iter_fields(path, "TUM rgb list"):
        if len(tok) != 2:
            raise format_error(path, lineno, f"expected 'timestamp filename', got {len(tok)} fields")
        t = _number(tok[0])
        if t is None:
            raise format_error(path, lineno, f"timestamp {tok[0]!r} is not a finite number")
        if out and t <= out[-1][0]:
            raise format_error(path, lineno, f"timestamp {tok[0]} does not increase (line {out[-1][2]}: "
                                             f"{out[-1][0]:.6f})")
        out.append((t, tok[1], lineno))
    if not out:
        raise format_error(path, None, "no frame listed")
    return out


def read_tum_groundtruth(path: PathLike) -> Tuple[np.ndarray, List[Pose]]:
    """Read a TUM ``groundtruth.txt`` (or any TUM trajectory file).

    Returns:
        timestamps (N,) float64 in file order, and N unbatched float64 ``cam_from_world``
        Poses (the inverse of the file's world_from_cam). Quaternions are normalized.
    Raises:
        FileNotFoundError: no such file.
        FormatError: a line without 8 fields, a value that is not a finite number, or a
            quaternion whose norm is off 1 by more than ``QUATERNION_NORM_TOL``; the
            message names ``file:line``.
    """
    path = Path(path)
    stamps: List[float] = []
    qs: List[List[float]] = []
    cs: List[List[float]] = []
    for lineno, tok in iter_fields(path, "TUM trajectory"):
        if len(tok) != 8:
            raise format_error(path, lineno, f"expected 'timestamp tx ty tz qx qy qz qw', got {len(tok)} fields")
        t, tx, ty, tz, qx, qy, qz, qw = parse_floats(path, lineno, tok, "pose")
        n = float(np.sqrt(qx * qx + qy * qy + qz * qz + qw * qw))
        if abs(n - 1.0) > QUATERNION_NORM_TOL:
            raise format_error(path, lineno, f"quaternion (qx qy qz qw) = ({qx:g} {qy:g} {qz:g} {qw:g}) has norm "
                                             f"{n:.4f}, not 1 (tolerance {QUATERNION_NORM_TOL:g})")
        stamps.append(t)
        qs.append([qw / n, qx / n, qy / n, qz / n])
        cs.append([tx, ty, tz])
    if not stamps:
        logger.warning("%s: no pose in the file", path)
        return np.zeros(0, np.float64), []
    world_from_cam = Pose.from_qt(torch.tensor(qs, dtype=torch.float64), torch.tensor(cs, dtype=torch.float64))
    cam_from_world = world_from_cam.inv()
    return np.asarray(stamps, np.float64), [Pose(R.clone(), t.clone())
                                             for R, t in zip(cam_from_world.R, cam_from_world.t)]


def associate_groundtruth(frames: Sequence[Frame], groundtruth: PathLike, max_dt: float = 0.02) -> int:
    """Set each frame's ``gt_pose`` to the ground-truth pose nearest in time, when within
    ``max_dt`` seconds (else None). Returns the number of frames that got one (logged)."""
    stamps, poses = read_tum_groundtruth(groundtruth)
    n = 0
    if len(stamps):
        order = np.argsort(stamps, kind="stable")
        s = stamps[order]
        ft = np.array([f.timestamp for f in frames], np.float64)
        hi = np.clip(np.searchsorted(s, ft), 0, len(s) - 1)
        lo = np.clip(hi - 1, 0, len(s) - 1)
        j = np.where(np.abs(s[lo] - ft) <= np.abs(s[hi] - ft), lo, hi)
        ok = np.abs(s[j] - ft) <= max_dt
        for f, jj, k in zip(frames, j, ok):
            f.gt_pose = poses[int(order[jj])] if k else None
        n = int(ok.sum())
    else:
        for f in frames:
            f.gt_pose = None
    level = logging.INFO if n == len(frames) else logging.WARNING
    logger.log(level, "%s: %d / %d frames have a ground-truth pose within %.3f s", groundtruth, n, len(frames),
               max_dt)
    return n


def frames_from_tum(root_or_rgb_txt: PathLike, groundtruth: Union[str, PathLike, None] = "auto",
                    max_dt: float = 0.02) -> List[Frame]:
    """Frames of a TUM RGB-D sequence.

    Args:
        root_or_rgb_txt: the sequence folder (holding ``rgb.txt``) or the list file itself.
        groundtruth: ``"auto"`` (``groundtruth.txt`` beside the list, when it exists), None
            (no ground truth) or a TUM trajectory file.
        max_dt: largest time difference [s] between a frame and its ground-truth pose.
    Returns:
        Frames in list order, named by the relative path in the list (``rgb/<t>.png``), with
        ``gt_pose`` (``cam_from_world``) from the nearest ground-truth pose within ``max_dt``.
    Raises:
        FileNotFoundError: no list file (or an explicit ``groundtruth`` that does not exist).
        FormatError: a malformed line in either file, or listed images that do not exist
            (all checked before returning; the first one's line is named).
    """
    p = Path(root_or_rgb_txt)
    as_folder = p.is_dir() or (not p.exists() and p.suffix.lower() != ".txt")
    rgb = p / "rgb.txt" if as_folder else p
    root = rgb.parent
    entries = read_tum_rgb(rgb)
    missing = [(lineno, root / rel) for _, rel, lineno in entries if not (root / rel).is_file()]
    if missing:
        more = f" ({len(missing) - 1} more listed images missing)" if len(missing) > 1 else ""
        raise format_error(rgb, missing[0][0], f"listed image {missing[0][1]} does not exist{more}")
    frames = [Frame(rel, root / rel, t) for t, rel, _ in entries]
    if groundtruth == "auto":
        gt_path = root / "groundtruth.txt"
        if not gt_path.is_file():
            logger.info("%s: no groundtruth.txt beside it, frames without ground truth", rgb)
            return frames
    elif groundtruth is None:
        return frames
    else:
        gt_path = Path(groundtruth)
    associate_groundtruth(frames, gt_path, max_dt)
    return frames


def is_video(source: PathLike) -> bool:
    """Whether ``source`` is a file with a video suffix (:data:`VIDEO_EXTENSIONS`)."""
    p = Path(source)
    return p.suffix.lower() in VIDEO_EXTENSIONS and not p.is_dir()


def iter_frames(source: PathLike, groundtruth: Union[str, PathLike, None] = "auto",
                max_dt: float = 0.02) -> Iterator[Frame]:
    """The frames of ``source`` one at a time: a video is decoded as it is read (memory stays
    bounded); the other sources are listed by :func:`load_frames` first."""
    if is_video(source):
        from .video import iter_video

        yield from iter_video(source)
    else:
        yield from load_frames(source, groundtruth, max_dt)


def load_frames(source: PathLike, groundtruth: Union[str, PathLike, None] = "auto",
                max_dt: float = 0.02) -> List[Frame]:
    """Frames from whatever ``source`` is.

    - a video file (:data:`VIDEO_EXTENSIONS`): every frame decoded into ``Frame.image``
      (:func:`hloc_bpnp.sequence.video.iter_video`; use :func:`iter_frames` to stream a long
      video instead); ``groundtruth`` is ignored;
    - a 7-Scenes scene (its ``TestSplit.txt`` sequences) or sequence folder:
      :func:`frames_from_7scenes`, the ``.pose.txt`` poses as ground truth unless
      ``groundtruth`` is None;
    - a folder with ``rgb.txt``, or a ``*.txt`` file: :func:`frames_from_tum`;
    - a folder of images: :func:`frames_from_folder` (numeric order when the names are numbers,
      else natural order); a folder without images but with an ``rgb/`` subfolder of images
      (a TUM folder without its list): that one, names ``rgb/...``.

    For an image folder, ground truth (``groundtruth`` a file, or ``"auto"`` and a
    ``groundtruth.txt`` in ``source``) is associated by time when the timestamps come from
    the file names (TUM-style); with index timestamps it is ignored with a warning.

    Raises:
        FileNotFoundError: ``source`` does not exist.
        ValueError: ``source`` is a file other than a ``.txt`` list, or a folder without
            images (nor ``rgb.txt``, nor an ``rgb/`` subfolder of images).
    """
    p = Path(source)
    if is_video(p):
        from .video import iter_video

        return list(iter_video(p))
    if p.is_file():
        if p.suffix.lower() == ".txt":
            return frames_from_tum(p, groundtruth, max_dt)
        raise ValueError(f"{p}: frames must be an image folder, a TUM or 7-Scenes folder, an rgb.txt list or a "
                         f"video ({', '.join(VIDEO_EXTENSIONS)}), not this file")
    if not p.is_dir():
        raise FileNotFoundError(2, "frames not found (an image folder, a TUM or 7-Scenes folder, an rgb.txt list "
                                   "or a video)", str(p))
    if (p / "rgb.txt").is_file():
        return frames_from_tum(p, groundtruth, max_dt)
    if is_seven_scenes(p):
        if groundtruth not in ("auto", None):
            logger.warning("%s: 7-Scenes folder: its .pose.txt files are the ground truth, %s ignored", p,
                           groundtruth)
        return frames_from_7scenes(p, groundtruth=groundtruth is not None)
    if not _list_images(p, IMAGE_EXTENSIONS, False) and (p / "rgb").is_dir() \
            and _list_images(p / "rgb", IMAGE_EXTENSIONS, False):
        frames = [Frame(f"rgb/{f.name}", f.path, f.timestamp) for f in frames_from_folder(p / "rgb")]
    else:
        try:
            frames = frames_from_folder(p)
        except ValueError:
            raise ValueError(f"{p}: no image, no rgb.txt and no rgb/ subfolder of images: not a frame source") \
                from None
    gt_path = None
    if groundtruth == "auto":
        gt_path = p / "groundtruth.txt" if (p / "groundtruth.txt").is_file() else None
    elif groundtruth is not None:
        gt_path = Path(groundtruth)
    if gt_path is not None:
        if all(_number(Path(f.name).stem) == f.timestamp for f in frames):
            associate_groundtruth(frames, gt_path, max_dt)
        else:
            logger.warning("%s: ground truth %s ignored: the frame names are not timestamps", p, gt_path)
    return frames


__all__ = ["Frame", "FormatError", "IMAGE_EXTENSIONS", "VIDEO_EXTENSIONS", "SEVEN_SCENES_FPS", "sort_frame_names",
           "frames_from_folder", "read_tum_rgb", "read_tum_groundtruth", "associate_groundtruth", "frames_from_tum",
           "is_seven_scenes", "frames_from_7scenes", "is_video", "iter_frames", "load_frames"]
