"""Microsoft 7-Scenes (Shotton et al., CVPR 2013): chess, fire, heads, office, ...

Layout per scene: ``seq-XX/frame-XXXXXX.color.png`` (640x480 RGB; ``.color.jpg`` is accepted
too, as in copies recompressed to JPEG), ``.depth.png``
(uint16 mm, 65535 = invalid; registered to the depth camera, not the RGB one) and
``.pose.txt`` (4x4 camera-to-world, metres). ``TrainSplit.txt`` / ``TestSplit.txt`` list
sequences as ``sequence1`` ... (meaning ``seq-01``).

Intrinsics: the dataset gives none for RGB; the usual values (also those of the SfM
reference models hloc's 7-Scenes pipeline builds on) are f = 525, principal point
(320, 240): ``DEFAULT_CAMERA`` (PINHOLE 640x480), used as COLMAP pixel coordinates.
Measured on RedKitchen (every 10th of 400 test frames, SIFT, map from the training frames'
poses): f = 525 localized 40/40 at a median 2.2 deg / 4.1 cm, the ``camera-intrinsics.txt``
value f = 585 (stated for the depth camera) 36/40 at 4.1 deg / 8.4 cm, so 525 fits these
poses better and stays the default.
Pass ``camera`` to override. The KinectFusion poses are those of the depth sensor;
hloc's pipeline uses them as-is.
"""
from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import List, Optional, Union

import numpy as np
import torch

from ...geometry import Camera
from ..hloc_text import check_file, format_error, iter_fields, parse_floats
from ..scene import Scene, SceneImage
from ._common import check_dir, pose_from_cam_to_world

logger = logging.getLogger(__name__)

PathLike = Union[str, Path]
SCENES = ("chess", "fire", "heads", "office", "pumpkin", "redkitchen", "stairs")
DEFAULT_CAMERA = Camera("PINHOLE", 640, 480, torch.tensor([525.0, 525.0, 320.0, 240.0], dtype=torch.float64))


COLOR_SUFFIXES = (".color.png", ".color.jpg")


def list_7scenes_frames(seq_dir: PathLike) -> List[Path]:
    """The colour frames of one sequence folder in frame-number order.

    Accepts ``frame-NNNNNN.color.png`` and ``.color.jpg``; a frame present in both formats is
    an error (which one is meant is ambiguous).
    """
    seq_dir = Path(seq_dir)
    by_stem = {}
    for suffix in COLOR_SUFFIXES:
        for fr in seq_dir.glob(f"frame-*{suffix}"):
            stem = fr.name[: -len(suffix)]
            if stem in by_stem:
                raise ValueError(f"{seq_dir}: frame {stem} exists as both {by_stem[stem].name} and {fr.name}")
            by_stem[stem] = fr

    def number(stem: str):
        m = re.fullmatch(r"frame-(\d+)", stem)
        return (0, int(m.group(1)), stem) if m else (1, 0, stem)

    return [by_stem[s] for s in sorted(by_stem, key=number)]


def read_7scenes_split(path: PathLike) -> List[str]:
    """Sequence folder names (``seq-01``, ...) of a ``TrainSplit.txt`` / ``TestSplit.txt``."""
    out = []
    for lineno, f in iter_fields(path, "7-Scenes split file"):
        m = re.fullmatch(r"sequence(\d+)", f[0]) if len(f) == 1 else None
        if m is None:
            raise format_error(path, lineno, f"expected 'sequenceN', got {' '.join(f)!r}")
        out.append(f"seq-{int(m.group(1)):02d}")
    return out


def read_7scenes_pose(path: PathLike):
    """cam_from_world from a ``frame-XXXXXX.pose.txt`` (4x4 camera-to-world)."""
    rows = list(iter_fields(path, "7-Scenes pose file"))
    if len(rows) != 4 or any(len(f) != 4 for _, f in rows):
        raise format_error(path, rows[0][0] if rows else None,
                           f"expected a 4x4 matrix, got rows of {[len(f) for _, f in rows]} values")
    M = np.array([parse_floats(path, ln, f, "pose row") for ln, f in rows])
    if not np.allclose(M[3], [0, 0, 0, 1], atol=1e-6):
        raise format_error(path, rows[3][0], f"last row must be '0 0 0 1', got {M[3].tolist()}")
    return pose_from_cam_to_world(M[:3, :3], M[:3, 3], path, rows[0][0], "camera-to-world rotation")


def load_7scenes_depth(path: PathLike) -> np.ndarray:
    """(H, W) float32 depth in metres (0 = invalid) from a ``.depth.png``."""
    from PIL import Image

    d = np.asarray(Image.open(check_file(path, "depth image")), dtype=np.float32)
    d = np.where(d >= 65535, 0, d) / 1000.0
    return d.astype(np.float32)


def read_7scenes(
    scene_dir: PathLike,
    split: str = "test",
    camera: Optional[Camera] = None,
    load_depth: bool = False,
    step: int = 1,
) -> Scene:
    """Read one 7-Scenes scene.

    Args:
        scene_dir: e.g. ``datasets/7scenes/chess`` (with the ``seq-XX`` folders unzipped).
        split: "train", "test" or "all".
        camera: intrinsics for every frame (default :data:`DEFAULT_CAMERA`).
        load_depth: also load each frame's depth map (memory heavy).
        step: keep every ``step``-th frame of each sequence.
    Returns:
        Scene (names ``seq-XX/frame-XXXXXX.color.png`` or ``.color.jpg``, ``image_dir = scene_dir``) with
        ``metadata["split"]`` = {name: "train"|"test"}.
    """
    scene_dir = check_dir(scene_dir, "7-Scenes scene")
    camera = DEFAULT_CAMERA if camera is None else camera
    splits = {"train": ["train"], "test": ["test"], "all": ["train", "test"]}.get(split)
    if splits is None:
        raise ValueError(f"split must be 'train', 'test' or 'all', got {split!r}")
    images, which = [], {}
    for s in splits:
        split_file = scene_dir / ("TrainSplit.txt" if s == "train" else "TestSplit.txt")
        for seq in read_7scenes_split(split_file):
            seq_dir = check_dir(scene_dir / seq, f"sequence {seq} (listed in {split_file.name})")
            frames = list_7scenes_frames(seq_dir)
            if not frames:
                raise FileNotFoundError(2, "no frame-*.color.png or frame-*.color.jpg in sequence", str(seq_dir))
            for fr in frames[::step]:
                stem = fr.name[: -len(".color.png")]
                pose = read_7scenes_pose(seq_dir / f"{stem}.pose.txt")
                depth = load_7scenes_depth(seq_dir / f"{stem}.depth.png") if load_depth else None
                name = f"{seq}/{fr.name}"
                images.append(SceneImage(name, camera, pose, depth))
                which[name] = s
    logger.info("Read 7-Scenes %s (%s): %d frames", scene_dir.name, split, len(images))
    return Scene(images, scene_dir, {"dataset": "7scenes", "scene": scene_dir.name, "split": which})
