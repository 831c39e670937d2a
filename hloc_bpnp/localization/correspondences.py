"""2D-3D correspondences from query-to-keyframe matches, and covisibility clustering.

A query keypoint matched to keypoints of several keyframes may reach several 3D points; all
distinct (keypoint, 3D point) candidates are kept (RANSAC sorts them out), each with the best
match score seen for it, which becomes its correspondence weight in the BPnP refinement.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Sequence

import numpy as np


@dataclass
class Correspondences:
    """Candidate 2D-3D correspondences of one query.

    Attributes:
        query_idx: (M,) index of the query keypoint.
        point_idx: (M,) row in the map's ``points3D``.
        weight: (M,) match score (max over keyframes giving the same pair).
        frames: (M, ceil(K / 8)) uint8 packed bit sets of the retrieved keyframes (indices
            into the list of K keyframes) that produced each pair: keyframe j is bit ``j % 8``
            of byte ``j // 8`` (any K). None unless ``gather_2d3d(..., with_frames=True)``;
            query it with :meth:`from_keyframes` / :meth:`keyframes_of`.
    """

    query_idx: np.ndarray
    point_idx: np.ndarray
    weight: np.ndarray
    frames: Optional[np.ndarray] = None

    def __len__(self) -> int:
        return len(self.query_idx)

    def select(self, mask: np.ndarray) -> "Correspondences":
        frames = None if self.frames is None else self.frames[mask]
        return Correspondences(self.query_idx[mask], self.point_idx[mask], self.weight[mask], frames)

    def _require_frames(self) -> np.ndarray:
        if self.frames is None:
            raise ValueError("These correspondences carry no keyframe sets: build them with "
                             "gather_2d3d(..., with_frames=True)")
        return self.frames

    def from_keyframes(self, keyframes: Sequence[int]) -> np.ndarray:
        """(M,) bool: the pairs produced by at least one of ``keyframes`` (indices)."""
        frames = self._require_frames()
        want = np.zeros(frames.shape[1], dtype=np.uint8)
        for j in keyframes:
            j = int(j)
            if not 0 <= j < 8 * frames.shape[1]:
                raise IndexError(f"keyframe index {j} out of range for {8 * frames.shape[1]} bits")
            want[j >> 3] |= np.uint8(1 << (j & 7))
        return (frames & want).any(1)

    def keyframes_of(self, i: int) -> List[int]:
        """Indices of the keyframes that produced pair ``i``."""
        bits = np.unpackbits(self._require_frames()[i], bitorder="little")
        return np.nonzero(bits)[0].tolist()


def gather_2d3d(
    matches: Sequence[np.ndarray],
    scores: Sequence[np.ndarray],
    kp_to_point: Sequence[np.ndarray],
    with_frames: bool = False,
) -> Correspondences:
    """Collect distinct (query keypoint, 3D point) pairs over the retrieved keyframes.

    Args:
        matches: per keyframe j, (Nq,) int array: ``matches[j][i]`` is the keypoint of
            keyframe j matched to query keypoint i, or -1.
        scores: per keyframe, (Nq,) match scores.
        kp_to_point: per keyframe, (N_j,) int array: keypoint -> row in points3D or -1.
        with_frames: also record which keyframes produced each pair (``frames``, packed
            bits, any number of keyframes), for covisibility clustering.
    Returns:
        :class:`Correspondences` (vectorised; no Python loop over matches).
    """
    if not (len(matches) == len(scores) == len(kp_to_point)):
        raise ValueError(
            f"gather_2d3d: got {len(matches)} match arrays, {len(scores)} score arrays and "
            f"{len(kp_to_point)} lookups; they must be per keyframe and equal in number"
        )
    nbytes = max(1, (len(matches) + 7) // 8)
    q_all, p_all, w_all, f_all = [], [], [], []
    for j, (m, s, lut) in enumerate(zip(matches, scores, kp_to_point)):
        m = np.asarray(m)
        q = np.nonzero(m >= 0)[0]
        if len(q) == 0:
            continue
        p = lut[m[q]]
        keep = p >= 0
        q_all.append(q[keep])
        p_all.append(p[keep])
        w_all.append(np.asarray(s, dtype=np.float64)[q[keep]])
        f_all.append(np.full(keep.sum(), j, dtype=np.int64))
    empty_frames = np.zeros((0, nbytes), dtype=np.uint8) if with_frames else None
    if not q_all:
        e = np.zeros(0, dtype=np.int64)
        return Correspondences(e, e.copy(), np.zeros(0), empty_frames)
    q = np.concatenate(q_all)
    p = np.concatenate(p_all)
    w = np.concatenate(w_all)
    f = np.concatenate(f_all)
    if len(q) == 0:
        return Correspondences(q, p, w, empty_frames)
    key = q.astype(np.int64) * (int(p.max()) + 1) + p
    uniq, inv = np.unique(key, return_inverse=True)
    inv = inv.reshape(-1)
    w_best = np.full(len(uniq), -np.inf)
    np.maximum.at(w_best, inv, w)
    frames = None
    if with_frames:
        frames = np.zeros((len(uniq), nbytes), dtype=np.uint8)
        np.bitwise_or.at(frames, (inv, f >> 3), np.left_shift(1, f & 7).astype(np.uint8))
    first = np.zeros(len(uniq), dtype=np.int64)
    first[inv[::-1]] = np.arange(len(inv))[::-1]
    return Correspondences(q[first], p[first], w_best, frames)


def covisibility_clusters(point_sets: Sequence[np.ndarray]) -> List[List[int]]:
    """Connected components of the retrieved keyframes under 'shares a 3D point'.

    Args:
        point_sets: per keyframe, the array of 3D point rows it observes.
    Returns:
        clusters as lists of keyframe indices, largest (by number of frames) first.
    """
    n = len(point_sets)
    parent = list(range(n))

    def find(a):
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    sets = [np.unique(np.asarray(s)) for s in point_sets]
    for i in range(n):
        for j in range(i + 1, n):
            if len(sets[i]) and len(sets[j]) and np.intersect1d(sets[i], sets[j], assume_unique=True).size:
                parent[find(i)] = find(j)
    groups = {}
    for i in range(n):
        groups.setdefault(find(i), []).append(i)
    return sorted(groups.values(), key=lambda g: (-len(g), g[0]))
