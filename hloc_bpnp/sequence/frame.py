"""The :class:`Frame` record shared by the frame sources (:mod:`.frames`, :mod:`.video`)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from ..geometry import Pose


@dataclass
class Frame:
    """One frame of a sequence.

    Attributes:
        name: image name (path relative to the sequence root, ``/`` separators).
        path: the image file (None for frames that come from memory).
        timestamp: seconds (TUM, video, 7-Scenes) or the frame index / number (image folders).
        gt_pose: ground-truth ``cam_from_world`` (unbatched, float64) or None.
        image: the decoded (H, W, 3) uint8 RGB image for frames that are not files (video),
            else None (read from ``path`` when tracked).
        error: why the frame could not be decoded (a video frame that failed), else None.
        read_seconds: time spent decoding ``image`` (video), 0 for file frames.
    """

    name: str
    path: Optional[Path]
    timestamp: float
    gt_pose: Optional[Pose] = None
    image: Optional[np.ndarray] = None
    error: Optional[str] = None
    read_seconds: float = 0.0
