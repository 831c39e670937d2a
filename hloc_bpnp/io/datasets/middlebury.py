"""Middlebury multi-view stereo (Seitz et al., CVPR 2006): temple / dino ``*_par.txt``.

``<name>_par.txt``: first line N, then per image
``name k11 k12 k13 k21 k22 k23 k31 k32 k33 r11 .. r33 t1 t2 t3`` with ``P = K [R | t]``
world-to-camera (metres).

Pixel convention (our choice, documented): the dataset's README only says "the image
origin is top-left"; calibrations of this kind (Bouguet-style toolboxes) put the centre
of the top-left pixel at (0, 0). COLMAP puts it at (0.5, 0.5), so we use
``cx_colmap = cx + 0.5``, ``cy_colmap = cy + 0.5`` (``pixel_offset=0.5``); pass
``pixel_offset=0`` to use K unchanged. The difference is 0.5 px, ~0.02 degrees at f = 1520.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional, Tuple, Union

import numpy as np
import torch

from ...geometry import Camera
from ..hloc_text import check_file, format_error, iter_fields, parse_floats, parse_int
from ..scene import Scene, SceneImage
from ._common import check_dir, image_size, pose_from_Rt

logger = logging.getLogger(__name__)

PathLike = Union[str, Path]


def read_middlebury(
    scene_dir: PathLike,
    par_file: Optional[PathLike] = None,
    keep_missing: bool = False,
    pixel_offset: float = 0.5,
    default_size: Tuple[int, int] = (640, 480),
) -> Scene:
    """Read a Middlebury MVS scene folder (images next to ``*_par.txt``).

    Args:
        scene_dir: folder with the PNGs and the ``*_par.txt`` file.
        par_file: the parameter file (default: the single ``*_par.txt`` in scene_dir).
        keep_missing: keep the views whose image is not on disk (size: ``default_size``,
            or that of the images present).
        pixel_offset: added to the principal point (see module docstring).
    Returns:
        Scene of PINHOLE cameras with GT poses, in file order, ``image_dir = scene_dir``.
    """
    scene_dir = check_dir(scene_dir, "Middlebury scene")
    if par_file is None:
        cands = sorted(scene_dir.glob("*_par.txt"))
        if len(cands) != 1:
            raise FileNotFoundError(2, f"expected one *_par.txt file, found {[c.name for c in cands]}", str(scene_dir))
        par_file = cands[0]
    par_file = check_file(par_file, "Middlebury parameter file")
    rows = iter_fields(par_file, "Middlebury parameter file")
    try:
        lineno, f = next(rows)
    except StopIteration:
        raise format_error(par_file, None, "empty file (expected the number of images first)") from None
    if len(f) != 1:
        raise format_error(par_file, lineno, f"first line must be the number of images, got {len(f)} fields")
    n = parse_int(par_file, lineno, f[0], "number of images", minimum=0)
    entries = []
    for lineno, f in rows:
        if len(f) != 22:
            raise format_error(par_file, lineno, f"expected 'name k11..k33 r11..r33 t1 t2 t3' (22 fields), got {len(f)}")
        v = np.array(parse_floats(par_file, lineno, f[1:], f"parameters of {f[0]!r}"))
        K, R, t = v[:9].reshape(3, 3), v[9:18].reshape(3, 3), v[18:]
        if abs(K[0, 1]) > 1e-9 * abs(K[0, 0]) or K[1, 0] != 0 or not np.allclose(K[2], [0, 0, 1]):
            raise format_error(par_file, lineno, f"K must be [[fx 0 cx] [0 fy cy] [0 0 1]], got {K.tolist()}")
        entries.append((lineno, f[0], K, pose_from_Rt(R, t, par_file, lineno, f"rotation of {f[0]!r}")))
    if len(entries) != n:
        raise format_error(par_file, 1, f"header announces {n} images but the file has {len(entries)}")
    present = {name: (scene_dir / name).is_file() for _, name, _, _ in entries}
    sizes = {name: image_size(scene_dir / name) for name, ok in present.items() if ok}
    fallback = next(iter(sizes.values()), default_size)
    images = []
    for lineno, name, K, pose in entries:
        if not present[name] and not keep_missing:
            continue
        w, h = sizes.get(name, fallback)
        params = torch.tensor([K[0, 0], K[1, 1], K[0, 2] + pixel_offset, K[1, 2] + pixel_offset], dtype=torch.float64)
        images.append(SceneImage(name, Camera("PINHOLE", w, h, params), pose))
    logger.info("Read Middlebury %s: %d of %d views (%d on disk)", par_file.name, len(images), n, len(sizes))
    return Scene(images, scene_dir, {"dataset": "middlebury", "par_file": str(par_file), "pixel_offset": pixel_offset})
