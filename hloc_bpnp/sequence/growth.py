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
4. the keyframe, its observations and new points are appended to the
   :class:`~hloc_bpnp.mapping.Map` in place (reconstruction, lookups, covisibility and the
   global retrieval index), at a cost independent of the map's size, so retrieval
   (relocalization) and covisibility see the new keyframe.

The prebuilt part of the map is never moved.
"""
from __future__ import annotations

import logging
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch

from ..features.feature_dict import as_numpy
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
    # the mapping thread (sequence/mapping_thread.py)
    "threaded": True,             # False: insert inline (deterministic; tests, debugging)
    "max_queue": 2,               # keyframes waiting; a busy mapper makes the tracker skip one
    "torch_threads": 1,           # the mapping thread's torch threads (2 cores: one each)
    # ... while the tracker waits for it (drain, or a keyframe it waits for): the tracker's
    # cores are idle; 0 = the tracker's own torch thread count
    "torch_threads_waited": 0,
    # a keyframe this new (share of its textured cells without a tracked point) makes the
    # tracker wait for its insertion: the camera outruns the map (a video at a low frame rate,
    # fast turns) and the next frame needs its points; at video rate views change slowly
    "wait_novelty": 0.5,
    # ... as does a keyframe after a turn of this share of the image side per frame (rotation
    # x focal / side: 10 deg per frame at f = 250 px and 320 px is 0.14; 30-Hz hand-held
    # video turns ~0.01)
    "wait_flow": 0.05,
    # keyframes of frames tracked with lighter features (tracking.features) are extracted again
    # with the map's extractor on the mapping thread; tracking inliers move to the nearest new
    # keypoint within reextract_max_px (false: keyframes keep the tracking features)
    "reextract": True,
    "reextract_max_px": 2.0,
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


def _project(camera: Camera, pose: Pose, X: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """(M, 2) pixels and (M,) depths of world points."""
    pc = pose.transform(torch.as_tensor(X, dtype=torch.float64))
    uv = camera.to(torch.float64).project(pc)
    return uv.cpu().numpy(), pc[:, 2].cpu().numpy()


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
    centers = np.stack([p.center.cpu().numpy() for p in poses])
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


def weigh_triangulated(tri, kpts: Sequence[np.ndarray], sigmas: Sequence[np.ndarray], cameras: Sequence[Camera],
                        poses: Sequence[Pose], iterations: int = 5):
    """The triangulated points (``_triangulate``'s (xyz, track) list) re-solved by Gauss-Newton with
    weights ``1 / sigma^2`` of their observations' keypoint sigmas, poses fixed (the map
    builder's ``triangulation_weights``, shared solve)."""
    from ..mapping.point_triangulation import retriangulate

    obs = [(i, v, k) for i, (_, track) in enumerate(tri) for v, k in track]
    row = torch.tensor([o[0] for o in obs], dtype=torch.long)
    img = np.array([o[1] for o in obs], np.int64)
    uv = torch.as_tensor(np.stack([kpts[v][k] for _, v, k in obs]), dtype=torch.float64)
    w = torch.as_tensor([1.0 / float(sigmas[v][k]) ** 2 for _, v, k in obs], dtype=torch.float64)
    xyz = torch.as_tensor(np.stack([x for x, _ in tri]), dtype=torch.float64)
    cams = {v: c.to(torch.float64) for v, c in enumerate(cameras)}
    pos = {v: p.to(torch.float64) for v, p in enumerate(poses)}
    X, _ = retriangulate(xyz, row, img, uv, cams, pos, iterations, weights=w)
    return [(x, track) for x, (_, track) in zip(X.cpu().numpy(), tri)]


def insert_keyframe(map_, name: str, camera: Camera, pose: Pose, feats: Mapping[str, np.ndarray],
                    inlier_kp: np.ndarray, inlier_rows: np.ndarray, neighbours: Sequence[str], matcher,
                    conf: Mapping, global_vector: Optional[np.ndarray] = None) -> Dict:
    """Add a tracked frame to the map as a keyframe, in place; returns the insertion info.

    The work is proportional to the frame and its ``neighbours`` only, never to the map's
    size: matching and triangulation read the map, then one
    :meth:`~hloc_bpnp.mapping.Map.add_keyframe` call appends the keyframe, its observations
    and its new points (under the map's lock).

    Args:
        map_: the :class:`~hloc_bpnp.mapping.Map` to grow.
        name: the frame's image name (must not be in the map).
        camera, pose: its Camera and tracked cam_from_world (held fixed).
        feats: its features (numpy, hloc keys).
        inlier_kp, inlier_rows: (M,) tracking inliers: keypoint index and ``points3D`` row.
        neighbours: keyframes to match for triangulation.
        matcher: a matcher with ``match_many`` (the map's).
        conf: :data:`default_conf`-like dict.
        global_vector: its global descriptor (default: encoded with the map's model).
    Returns:
        info with ``num_observations`` (tracked points), ``num_new_points``,
        ``num_extra_observations`` (matches to existing points), ``neighbours``.
    """
    from ..features.feature_dict import select_keypoints, to_torch
    from ..mapping.point_triangulation import weights_enabled

    if name in map_.features:
        raise ValueError(f"Frame {name!r} is already a map image")
    kpts = np.asarray(feats["keypoints"], np.float64)
    n = len(kpts)
    assigned = np.full(n, -1, np.int64)  # keypoint -> points3D row
    used_rows = set()
    with map_.lock:  # a consistent read of the points and the neighbours' tables
        points3D = map_.points3D
        neighbours = [nb for nb in neighbours if nb in map_.features][: max(int(conf["num_neighbours"]), 0)]
        nb_tables = [map_.kp_to_point[nb] for nb in neighbours]
        nb_feats = [map_.features[nb] for nb in neighbours]
        nb_cams = [map_.camera(nb) for nb in neighbours]
        nb_poses = [map_.pose(nb) for nb in neighbours]

    # 1. tracking inliers -> observations (one keypoint per 3D point, the best reprojection)
    inlier_kp = np.asarray(inlier_kp, np.int64)
    inlier_rows = np.asarray(inlier_rows, np.int64)
    if len(inlier_kp):
        uv, _ = _project(camera, pose, points3D[inlier_rows])
        err = np.linalg.norm(uv - kpts[inlier_kp], axis=1)
        for j in np.argsort(err):
            r, k = int(inlier_rows[j]), int(inlier_kp[j])
            if r in used_rows or assigned[k] >= 0:
                continue
            assigned[k] = r
            used_rows.add(r)
    n_obs = int((assigned >= 0).sum())

    # 2. match the free keypoints to the neighbours
    free = np.flatnonzero(assigned < 0)
    tracks: Dict[int, List[Tuple[int, int]]] = {}
    extra = 0
    if neighbours and len(free):
        matches = matcher.match_many(to_torch(select_keypoints(feats, free)), [to_torch(f) for f in nb_feats])
        taken = [set() for _ in neighbours]
        for v, (rows_nb, m) in enumerate(zip(nb_tables, matches), start=1):
            m0 = as_numpy(m["matches0"])
            q_all = np.flatnonzero(m0 >= 0)
            # reprojection error in this frame of the neighbour's matched points (one batch)
            with_pt = q_all[rows_nb[m0[q_all]] >= 0]
            consistent = {}
            if len(with_pt):
                uv, z = _project(camera, pose, points3D[rows_nb[m0[with_pt]]])
                ok = (z > 0) & (np.linalg.norm(uv - kpts[free[with_pt]], axis=1) <= conf["max_reprojection_px"])
                consistent = dict(zip(with_pt.tolist(), ok.tolist()))
            for qi in q_all.tolist():
                k, j = int(free[qi]), int(m0[qi])
                if j in taken[v - 1]:
                    continue
                if rows_nb[j] >= 0:  # the neighbour's keypoint has a point: observe it if consistent
                    if assigned[k] >= 0 or k in tracks:
                        continue
                    r = int(rows_nb[j])
                    if r in used_rows:
                        continue
                    if consistent[qi]:
                        assigned[k] = r
                        used_rows.add(r)
                        taken[v - 1].add(j)
                        extra += 1
                    continue
                if assigned[k] >= 0:
                    continue
                tracks.setdefault(k, [(0, k)]).append((v, j))
                taken[v - 1].add(j)
    views_kpts = [kpts] + [np.asarray(f["keypoints"], np.float64) for f in nb_feats]
    tri = _triangulate(list(tracks.values()), views_kpts, [camera] + nb_cams, [pose] + nb_poses, conf)
    if tri and weights_enabled(map_.conf, dict(zip([name] + list(neighbours), [feats] + nb_feats))):
        tri = weigh_triangulated(tri, views_kpts, [np.asarray(f["sigmas"], np.float64) for f in [feats] + nb_feats],
                                  [camera] + nb_cams, [pose] + nb_poses)

    # 3. one in-place insertion into the map
    view_names = [name] + list(neighbours)
    obs_kp = np.flatnonzero(assigned >= 0)
    new_xyz = np.array([xyz for xyz, _ in tri], np.float64).reshape(-1, 3)
    new_tracks = [[(view_names[v], int(k)) for v, k in track] for _, track in tri]
    new_rows = map_.add_keyframe(name, camera, pose, feats, obs_kp, assigned[obs_kp], new_xyz, new_tracks,
                                 global_vector=global_vector)
    if conf.get("local_ba") and len(new_rows):
        local_bundle_adjustment(map_, name, new_rows)
    return {"num_observations": n_obs, "num_extra_observations": extra, "num_new_points": len(new_rows),
            "num_candidate_tracks": len(tracks), "neighbours": list(neighbours)}


def local_bundle_adjustment(map_, name: str, rows: Sequence[int]) -> None:
    """pycolmap BA of one keyframe's pose and the given new points (``points3D`` rows); every
    other pose, every other 3D point and all intrinsics are held constant. Updates the map in
    place (under its lock)."""
    import pycolmap

    with map_.lock:
        rec = map_.reconstruction
        image_id = map_._image(name).image_id
        point_ids = [int(map_.point3D_ids[r]) for r in rows]
        new = set(point_ids)
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
        map_.update_points(np.asarray(rows, np.int64), np.stack([rec.points3D[p].xyz for p in point_ids]))
        map_.set_pose(name, Pose.from_pycolmap(rec.images[image_id].cam_from_world()))
