"""Strecha et al. (CVPR 2008) multi-view benchmark: fountain-P11, Herz-Jesu-P8, ...

Each ``gt_dense_cameras/<image>.camera`` file has (metres)::

    K (3 rows)          intrinsics, used unchanged as COLMAP PINHOLE (fx, fy, cx, cy)
    0 0 0               radial distortion (images are undistorted; must be zero)
    S (3 rows)          camera-to-world rotation
    C (1 row)           camera centre
    W H                 image size

World-to-camera: ``R = S^T``, ``t = -S^T C`` so that ``P = K [R | t]``. The stored S are
orthonormal only to ~1e-6, so R is projected onto SO(3); a matrix further than 1e-3 from a
rotation is rejected with a file:line error. K is used unchanged in COLMAP's pixel
convention: fitting a principal-point shift against the ground truth found ~0 px best.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Tuple, Union

import numpy as np
import torch

from ...geometry import Camera, Pose
from ..hloc_text import format_error, iter_fields, parse_floats, parse_int
from ..scene import Scene, SceneImage
from ._common import check_dir, image_size, pose_from_cam_to_world

logger = logging.getLogger(__name__)

PathLike = Union[str, Path]


def read_strecha_camera(path: PathLike) -> Tuple[Camera, Pose]:
    """Parse one ``.camera`` file into a PINHOLE Camera and a cam_from_world Pose."""
    rows = list(iter_fields(path, "Strecha camera file"))
    if len(rows) != 9:
        raise format_error(path, rows[-1][0] if rows else None,
                           f"expected 9 rows (K x3, distortion, S x3, C, 'W H'), got {len(rows)}")
    vals = []
    for i, (lineno, f) in enumerate(rows):
        n = 2 if i == 8 else 3
        if len(f) != n:
            raise format_error(path, lineno, f"row {i + 1} needs {n} values, got {len(f)}")
        vals.append(parse_floats(path, lineno, f, f"row {i + 1}"))
    K = np.array(vals[0:3])
    if abs(K[0, 1]) > 1e-9 * abs(K[0, 0]) or np.any(K[1, :1] != 0) or not np.allclose(K[2], [0, 0, 1]):
        raise format_error(path, rows[0][0], f"K must be [[fx 0 cx] [0 fy cy] [0 0 1]] (no skew), got {K.tolist()}")
    if any(v != 0 for v in vals[3]):
        raise format_error(path, rows[3][0], f"non-zero distortion {vals[3]} is not supported (images are undistorted)")
    width = parse_int(path, rows[8][0], rows[8][1][0], "image width", minimum=1)
    height = parse_int(path, rows[8][0], rows[8][1][1], "image height", minimum=1)
    pose = pose_from_cam_to_world(np.array(vals[4:7]), np.array(vals[7]), path, rows[4][0], "rotation S")
    camera = Camera("PINHOLE", width, height, torch.tensor([K[0, 0], K[1, 1], K[0, 2], K[1, 2]], dtype=torch.float64))
    return camera, pose


def read_strecha(scene_dir: PathLike, cameras_dir: str = "gt_dense_cameras", images_dir: str = "images",
                 check_image_sizes: bool = True) -> Scene:
    """Read a Strecha scene (``<scene>/images/*.jpg`` + ``<scene>/gt_dense_cameras/*.camera``).

    Returns:
        Scene with one image per ``.camera`` file (sorted by name), PINHOLE cameras, GT poses
        and ``image_dir = scene_dir / images_dir``.
    Raises:
        FileNotFoundError (missing folder, no camera files), FormatError (bad file, naming file:line),
        ValueError (image size on disk differs from the camera file).
    """
    scene_dir = check_dir(scene_dir, "Strecha scene")
    cam_dir = check_dir(scene_dir / cameras_dir, "Strecha ground-truth cameras")
    image_dir = scene_dir / images_dir
    files = sorted(cam_dir.glob("*.camera"))
    if not files:
        raise FileNotFoundError(2, "no *.camera files", str(cam_dir))
    images = []
    for f in files:
        name = f.name[: -len(".camera")]
        camera, pose = read_strecha_camera(f)
        img_path = image_dir / name
        if check_image_sizes and img_path.is_file():
            wh = image_size(img_path)
            if wh != (camera.width, camera.height):
                raise ValueError(f"{f}: camera size {camera.width}x{camera.height} differs from image {img_path} ({wh[0]}x{wh[1]})")
        images.append(SceneImage(name, camera, pose))
    logger.info("Read Strecha scene %s: %d images", scene_dir.name, len(images))
    return Scene(images, image_dir, {"dataset": "strecha", "scene": scene_dir.name})
