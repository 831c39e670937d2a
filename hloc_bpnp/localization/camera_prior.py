"""A camera for a query that comes without intrinsics: from EXIF, else from the image size.

EXIF: ``FocalLengthIn35mmFilm`` gives f = f35 / 36 * max(W, H); else ``FocalLength`` with
the sensor width from ``FocalPlaneXResolution`` when present. Without EXIF, COLMAP's prior
f = 1.2 * max(W, H) is used. The principal point is the image centre (COLMAP convention:
(W/2, H/2)). The result says where the camera came from ('exif' or 'image_size').
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional, Tuple

import torch

from ..geometry import Camera

logger = logging.getLogger(__name__)

DEFAULT_FOCAL_FACTOR = 1.2  # COLMAP's default focal prior relative to max(W, H)


def _exif_focal_px(path: Path, width: int, height: int) -> Optional[float]:
    try:
        from PIL import Image

        with Image.open(path) as im:
            exif = im.getexif()
            sub = exif.get_ifd(0x8769) if hasattr(exif, "get_ifd") else {}
    except Exception:  # unreadable EXIF is not an error: fall back to the size prior
        return None
    tags = {**dict(exif), **dict(sub)}
    f35 = tags.get(0xA405)  # FocalLengthIn35mmFilm
    if f35:
        return float(f35) / 36.0 * max(width, height)
    f_mm = tags.get(0x920A)  # FocalLength
    xres = tags.get(0xA20E)  # FocalPlaneXResolution (pixels per unit)
    unit = tags.get(0xA210, 2)  # FocalPlaneResolutionUnit: 2 inch, 3 cm
    if f_mm and xres:
        mm_per_unit = {2: 25.4, 3: 10.0, 4: 1.0}.get(int(unit), 25.4)
        px_per_mm = float(xres) / mm_per_unit
        # FocalPlaneXResolution refers to the original sensor readout width; assume the
        # stored image is that readout (no cropping).
        return float(f_mm) * px_per_mm
    return None


def guess_camera(width: int, height: int, path=None, model: str = "SIMPLE_RADIAL") -> Tuple[Camera, str]:
    """(Camera, source) for a query without intrinsics.

    Args:
        width, height: image size in pixels (after EXIF orientation).
        path: image file, to read EXIF from (optional).
        model: SIMPLE_PINHOLE or SIMPLE_RADIAL (k = 0 initially).
    """
    f, source = None, "image_size"
    if path is not None:
        f = _exif_focal_px(Path(path), width, height)
        if f is not None:
            source = "exif"
    if f is None:
        f = DEFAULT_FOCAL_FACTOR * max(width, height)
    params = [f, width / 2.0, height / 2.0]
    if model == "SIMPLE_RADIAL":
        params.append(0.0)
    elif model != "SIMPLE_PINHOLE":
        raise ValueError(f"guess_camera: model must be SIMPLE_PINHOLE or SIMPLE_RADIAL, got {model}")
    logger.debug("Camera prior for %s from %s: f=%.1f", path, source, f)
    return Camera(model, width, height, torch.tensor(params, dtype=torch.float64)), source
