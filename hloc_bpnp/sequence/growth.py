"""Map growth for sequence mode: a tracked frame becomes a keyframe of the map.

:func:`insert_keyframe` adds the frame (pose fixed at its tracked estimate) to the map's
pycolmap reconstruction:

1. its tracking inliers become observations of the existing 3D points (one keypoint per point);
2. its keypoints without a 3D point are matched to neighbouring keyframes (covisible map
   images and the most recent inserted keyframes); each match to a keypoint that has a 3D point
   adds an observation when that point reprojects within ``max_reprojection_px``; matches
   between two keypoints without a point are triangulated with both poses fixed by pycolmap's
   LO-RANSAC multi-view triangulation (``pycolmap.estimate_triangulation``), keeping points in
   front of both cameras, within ``max_reprojection_px`` in every view and with a triangulation
   angle of at least ``min_triangulation_angle_deg``;
3. optionally (``local_ba``) a pycolmap bundle adjustment of the new keyframe's pose and its
   new points only: every other pose, every other point and all intrinsics are held fixed;
4. the :class:`~hloc_bpnp.mapping.Map` lookups and the global retrieval index are rebuilt, so
   retrieval (relocalization) and covisibility see the new keyframe.

The prebuilt part of the map is never moved.
"""
from __future__ import annotations

import logging
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch

from ..geometry import Camera, Pose

logger = logging.getLogger(__name__)

default_conf = {
    "enabled": True,
    # a tracked frame becomes a keyframe when this share of its textured image cells (an
    # 8 x 6 grid over cells holding keypoints) has no tracked map point: it sees new area
    "min_novelty": 0.25,
    "min_frames_between": 1,      # tracked frames between two insertions
    "num_neighbours": 3,          # keyframes matched for triangulation
    "num_recent": 2,              # of which the most recent inserted keyframes
    "min_triangulation_angle_deg": 1.5,
    "max_reprojection_px": 4.0,
    "local_ba": False,            # pycolmap BA of the new keyframe and its new points
}


def image_novelty(keypoints: np.ndarray, tracked: np.ndarray, image_size: Tuple[int, int],
                  grid: Tuple[int, int] = (8, 6)) -> float:
    """Share of the grid cells holding keypoints that hold no tracked keypoint.

    Args:
        keypoints: (N, 2) pixels; tracked: (N,) bool; image_size: (W, H).
    """
    if len(keypoints) == 0:
        return 0.0
    W, H = image_size
    gx = np.clip((keypoints[:, 0] / max(W, 1) * grid[0]).astype(int), 0, grid[0] - 1)
    gy = np.clip((keypoints[:, 1] / max(H, 1) * grid[1]).astype(int), 0, grid[1] - 1)
    cell = gy * grid[0] + gx
    textured = np.unique(cell)
    covered = np.unique(cell[tracked])
    return float(1.0 - len(covered) / max(len(textured), 1))


class GlobalVectors:
    """Cache of global descriptors of map images, to rebuild the retrieval index on growth."""

    def __init__(self, global_model):
        self.global_model = global_model
        self._vecs: Dict[str, np.ndarray] = {}

    def get(self, name: str, feats: Mapping) -> np.ndarray:
        if name not in self._vecs:
            self._vecs[name] = np.asarray(self.global_model.encode(feats), np.float32).reshape(-1)
        return self._vecs[name]

    def index_for(self, features: Mapping[str, Mapping], map_conf: Mapping, names: Sequence[str]):
        """A :class:`~hloc_bpnp.retrieval.index.GlobalIndex` over ``names`` (in that order)."""
        from ..mapping.map import _index_conf
        from ..retrieval.index import GlobalIndex

        vecs = np.stack([self.get(n, features[n]) for n in names])
        index = GlobalIndex(vecs.shape[1], _index_conf(map_conf))
        index.add(list(names), vecs)
        return index


def _project(camera: Camera, pose: Pose, X: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """(M, 2) pixels and (M,) depths of world points."""
    pc = pose.transform(torch.as_tensor(X, dtype=torch.float64))
    uv = camera.to(torch.float64).project(pc)
    return uv.numpy(), pc[:, 2].numpy()


def _triangulate(tracks: List[List[Tuple[int, int]]], kpts: Sequence[np.ndarray], cameras: Sequence[Camera],
                 poses: Sequence[Pose], conf: Mapping) -> List[Tuple[np.ndarray, List[Tuple[int, int]]]]:
    """Triangulate tracks of (view index, keypoint index) with fixed poses (pycolmap LO-RANSAC);
    returns (xyz (3,), inlier track) for the points passing the checks."""
    import pycolmap

    opts = pycolmap.EstimateTriangulationOptions()
    opts.min_tri_angle = float(np.deg2rad(conf["min_triangulation_angle_deg"]))
    opts.residual_type = pycolmap.TriangulationResidualType.REPROJECTION_ERROR
    opts.ransac.max_error = float(conf["max_reprojection_px"])
    opts.ransac.random_seed = 0
    pc_cams = [c.to_pycolmap() for c in cameras]
    rigids = [p.to_pycolmap() for p in poses]
    cand_xyz, cand_obs = [], []  # candidate points and their RANSAC-inlier observations
    for track in tracks:
        pts = np.array([kpts[v][k] for v, k in track], np.float64)
        ret = pycolmap.estimate_triangulation(pts, [rigids[v] for v, _ in track],
                                              [pc_cams[v] for v, _ in track], opts)
        if ret is None:
            continue
        xyz = np.asarray(ret["xyz"], np.float64).reshape(3)
        inl = np.asarray(ret["inliers"], bool).reshape(-1)
        kept = [tr for tr, ok in zip(track, inl) if ok]
        if len(kept) >= 2 and np.all(np.isfinite(xyz)):
            cand_xyz.append(xyz)
            cand_obs.append(kept)
    if not cand_xyz:
        return []
    # checks, vectorised per view: in front, within max_reprojection_px
    X = np.stack(cand_xyz)
    good = [[] for _ in cand_xyz]
    for v in range(len(cameras)):
        pairs = [(i, k) for i, obs in enumerate(cand_obs) for vv, k in obs if vv == v]
        if not pairs:
            continue
        idx = np.array([i for i, _ in pairs])
        kk = np.array([k for _, k in pairs])
        uv, z = _project(cameras[v], poses[v], X[idx])
        ok = (z > 0) & (np.linalg.norm(uv - kpts[v][kk], axis=1) <= conf["max_reprojection_px"])
        for i, k, o in zip(idx, kk, ok):
            if o:
                good[i].append((v, int(k)))
    centers = np.stack([p.center.numpy() for p in poses])
    min_angle = np.cos(np.deg2rad(conf["min_triangulation_angle_deg"]))
    out = []
    for xyz, obs in zip(X, good):
        if len(obs) < 2:
            continue
        rays = xyz - centers[[v for v, _ in obs]]
        rays /= np.linalg.norm(rays, axis=1, keepdims=True)
        if float((rays[1:] @ rays[0]).min()) > min_angle:  # every pair with view 0 too narrow
            continue
        out.append((xyz, obs))
    return out


def insert_keyframe(map_, name: str, camera: Camera, pose: Pose, feats: Mapping[str, np.ndarray],
                    inlier_kp: np.ndarray, inlier_rows: np.ndarray, neighbours: Sequence[str], matcher,
                    conf: Mapping, vectors: Optional[GlobalVectors] = None):
    """Add a tracked frame to the map as a keyframe; returns ``(new Map, info)``.

    Args:
        map_: the current :class:`~hloc_bpnp.mapping.Map` (left unchanged: a copy of its
            reconstruction is extended).
        name: the frame's image name (must not be in the map).
        camera, pose: its Camera and tracked cam_from_world (held fixed).
        feats: its features (numpy, hloc keys).
        inlier_kp, inlier_rows: (M,) tracking inliers: keypoint index and ``points3D`` row.
        neighbours: keyframes to match for triangulation.
        matcher: a matcher with ``match_many`` (the map's).
        conf: :data:`default_conf`-like dict.
        vectors: global-descriptor cache (created when None).
    Returns:
        (Map, info) with ``num_observations`` (tracked points), ``num_new_points``,
        ``num_extra_observations`` (matches to existing points), ``neighbours``.
    """
    import pycolmap

    from ..mapping.map import Map

    if name in map_.features:
        raise ValueError(f"Frame {name!r} is already a map image")
    rec = pycolmap.Reconstruction(map_.reconstruction)  # the given Map is left unchanged
    kpts = np.asarray(feats["keypoints"], np.float64)
    n = len(kpts)
    assigned = np.full(n, -1, np.int64)  # keypoint -> point3D id
    used_points = set()

    # 1. tracking inliers -> observations (one keypoint per 3D point, the best reprojection)
    inlier_kp = np.asarray(inlier_kp, np.int64)
    inlier_rows = np.asarray(inlier_rows, np.int64)
    if len(inlier_kp):
        uv, _ = _project(camera, pose, map_.points3D[inlier_rows])
        err = np.linalg.norm(uv - kpts[inlier_kp], axis=1)
        for j in np.argsort(err):
            pid = int(map_.point3D_ids[inlier_rows[j]])
            k = int(inlier_kp[j])
            if pid in used_points or assigned[k] >= 0:
                continue
            assigned[k] = pid
            used_points.add(pid)
    n_obs = int((assigned >= 0).sum())

    # 2. match the free keypoints to the neighbours
    from ..localization.localizer import _as_torch, _np

    neighbours = [nb for nb in neighbours if nb in map_.features][: max(int(conf["num_neighbours"]), 0)]
    free = np.flatnonzero(assigned < 0)
    tracks: Dict[int, List[Tuple[int, int]]] = {}
    extra = 0
    nb_cams = [map_.camera(nb) for nb in neighbours]
    nb_poses = [map_.pose(nb) for nb in neighbours]
    if neighbours and len(free):
        sub = {k: (v[free] if isinstance(v, np.ndarray) and v.ndim >= 1 and len(v) == n and k != "image_size"
                   else v) for k, v in feats.items()}
        matches = matcher.match_many(_as_torch(sub), [_as_torch(map_.features[nb]) for nb in neighbours])
        taken = [set() for _ in neighbours]
        for v, (nb, m) in enumerate(zip(neighbours, matches), start=1):
            m0 = np.asarray(_np(m["matches0"]))
            rows_nb = map_.kp_to_point[nb]
            q_all = np.flatnonzero(m0 >= 0)
            # reprojection error in this frame of the neighbour's matched points (one batch)
            with_pt = q_all[rows_nb[m0[q_all]] >= 0]
            consistent = {}
            if len(with_pt):
                uv, z = _project(camera, pose, map_.points3D[rows_nb[m0[with_pt]]])
                ok = (z > 0) & (np.linalg.norm(uv - kpts[free[with_pt]], axis=1) <= conf["max_reprojection_px"])
                consistent = dict(zip(with_pt.tolist(), ok.tolist()))
            for qi in q_all:
                k, j = int(free[qi]), int(m0[qi])
                if j in taken[v - 1]:
                    continue
                if rows_nb[j] >= 0:  # the neighbour's keypoint has a point: observe it if consistent
                    if assigned[k] >= 0 or k in tracks:
                        continue
                    pid = int(map_.point3D_ids[rows_nb[j]])
                    if pid in used_points:
                        continue
                    if consistent[int(qi)]:
                        assigned[k] = pid
                        used_points.add(pid)
                        taken[v - 1].add(j)
                        extra += 1
                    continue
                if assigned[k] >= 0:
                    continue
                tracks.setdefault(k, [(0, k)]).append((v, j))
                taken[v - 1].add(j)
    views_kpts = [kpts] + [np.asarray(map_.features[nb]["keypoints"], np.float64) for nb in neighbours]
    tri = _triangulate(list(tracks.values()), views_kpts, [camera] + nb_cams, [pose] + nb_poses, conf)

    # 3. write into the reconstruction
    cam = camera.to_pycolmap()
    cam.camera_id = max(rec.cameras.keys(), default=0) + 1
    rec.add_camera_with_trivial_rig(cam)
    image_id = max(rec.images.keys(), default=0) + 1
    img = pycolmap.Image(name=name, keypoints=kpts, camera_id=cam.camera_id, image_id=image_id)
    rec.add_image_with_trivial_frame(img, pose.to_pycolmap())
    for k in np.flatnonzero(assigned >= 0):
        rec.add_observation(int(assigned[k]), pycolmap.TrackElement(image_id, int(k)))
    nb_ids = [map_._image(nb).image_id for nb in neighbours]
    new_ids = []
    for xyz, track in tri:
        elems = [pycolmap.TrackElement(image_id if v == 0 else nb_ids[v - 1], int(k)) for v, k in track]
        new_ids.append(rec.add_point3D(xyz, pycolmap.Track(elems)))
    if conf.get("local_ba") and new_ids:
        local_bundle_adjustment(rec, image_id, new_ids)

    # 4. rebuild the lookups and the retrieval index
    features = dict(map_.features)
    features[name] = {k: np.asarray(v) for k, v in feats.items()}
    names = sorted(list(map_.image_names) + [name])
    vectors = vectors or GlobalVectors(map_.global_model)
    conf_map = dict(map_.conf)
    conf_map["sequence_keyframes"] = list(conf_map.get("sequence_keyframes", [])) + [name]
    new_map = Map.from_reconstruction(rec, features, conf_map, global_model=map_.global_model,
                                      global_index=vectors.index_for(features, conf_map, names))
    info = {"num_observations": n_obs, "num_extra_observations": extra, "num_new_points": len(new_ids),
            "num_candidate_tracks": len(tracks), "neighbours": list(neighbours)}
    return new_map, info


def local_bundle_adjustment(rec, image_id: int, point_ids: Sequence[int]) -> None:
    """pycolmap BA of one keyframe's pose and the given new points; every other pose, every
    other 3D point and all intrinsics are held constant."""
    import pycolmap

    new = set(int(p) for p in point_ids)
    cfg = pycolmap.BundleAdjustmentConfig()
    images = {image_id}
    for pid in new:
        for el in rec.points3D[pid].track.elements:
            images.add(int(el.image_id))
    for iid in images:
        cfg.add_image(iid)
        cfg.set_constant_cam_intrinsics(rec.images[iid].camera_id)
        if iid != image_id:
            cfg.set_constant_rig_from_world_pose(rec.images[iid].frame_id)
        for p2 in rec.images[iid].points2D:
            if p2.has_point3D() and int(p2.point3D_id) not in new:
                cfg.add_constant_point(int(p2.point3D_id))
    opts = pycolmap.BundleAdjustmentOptions()
    opts.refine_focal_length = False
    opts.refine_principal_point = False
    opts.refine_extra_params = False
    adjuster = pycolmap.create_default_bundle_adjuster(opts, cfg, rec)
    adjuster.solve()
