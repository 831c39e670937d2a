"""The local map of a tracked frame, and ORB-SLAM's search by projection.

The local map is the set of 3D points seen by a few keyframes around the camera (those
observing the previous frame's inliers, and the most recently inserted ones), each with the
descriptor of its observation in the first of those keyframes that sees it.

:func:`search_by_projection` projects the local map with a predicted pose and matches each
point only against the frame keypoints within a search radius of its projection (a KD-tree
over the frame's keypoints, all in vectorised numpy): the best descriptor distance must be
under ``max_distance`` and, where there is a second candidate, under ``ratio`` times its
distance; a keypoint claimed by several points keeps its best one. No nearest-neighbour
search against whole keyframes.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Sequence, Tuple

import numpy as np
import torch

from ..geometry import Camera, Pose


@dataclass
class LocalMap:
    """Points of a few keyframes, one entry per point.

    Attributes:
        rows: (M,) ``points3D`` rows; xyz: (M, 3) world points; descriptors: (M, D) float32;
        keyframes: the keyframes gathered.
    """

    rows: np.ndarray
    xyz: np.ndarray
    descriptors: np.ndarray
    keyframes: List[str]

    def __len__(self) -> int:
        return len(self.rows)


class LocalMapBuilder:
    """Gathers :class:`LocalMap` s from a :class:`~hloc_bpnp.mapping.Map`, caching each
    keyframe's (rows, descriptors) until the map changes that keyframe's points."""

    def __init__(self):
        self._cache: Dict[str, Tuple[int, np.ndarray, np.ndarray]] = {}

    def _keyframe(self, map_, name: str) -> Tuple[np.ndarray, np.ndarray]:
        version = map_.image_version(name)
        hit = self._cache.get(name)
        if hit is None or hit[0] != version:
            rows_all = map_.kp_to_point[name]
            kp = np.flatnonzero(rows_all >= 0)
            desc = np.asarray(map_.features[name]["descriptors"])[kp].astype(np.float32, copy=False)
            hit = self._cache[name] = (version, rows_all[kp], desc)
        return hit[1], hit[2]

    def build(self, map_, keyframes: Sequence[str]) -> LocalMap:
        """The local map of ``keyframes`` (held under the map's lock while reading it)."""
        rows, descs, kfs = [], [], []
        with map_.lock:
            for n in keyframes:
                if n not in map_.features:
                    continue
                r, d = self._keyframe(map_, n)
                rows.append(r)
                descs.append(d)
                kfs.append(n)
            pts = map_.points3D
            if not rows:
                return LocalMap(np.zeros(0, np.int64), np.zeros((0, 3)), np.zeros((0, 0), np.float32), [])
            rows = np.concatenate(rows)
            xyz = pts[rows]
        # one entry per point: the descriptor of its first keyframe (keyframes come sorted by
        # how many of the previous frame's points they see)
        _, first = np.unique(rows, return_index=True)
        first.sort()
        return LocalMap(rows[first], xyz[first], np.concatenate(descs)[first], kfs)


def project(camera: Camera, pose: Pose, xyz: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """(M, 2) COLMAP pixels and (M,) depths of world points (M, 3) under ``pose`` (numpy for
    pinhole cameras, the Camera model otherwise)."""
    xyz = np.asarray(xyz, np.float64)
    if camera.model in ("SIMPLE_PINHOLE", "PINHOLE"):
        p = camera.params.double().cpu().numpy()
        fx, fy, cx, cy = (p[0], p[0], p[1], p[2]) if camera.model == "SIMPLE_PINHOLE" else p[:4]
        pc = xyz @ pose.R.double().cpu().numpy().T + pose.t.double().cpu().numpy()
        z = pc[:, 2]
        with np.errstate(divide="ignore", invalid="ignore"):
            uv = np.stack([fx * pc[:, 0] / z + cx, fy * pc[:, 1] / z + cy], 1)
        return uv, z
    pc = pose.to(torch.float64).transform(torch.from_numpy(xyz))
    uv = camera.to(torch.float64).project(pc)
    return uv.cpu().numpy(), pc[:, 2].cpu().numpy()


def search_by_projection(keypoints: np.ndarray, descriptors: np.ndarray, tree, local: LocalMap,
                         uv: np.ndarray, depth: np.ndarray, image_size: Tuple[int, int], radius: float,
                         max_distance: float, ratio: float, max_candidates: int = 8
                         ) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Match the local map, projected at ``uv``, to the frame's keypoints near each projection.

    Args:
        keypoints: (N, 2) frame keypoints; descriptors: (N, D); tree: a
            ``scipy.spatial.cKDTree`` over ``keypoints``.
        local: the local map (M entries); uv: (M, 2) its projections; depth: (M,) its depths.
        image_size: (W, H); points projecting outside (or behind the camera) are skipped.
        radius: search radius in pixels; max_distance: largest L2 descriptor distance;
        ratio: best / second-best distance test among the candidates (1: off).
        max_candidates: keypoints considered per point (the nearest in the image).
    Returns:
        (query_idx (K,), rows (K,), distance (K,)): frame keypoint, ``points3D`` row and
        descriptor distance of each match; each keypoint and each point at most once.
    """
    W, H = image_size
    vis = (depth > 0) & (uv[:, 0] >= 0) & (uv[:, 0] <= W) & (uv[:, 1] >= 0) & (uv[:, 1] <= H)
    vis &= np.isfinite(uv).all(1)
    sel = np.flatnonzero(vis)
    empty = (np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0))
    if len(sel) == 0 or len(keypoints) == 0:
        return empty
    k = int(min(max_candidates, len(keypoints)))
    _, nn = tree.query(uv[sel], k=k, distance_upper_bound=radius)
    nn = nn.reshape(len(sel), k)
    valid = nn < len(keypoints)
    nn_safe = np.where(valid, nn, 0)
    d_pt = local.descriptors[sel]                                        # (S, D)
    d_kp = descriptors[nn_safe]                                          # (S, k, D)
    dist2 = (np.einsum("skd,skd->sk", d_kp, d_kp) + np.einsum("sd,sd->s", d_pt, d_pt)[:, None]
             - 2.0 * np.einsum("skd,sd->sk", d_kp, d_pt))
    dist = np.sqrt(np.maximum(dist2, 0.0))
    dist[~valid] = np.inf
    order = np.argsort(dist, axis=1)
    best = order[:, 0]
    d1 = dist[np.arange(len(sel)), best]
    d2 = dist[np.arange(len(sel)), order[:, 1]] if k > 1 else np.full(len(sel), np.inf)
    ok = (d1 <= max_distance) & ((d1 <= ratio * d2) | ~np.isfinite(d2))
    q = nn_safe[np.arange(len(sel)), best][ok]
    rows = local.rows[sel][ok]
    d1 = d1[ok]
    if len(q) == 0:
        return empty
    # one point per keypoint and one keypoint per point: keep the smallest distances
    o = np.argsort(d1, kind="stable")
    q, rows, d1 = q[o], rows[o], d1[o]
    _, first_q = np.unique(q, return_index=True)
    keep = np.zeros(len(q), bool)
    keep[first_q] = True
    q, rows, d1 = q[keep], rows[keep], d1[keep]
    _, first_r = np.unique(rows, return_index=True)
    return q[first_r], rows[first_r], d1[first_r]
