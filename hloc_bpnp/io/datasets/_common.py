"""Helpers shared by the dataset readers (checked rotations, image sizes, split lists)."""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence, Tuple, Union

import numpy as np
import torch

from ...geometry import Pose, is_rotation, project_to_so3
from ..hloc_text import format_error

PathLike = Union[str, Path]

ROTATION_TOL = 1e-3
"""Largest |R R^T - I| (and |det R - 1|) accepted before projecting onto SO(3)."""


def checked_rotation(R, path: PathLike, lineno: Optional[int], what: str = "rotation",
                     tol: float = ROTATION_TOL) -> torch.Tensor:
    """(3, 3) float64 nearest rotation of ``R``; a file:line error when ``R`` is far from one.

    Ground-truth files store rotations to ~1e-6 (Strecha) or ~1e-7: the SVD projection
    removes that noise, while a matrix off by more than ``tol`` is a broken file.
    """
    R = torch.as_tensor(np.asarray(R, dtype=np.float64))
    if not bool(is_rotation(R, tol)):
        dev = float((R @ R.T - torch.eye(3, dtype=R.dtype)).abs().max())
        det = float(torch.det(R))
        raise format_error(
            path, lineno, f"{what} is not a rotation (max |R R^T - I| = {dev:.3g}, det = {det:.6g}, tolerance {tol})"
        )
    return project_to_so3(R)


def pose_from_Rt(R, t, path: PathLike, lineno: Optional[int], what: str = "rotation") -> Pose:
    """cam_from_world from a checked world-to-camera rotation and a translation."""
    return Pose(checked_rotation(R, path, lineno, what), torch.as_tensor(np.asarray(t, dtype=np.float64)))


def pose_from_cam_to_world(R_c2w, center, path: PathLike, lineno: Optional[int], what: str = "rotation") -> Pose:
    """cam_from_world from a checked camera-to-world rotation and the camera centre."""
    R = checked_rotation(np.asarray(R_c2w, dtype=np.float64).T, path, lineno, what)
    return Pose.from_center(R, torch.as_tensor(np.asarray(center, dtype=np.float64)))


def image_size(path: PathLike) -> Tuple[int, int]:
    """(width, height) of an image file; reads only the header."""
    from PIL import Image

    with Image.open(path) as im:
        return im.size


def check_dir(path: PathLike, what: str) -> Path:
    p = Path(path)
    if not p.is_dir():
        raise FileNotFoundError(2, f"{what} folder not found", str(p))
    return p


def first_existing(root: Path, candidates: Sequence[str], what: str) -> Path:
    """The first of ``root / c`` that exists, else FileNotFoundError listing all candidates."""
    for c in candidates:
        if (root / c).exists():
            return root / c
    raise FileNotFoundError(2, f"{what} not found (looked for {list(candidates)})", str(root))
