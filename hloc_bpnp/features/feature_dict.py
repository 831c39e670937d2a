"""Feature dicts (hloc keys: ``keypoints`` (N, 2), ``descriptors`` (N, D), ``scores`` (N,),
``image_size`` (2,), ...) between numpy and torch, and keypoint subsets of them.

Per-keypoint entries are the arrays whose first dimension is N (``image_size`` never is).
"""
from __future__ import annotations

from typing import Dict, Mapping

import numpy as np


def as_numpy(x) -> np.ndarray:
    """A tensor (detached, moved to the CPU) or array-like as a numpy array."""
    return x.detach().cpu().numpy() if hasattr(x, "detach") else np.asarray(x)


def to_numpy(feats: Mapping, float32: bool = False) -> Dict[str, np.ndarray]:
    """A feature dict with every tensor as a numpy array (detached, on the CPU).

    ``float32``: keypoints and descriptors as float32, the map's storage (float16 keypoints
    lose up to a pixel on large images; see the pitfalls)."""
    out = {k: as_numpy(v) for k, v in feats.items()}
    if float32:
        for k in ("keypoints", "descriptors"):
            if k in out:
                out[k] = out[k].astype(np.float32)
    return out


def to_torch(feats: Mapping) -> Dict:
    """A numpy feature dict as torch tensors (zero-copy where possible), as the matchers expect."""
    import torch

    return {k: (torch.from_numpy(np.ascontiguousarray(v)) if isinstance(v, np.ndarray) else v)
            for k, v in feats.items()}


def select_keypoints(feats: Mapping, index) -> Dict:
    """The keypoints ``index`` ((M,) int or (N,) bool) of a feature dict, numpy or torch:
    every per-keypoint entry is indexed, the others are kept."""
    n = len(feats["keypoints"])
    out = {}
    for k, v in feats.items():
        if k != "image_size" and hasattr(v, "shape") and len(v.shape) >= 1 and v.shape[0] == n:
            if hasattr(v, "detach") and isinstance(index, np.ndarray):
                import torch

                v = v[torch.from_numpy(index)]
            else:
                v = v[index]
        out[k] = v
    return out
