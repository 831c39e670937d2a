"""Image pairs to match: exhaustive, from retrieval, from covisibility, from poses.

All functions return a list of ``(name0, name1)`` tuples; :func:`write_pairs` writes them in
hloc's text format (one ``name0 name1`` per line).
"""
from __future__ import annotations

import logging
from collections import defaultdict
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from .index import GlobalIndex

logger = logging.getLogger(__name__)

Pair = Tuple[str, str]


def pairs_exhaustive(names: Sequence[str], names_ref: Optional[Sequence[str]] = None) -> List[Pair]:
    """All pairs.

    Args:
        names: image names.
        names_ref: if given, every (name, ref) with ref != name (query x database); otherwise
            each unordered pair of ``names`` once, as (names[i], names[j]) with i < j.
    """
    names = list(names)
    if len(set(names)) != len(names):
        raise ValueError("pairs_exhaustive: names contain duplicates")
    if names_ref is None:
        return [(names[i], names[j]) for i in range(len(names)) for j in range(i + 1, len(names))]
    return [(n, r) for n in names for r in names_ref if n != r]


def pairs_from_retrieval(query_vecs, query_names: Sequence[str], index: GlobalIndex, k: int,
                         exclude_self: bool = True, min_score: Optional[float] = None) -> List[Pair]:
    """Top-k database images for each query by global-descriptor similarity.

    Args:
        query_vecs: (Q, D) float32 global descriptors.
        query_names: Q names.
        index: the database :class:`GlobalIndex`.
        k: neighbours per query (fewer if the index is smaller).
        exclude_self: drop a database image with the query's own name (map-to-map pairs).
        min_score: drop neighbours scoring below this similarity.
    Returns:
        (query, db) pairs, best first per query.
    """
    query_names = list(query_names)
    q = np.asarray(query_vecs)
    if q.ndim != 2 or q.shape[0] != len(query_names):
        raise ValueError(f"query_vecs must be (Q={len(query_names)}, D), got {q.shape}")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    scores, names = index.search(q, k + 1 if exclude_self else k)
    pairs = []
    for qn, row_s, row_n in zip(query_names, scores, names):
        kept = 0
        for s, dn in zip(row_s, row_n):
            if kept == k:
                break
            if (exclude_self and dn == qn) or (min_score is not None and s < min_score):
                continue
            pairs.append((qn, dn))
            kept += 1
    return pairs


def covisibility_counts(reconstruction) -> Dict[int, Dict[int, int]]:
    """Number of 3D points shared by each pair of registered images.

    Args:
        reconstruction: ``pycolmap.Reconstruction``.
    Returns:
        {image_id: {other_image_id: count}}.
    """
    counts: Dict[int, Dict[int, int]] = defaultdict(lambda: defaultdict(int))
    for p3d in reconstruction.points3D.values():
        ids = sorted({el.image_id for el in p3d.track.elements})
        for a in range(len(ids)):
            for b in range(a + 1, len(ids)):
                counts[ids[a]][ids[b]] += 1
                counts[ids[b]][ids[a]] += 1
    return counts


def pairs_from_covisibility(reconstruction, k: int) -> List[Pair]:
    """For each image, the k images sharing the most 3D points with it (ties by name).

    Images sharing no point are never paired. Returns (image, covisible) pairs.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    counts = covisibility_counts(reconstruction)
    names = {i: img.name for i, img in reconstruction.images.items()}
    pairs = []
    for image_id in sorted(names, key=names.get):
        others = counts.get(image_id, {})
        best = sorted(others.items(), key=lambda kv: (-kv[1], names[kv[0]]))[:k]
        pairs += [(names[image_id], names[j]) for j, _ in best]
    if not pairs:
        logger.warning("pairs_from_covisibility: the reconstruction has no shared 3D points")
    return pairs


def _poses_to_arrays(poses) -> Tuple[List[str], np.ndarray, np.ndarray]:
    """Names, centres (N, 3) and viewing directions (N, 3) in the world frame."""
    from ..geometry import Pose

    if hasattr(poses, "images") and hasattr(poses, "names"):  # Scene
        items = [(im.name, im.pose) for im in poses.images if im.pose is not None]
    elif isinstance(poses, Mapping):
        items = list(poses.items())
    else:
        raise TypeError(f"poses must be a Scene or a dict name -> Pose, got {type(poses).__name__}")
    if not items:
        raise ValueError("pairs_from_poses: no posed images")
    names = [n for n, _ in items]
    R = torch.stack([p.R.reshape(3, 3).double() for _, p in items])
    t = torch.stack([p.t.reshape(3).double() for _, p in items])
    pose = Pose(R, t)
    centers = pose.center.cpu().numpy()
    dirs = R[:, 2, :].cpu().numpy()  # optical axis in world: R^T e_z
    return names, centers, dirs


def pairs_from_poses(poses, k: int, rotation_threshold_deg: float = 30.0,
                     query_names: Optional[Sequence[str]] = None) -> List[Pair]:
    """Nearest camera centres among views looking in a similar direction (hloc's idea).

    Args:
        poses: a :class:`~hloc_bpnp.io.Scene` (images with poses) or ``{name: Pose}``
            (cam_from_world).
        k: pairs per image.
        rotation_threshold_deg: only pair views whose optical axes differ by less than this.
        query_names: images to find partners for (default: all); partners are all others.
    Returns:
        (image, neighbour) pairs, nearest first per image.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    names, centers, dirs = _poses_to_arrays(poses)
    idx = {n: i for i, n in enumerate(names)}
    queries = names if query_names is None else list(query_names)
    missing = [n for n in queries if n not in idx]
    if missing:
        raise KeyError(f"pairs_from_poses: no pose for {missing[:5]}")
    qi = np.array([idx[n] for n in queries], dtype=np.int64)
    dist = np.linalg.norm(centers[qi, None] - centers[None], axis=-1)
    cosang = np.clip(dirs[qi] @ dirs.T, -1.0, 1.0)
    ok = np.degrees(np.arccos(cosang)) < rotation_threshold_deg
    ok[np.arange(len(qi)), qi] = False
    dist = np.where(ok, dist, np.inf)
    pairs = []
    for row, q in enumerate(queries):
        order = np.argsort(dist[row], kind="stable")[:k]
        pairs += [(q, names[j]) for j in order if np.isfinite(dist[row, j])]
    return pairs


def write_pairs(path: Union[str, Path], pairs: Sequence[Pair]) -> Path:
    """Write pairs in hloc's text format via :mod:`hloc_bpnp.io.hloc_text`."""
    from ..io.hloc_text import write_pairs as _write

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _write(path, list(pairs))
    logger.info("Wrote %d pairs to %s", len(pairs), path)
    return path
