"""2D-3D correspondences from query-to-keyframe matches, and covisibility clustering.

A query keypoint matched to keypoints of several keyframes may reach several 3D points; all
distinct (keypoint, 3D point) candidates are kept (RANSAC sorts them out), each with the best
match score seen for it, which becomes its correspondence weight in the BPnP refinement.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Sequence

import numpy as np


@dataclass
class Correspondences:
    """Candidate 2D-3D correspondences of one query.

    Attributes:
        query_idx: (M,) index of the query keypoint.
        point_idx: (M,) row in the map's ``points3D``.
        weight: (M,) match score (max over keyframes giving the same pair).
        frames: (M,) bit set of the retrieved keyframes (indices into the retrieval list)
            that produced the pair, as an int64 bit mask (k <= 63).
    """

    query_idx: np.ndarray
    point_idx: np.ndarray
    weight: np.ndarray
    frames: np.ndarray

    def __len__(self) -> int:
        return len(self.query_idx)

    def select(self, mask: np.ndarray) -> "Correspondences":
        return Correspondences(self.query_idx[mask], self.point_idx[mask], self.weight[mask], self.frames[mask])


def gather_2d3d(
    matches: Sequence[np.ndarray],
    scores: Sequence[np.ndarray],
    kp_to_point: Sequence[np.ndarray],
) -> Correspondences:
    """Collect distinct (query keypoint, 3D point) pairs over the retrieved keyframes.

    Args:
        matches: per keyframe j, (Nq,) int array: ``matches[j][i]`` is the keypoint of
            keyframe j matched to query keypoint i, or -1.
        scores: per keyframe, (Nq,) match scores.
        kp_to_point: per keyframe, (N_j,) int array: keypoint -> row in points3D or -1.
    Returns:
        :class:`Correspondences` (vectorised; no Python loop over matches).
    """
    if not (len(matches) == len(scores) == len(kp_to_point)):
        raise ValueError(
            f"gather_2d3d: got {len(matches)} match arrays, {len(scores)} score arrays and "
            f"{len(kp_to_point)} lookups; they must be per keyframe and equal in number"
        )
    if len(matches) > 63:
        raise ValueError(f"gather_2d3d supports at most 63 keyframes, got {len(matches)}")
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
        f_all.append(np.full(keep.sum(), 1 << j, dtype=np.int64))
    if not q_all:
        e = np.zeros(0, dtype=np.int64)
        return Correspondences(e, e.copy(), np.zeros(0), e.copy())
    q = np.concatenate(q_all)
    p = np.concatenate(p_all)
    w = np.concatenate(w_all)
    f = np.concatenate(f_all)
    if len(q) == 0:
        return Correspondences(q, p, w, f)
    key = q.astype(np.int64) * (int(p.max()) + 1) + p
    uniq, inv = np.unique(key, return_inverse=True)
    w_best = np.full(len(uniq), -np.inf)
    np.maximum.at(w_best, inv, w)
    frames = np.zeros(len(uniq), dtype=np.int64)
    np.bitwise_or.at(frames, inv, f)
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
