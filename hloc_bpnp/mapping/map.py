"""The in-memory map: COLMAP reconstruction + local features + 2D-3D lookups + global index.

All lookups are numpy arrays built once in :meth:`Map.from_reconstruction`:

- ``points3D`` (P, 3) / ``point3D_ids`` (P,): every 3D point, sorted by pycolmap id;
- ``kp_to_point[name]`` (N,): row into ``points3D`` of each keypoint of a map image, -1 if none;
- a CSR table point row -> observing images, for covisibility queries.

On disk (:meth:`Map.save` / :meth:`Map.load`)::

    MAPDIR/map.json            conf, versions, image names, statistics
    MAPDIR/sfm/                COLMAP model (binary)
    MAPDIR/features.h5         local features (FeatureStore, hloc layout)
    MAPDIR/global_model.npz    global descriptor model (VLAD)
    MAPDIR/global_index.faiss  FAISS index over the map images (+ .json with names)
    MAPDIR/point_normals.npz   optional: ``point3D_ids`` (K,) int64 and ``normals`` (K, 3) float64,
                               the surface normals of the points that have one (written when
                               any point has one: maps built with keypoint_adjustment ``plane``)
"""
from __future__ import annotations

import bisect
import json
import logging
import platform
import threading
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch

from ..features.feature_dict import to_numpy
from ..geometry import Camera, Pose

logger = logging.getLogger(__name__)

MAP_FORMAT_VERSION = 1
MAP_FILES = {
    "meta": "map.json",
    "model": "sfm",
    "features": "features.h5",
    "global_model": "global_model.npz",
    "global_index": "global_index.faiss",
}
# optional map files (absent: the map has none of that data)
MAP_OPTIONAL_FILES = {"point_normals": "point_normals.npz"}


def index_conf(conf: Mapping) -> Dict:
    retrieval = conf.get("retrieval") or {}
    return dict(retrieval.get("index", {"type": "flat"})) if isinstance(retrieval, Mapping) else {"type": "flat"}


class MapConfigMismatch(ValueError):
    """A saved map was built with another mapping config (or image set) than requested."""


def _json_normalized(x):
    return json.loads(json.dumps(x, default=str))


def config_differences(saved, requested, prefix: str = "") -> List[str]:
    """Dotted keys whose values differ between two (JSON-normalized) config trees, e.g.
    ``["features.max_num_keypoints (saved 4096, requested 2048)", "pairs.num_pairs ..."]``."""
    saved, requested = _json_normalized(saved), _json_normalized(requested)
    out: List[str] = []

    def walk(a, b, key):
        if isinstance(a, dict) and isinstance(b, dict):
            for k in sorted(set(a) | set(b), key=str):
                sub = f"{key}.{k}" if key else str(k)
                if k not in a:
                    out.append(f"{sub} (not in the saved map, requested {b[k]!r})")
                elif k not in b:
                    out.append(f"{sub} (saved {a[k]!r}, not requested)")
                else:
                    walk(a[k], b[k], sub)
        elif a != b:
            out.append(f"{key or '<root>'} (saved {a!r}, requested {b!r})")

    walk(saved, requested, prefix)
    return out


def check_saved_map_config(path, conf, image_names=None) -> None:
    """Raise :class:`MapConfigMismatch` unless the map folder ``path`` was built with the
    resolved mapping config ``conf`` (see ``build.resolved_mapping_config``) and, when given,
    from exactly ``image_names``. The message names the differing keys."""
    meta_path = Path(path) / MAP_FILES["meta"]
    try:
        meta = json.loads(meta_path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{meta_path}:{e.lineno}: invalid JSON: {e.msg}") from None
    problems = config_differences(meta.get("conf", {}), conf)
    if image_names is not None:
        saved_names, wanted = set(meta.get("image_names", [])), set(image_names)
        # a map registers a subset of the reference images; extra saved ones mean another scene
        extra = sorted(saved_names - wanted)
        if extra or not saved_names:
            problems.append(f"image_names ({len(extra)} saved map images are not reference images, "
                            f"e.g. {extra[:3]})")
    if problems:
        shown = "; ".join(problems[:12]) + (f"; ... ({len(problems) - 12} more)" if len(problems) > 12 else "")
        raise MapConfigMismatch(
            f"{meta_path}: the saved map does not match the requested mapping config; differing "
            f"keys: {shown}. Rebuild it (run without --reuse-map / reuse_map=False, or delete "
            f"{Path(path)})")


class Map:
    """A localization map. Build it with :meth:`from_reconstruction` (or the builders in
    :mod:`hloc_bpnp.mapping.build`), never by hand.

    Attributes:
        reconstruction: ``pycolmap.Reconstruction`` (registered images and 3D points).
        features: name -> feature dict (numpy): ``keypoints`` (N, 2) float32 COLMAP pixels,
            ``descriptors`` (N, D) float32, ``scores`` (N,), ``image_size`` (2,) = (W, H).
        image_names: registered map images, sorted.
        points3D: (P, 3) float64 world coordinates.
        point3D_ids: (P,) int64 pycolmap ids; row i <-> ``points3D[i]``.
        point_errors: (P,) float64 each point's mean track reprojection error as an angle
            (pixels / focal length, :func:`~hloc_bpnp.io.colmap.angular_point_errors`), NaN
            where unknown; BPnP's correspondence weights read it (``refinement.point_noise``).
        point_normals: (P, 3) float64 world unit normal of the surface at each point (facing
            the views that see it), NaN where unknown: from the map's plane refinement
            (``keypoint_adjustment.method: plane``); query patch alignment warps its templates
            with them (``patch_alignment.template_warp: plane``).
        kp_to_point: name -> (N,) int64 row into ``points3D``, -1 for untriangulated keypoints.
        global_model: object with ``encode(feats or descriptors) -> (Dg,) float32``.
        global_index: :class:`hloc_bpnp.retrieval.GlobalIndex` over ``image_names``.
        conf: the full configuration used to build the map.
    """

    def __init__(self, reconstruction, features, image_names, points3D, point3D_ids, kp_to_point,
                 global_model, global_index, conf, *, point_errors=None, point_normals=None, _obs_ptr=None,
                 _obs_image=None):
        self.reconstruction = reconstruction
        self.features = features
        self.image_names = list(image_names)
        # points: growable buffers (rows are stable: points are only ever appended)
        n = len(points3D)
        self._xyz = np.zeros((max(n, 16), 3), np.float64)
        self._xyz[:n] = points3D
        self._ids = np.zeros(max(n, 16), np.int64)
        self._ids[:n] = point3D_ids
        self._err = np.full(max(n, 16), np.nan)
        if point_errors is not None:
            if len(point_errors) != n:
                raise ValueError(f"Map: {len(point_errors)} point errors for {n} points")
            self._err[:n] = point_errors
        self._nrm = np.full((max(n, 16), 3), np.nan)
        if point_normals is not None:
            point_normals = np.asarray(point_normals, np.float64)
            if point_normals.shape != (n, 3):
                raise ValueError(f"Map: point normals must be ({n}, 3) for {n} points, got {point_normals.shape}")
            self._nrm[:n] = point_normals
        self._num_points = n
        self.kp_to_point = kp_to_point
        self.global_model = global_model
        self.global_index = global_index
        self.conf = conf
        # point row -> observing images: a CSR table over the points present at construction
        # (``_obs_image`` holds stable image indices, see ``_image_list``) plus, for the
        # observations added later by :meth:`add_keyframe`, a dict row -> [image index]
        n_base = n if _obs_ptr is None else len(_obs_ptr) - 1
        self._obs_ptr = _obs_ptr if _obs_ptr is not None else np.zeros(n_base + 1, np.int64)
        self._obs_image = _obs_image if _obs_image is not None else np.zeros(0, np.int64)
        self._obs_extra: Dict[int, List[int]] = {}
        self._image_list: List[str] = list(self.image_names)  # stable image index -> name (insertion order)
        self._name_to_idx = {nm: i for i, nm in enumerate(self._image_list)}
        self._image_by_name = {img.name: img for img in reconstruction.images.values()}
        self._image_version: Dict[str, int] = {}
        self._poses: Dict[str, Pose] = {}
        self._cameras: Dict[str, Camera] = {}
        self._next_camera_id = max(reconstruction.cameras.keys(), default=0) + 1
        self._next_image_id = max(reconstruction.images.keys(), default=0) + 1
        # held by writers (:meth:`add_keyframe`) and by readers that need a consistent view
        # across several calls (e.g. a localization while a mapping thread grows the map)
        self.lock = threading.RLock()
        self.version = 0  # incremented by every change

    @property
    def points3D(self) -> np.ndarray:
        """(P, 3) float64 world coordinates (a view; rows never move)."""
        return self._xyz[: self._num_points]

    @property
    def point3D_ids(self) -> np.ndarray:
        """(P,) int64 pycolmap ids, increasing; row i <-> ``points3D[i]``."""
        return self._ids[: self._num_points]

    @property
    def point_errors(self) -> np.ndarray:
        """(P,) float64 mean track reprojection error of each point, an angle (pixels / focal
        length; NaN where unknown). A view; rows never move."""
        return self._err[: self._num_points]

    @property
    def point_normals(self) -> np.ndarray:
        """(P, 3) float64 world unit surface normal of each point, NaN rows where unknown. A
        view; rows never move."""
        return self._nrm[: self._num_points]

    def image_version(self, name: str) -> int:
        """Changes whenever the keypoint -> point table of ``name`` changes (caches key on it)."""
        return self._image_version.get(name, 0)

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_reconstruction(cls, rec, features: Mapping[str, Mapping], conf: Optional[Mapping] = None,
                            global_model=None, global_index=None, point_normals=None) -> "Map":
        """Build the lookups (and fit/encode the global index) for a reconstruction.

        Args:
            rec: ``pycolmap.Reconstruction`` whose images' 2D points are the keypoints of
                ``features`` (same order and count).
            features: name -> feature dict (numpy or torch) for at least every registered
                image; other entries are dropped.
            conf: the build configuration; ``conf["retrieval"]`` (dict or preset name of
                ``configs/retrieval``) sets the global descriptor and index.
            global_model: a fitted model with ``encode``; default: fit VLAD on the map.
            global_index: a ready :class:`GlobalIndex` over the registered images (e.g. when
                loading); default: encode every map image with ``global_model``.
            point_normals: ``(point3D_ids (K,), normals (K, 3))``: surface normals of some of
                the reconstruction's points (e.g. :func:`~hloc_bpnp.mapping.keypoint_adjustment.
                adjust_keypoints`' ``stats["point_normals"]``); the others have none (NaN).
        Raises:
            KeyError: a registered image has no features.
            ValueError: its keypoint count differs from the model's 2D points; a normal of a
                point the reconstruction does not have, or not a finite nonzero vector.
        """
        from ..config import load_config
        from ..io.colmap import angular_point_errors, points_and_observations
        from ..retrieval.index import GlobalIndex
        from .global_model import build_global_model

        conf = dict(conf or {})
        if isinstance(conf.get("retrieval"), str) or conf.get("retrieval") is None:
            conf["retrieval"] = load_config("retrieval", conf.get("retrieval") or "vlad")
        registered = [img for img in rec.images.values() if img.has_pose]
        names = sorted(img.name for img in registered)
        if not names:
            raise ValueError("The reconstruction has no registered image")
        feats = {}
        for n in names:
            if n not in features:
                import difflib

                raise KeyError(f"No features for map image {n!r}; close: "
                               f"{difflib.get_close_matches(n, list(features), n=3)}")
            feats[n] = to_numpy(features[n], float32=True)

        mp = points_and_observations(rec)
        point3D_ids = mp.point3D_ids.astype(np.int64)
        points3D = mp.xyz.astype(np.float64)
        kp_to_point = {}
        obs_img, obs_row = [], []
        for i, n in enumerate(names):
            p3d = mp.images[n].point3D_ids
            nk = len(feats[n]["keypoints"])
            if len(p3d) != nk:
                raise ValueError(f"Image {n!r}: {nk} keypoints in features but {len(p3d)} 2D points in the model")
            rows = mp.index_of(p3d).astype(np.int64)
            kp_to_point[n] = rows
            valid = rows[rows >= 0]
            obs_img.append(np.full(len(valid), i, np.int64))
            obs_row.append(valid)
        obs_img = np.concatenate(obs_img) if obs_img else np.zeros(0, np.int64)
        obs_row = np.concatenate(obs_row) if obs_row else np.zeros(0, np.int64)
        order = np.argsort(obs_row, kind="stable")
        obs_ptr = np.concatenate([[0], np.cumsum(np.bincount(obs_row, minlength=len(point3D_ids)))]).astype(np.int64)

        if global_model is None:
            global_model = build_global_model(conf["retrieval"], feats)
        if global_index is None:
            vecs = np.stack([np.asarray(global_model.encode(feats[n]), np.float32) for n in names])
            global_index = GlobalIndex(vecs.shape[1], index_conf(conf))
            global_index.add(names, vecs)
        elif sorted(global_index.names) != names:
            raise ValueError("global_index names differ from the registered images of the reconstruction")
        normals = None if point_normals is None else _normals_by_row(point3D_ids, *point_normals)
        m = cls(rec, feats, names, points3D, point3D_ids, kp_to_point, global_model, global_index, conf,
                point_errors=angular_point_errors(rec, mp), point_normals=normals, _obs_ptr=obs_ptr,
                _obs_image=obs_img[order])
        logger.info("Map: %s", m.stats())
        return m

    # ------------------------------------------------------------------ growth
    def _append_points(self, xyz: np.ndarray, ids: np.ndarray, errors: Optional[np.ndarray] = None) -> np.ndarray:
        """Append points (amortised O(1) per point) with their angular ``errors`` (NaN when not
        given); returns their rows. Their ids must be increasing and above every id in the map
        (:meth:`rows_of` relies on it; pycolmap's new point ids are)."""
        n, q = self._num_points, len(xyz)
        ids = np.asarray(ids, np.int64)
        if q and (np.any(np.diff(ids) <= 0) or (n and ids[0] <= self._ids[n - 1])):
            raise ValueError(f"Map: new 3D point ids must increase past the map's last id {int(self._ids[n - 1]) if n else None}, "
                             f"got {ids[:5].tolist()}")
        if n + q > len(self._xyz):
            cap = max(2 * len(self._xyz), n + q)
            xyz_buf = np.zeros((cap, 3), np.float64)
            xyz_buf[:n] = self._xyz[:n]
            ids_buf = np.zeros(cap, np.int64)
            ids_buf[:n] = self._ids[:n]
            err_buf = np.full(cap, np.nan)
            err_buf[:n] = self._err[:n]
            nrm_buf = np.full((cap, 3), np.nan)
            nrm_buf[:n] = self._nrm[:n]
            self._xyz, self._ids, self._err, self._nrm = xyz_buf, ids_buf, err_buf, nrm_buf
        self._xyz[n:n + q] = xyz
        self._ids[n:n + q] = ids
        self._err[n:n + q] = np.nan if errors is None else errors
        self._nrm[n:n + q] = np.nan  # a new point has no fitted plane
        self._num_points = n + q  # published last: readers never see a row before its data
        return np.arange(n, n + q, dtype=np.int64)

    def add_keyframe(self, name: str, camera: Camera, pose: Pose, features: Mapping,
                     obs_keypoints: np.ndarray, obs_rows: np.ndarray,
                     new_xyz: Optional[np.ndarray] = None,
                     new_tracks: Sequence[Sequence[Tuple[str, int]]] = (),
                     global_vector: Optional[np.ndarray] = None) -> np.ndarray:
        """Insert an image with a fixed pose into the map, in place.

        The cost depends on the new image and the points it touches only, not on the map's
        size: nothing is copied or rebuilt (the reconstruction is extended, the lookups and
        the global index are appended to). Holds :attr:`lock` while writing.

        Args:
            name: the new image's name (not yet in the map).
            camera, pose: its Camera and ``cam_from_world``.
            features: its feature dict (numpy, hloc keys); ``keypoints`` (N, 2).
            obs_keypoints, obs_rows: (M,) its keypoints that observe existing points, and
                those points' rows (one keypoint per point, each point at most once).
            new_xyz: (Q, 3) new points; new_tracks: Q tracks of (image name, keypoint index)
                with the new image's own name for its observations; every keypoint used must
                have no point yet, and each image appears at most once per track.
            global_vector: (Dg,) its global descriptor (default: encoded with the map's model).
        Returns:
            (Q,) rows of the new points.
        Raises:
            ValueError: the name is already a map image, or a keypoint/point is already taken.
        """
        import pycolmap

        feats = to_numpy(features, float32=True)
        kpts = np.asarray(feats["keypoints"], np.float64)
        obs_keypoints = np.asarray(obs_keypoints, np.int64).reshape(-1)
        obs_rows = np.asarray(obs_rows, np.int64).reshape(-1)
        new_xyz = np.zeros((0, 3)) if new_xyz is None else np.asarray(new_xyz, np.float64).reshape(-1, 3)
        if len(new_xyz) != len(new_tracks):
            raise ValueError(f"{len(new_xyz)} new points but {len(new_tracks)} tracks")
        if global_vector is None:
            global_vector = np.asarray(self.global_model.encode(feats), np.float32).reshape(-1)
        with self.lock:
            new_err = self._track_errors(new_xyz, new_tracks, name, camera, pose, kpts)
            if name in self._name_to_idx:
                raise ValueError(f"Image {name!r} is already a map image")
            if len(obs_rows) and (obs_rows.min() < 0 or obs_rows.max() >= self._num_points):
                raise ValueError(f"add_keyframe({name!r}): observation rows out of range")
            if len(np.unique(obs_rows)) != len(obs_rows) or len(np.unique(obs_keypoints)) != len(obs_keypoints):
                raise ValueError(f"add_keyframe({name!r}): a point or keypoint is observed twice")
            rec = self.reconstruction
            cam = camera.to_pycolmap()
            cam.camera_id = self._next_camera_id
            self._next_camera_id += 1
            rec.add_camera_with_trivial_rig(cam)
            image_id = self._next_image_id
            self._next_image_id += 1
            rec.add_image_with_trivial_frame(
                pycolmap.Image(name=name, keypoints=kpts, camera_id=cam.camera_id, image_id=image_id),
                pose.to_pycolmap())
            idx = len(self._image_list)
            kp_rows = np.full(len(kpts), -1, np.int64)
            ids = self._ids
            for k, r in zip(obs_keypoints.tolist(), obs_rows.tolist()):
                rec.add_observation(int(ids[r]), pycolmap.TrackElement(image_id, k))
                kp_rows[k] = r
                self._obs_extra.setdefault(r, []).append(idx)
            # new points: pycolmap ids (increasing), then rows, then the keypoint tables
            image_ids = {nm: self._image_by_name[nm].image_id for tr in new_tracks for nm, _ in tr
                         if nm != name}
            new_ids = []
            for xyz, track, (ang, px) in zip(new_xyz, new_tracks, zip(*new_err)):
                elems = [pycolmap.TrackElement(image_id if nm == name else int(image_ids[nm]), int(k))
                         for nm, k in track]
                pid = int(rec.add_point3D(xyz, pycolmap.Track(elems)))
                rec.points3D[pid].error = float(px)
                new_ids.append(pid)
            rows = self._append_points(new_xyz, np.asarray(new_ids, np.int64), new_err[0])
            changed: Dict[str, np.ndarray] = {}
            for r, track in zip(rows.tolist(), new_tracks):
                obs = self._obs_extra.setdefault(r, [])
                for nm, k in track:
                    if nm == name:
                        kp_rows[int(k)] = r
                        obs.append(idx)
                    else:
                        if nm not in changed:  # copy on write: readers keep a consistent table
                            changed[nm] = self.kp_to_point[nm].copy()
                        changed[nm][int(k)] = r
                        obs.append(self._name_to_idx[nm])
            self.kp_to_point.update(changed)
            self.kp_to_point[name] = kp_rows
            self.features[name] = feats
            self._image_by_name[name] = rec.images[image_id]
            self._poses[name] = pose.to(torch.float64) if hasattr(pose, "to") else pose
            self._cameras[name] = camera
            self._image_list.append(name)
            self._name_to_idx[name] = idx
            bisect.insort(self.image_names, name)
            self.global_index.add([name], np.asarray(global_vector, np.float32).reshape(1, -1))
            for nm in list(changed) + [name]:
                self._image_version[nm] = self._image_version.get(nm, 0) + 1
            self.conf.setdefault("sequence_keyframes", []).append(name)
            self.version += 1
        return rows

    def _track_errors(self, xyz: np.ndarray, tracks, name: str, camera: Camera, pose: Pose,
                      kpts: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        """Mean reprojection error of each new point (Q, 3) over its track (``name`` is the image
        being added, with ``camera``, ``pose`` and keypoints ``kpts``): ``(angles (Q,), pixels
        (Q,))``, the angle being pixels / focal length per observation (as
        :attr:`point_errors`)."""
        from .point_triangulation import retriangulate

        views = sorted({nm for track in tracks for nm, _ in track})
        if not views:
            return np.zeros(len(tracks)), np.zeros(len(tracks))
        vid = {nm: i for i, nm in enumerate(views)}
        cams = {vid[nm]: (camera if nm == name else self.camera(nm)).to(torch.float64) for nm in views}
        poses = {vid[nm]: (pose if nm == name else self.pose(nm)).to(torch.float64) for nm in views}
        obs = [(j, vid[nm], int(k)) for j, track in enumerate(tracks) for nm, k in track]
        row = torch.tensor([o[0] for o in obs], dtype=torch.long)
        img = np.array([o[1] for o in obs], np.int64)
        uv = torch.as_tensor(np.stack([(kpts if views[v] == name else self.features[views[v]]["keypoints"])[k]
                                       for _, v, k in obs]), dtype=torch.float64)
        # the shared fixed-pose residuals (no Gauss-Newton step), averaged per point
        _, r = retriangulate(torch.as_tensor(xyz, dtype=torch.float64), row, img, uv, cams, poses, 0)
        focal = torch.tensor([float(cams[v].f.double().mean()) for v in img.tolist()], dtype=torch.float64)
        count = torch.bincount(row, minlength=len(tracks)).clamp_min(1).double()
        px = torch.zeros(len(tracks), dtype=torch.float64).index_add_(0, row, r) / count
        ang = torch.zeros(len(tracks), dtype=torch.float64).index_add_(0, row, r / focal) / count
        return ang.cpu().numpy(), px.cpu().numpy()

    def set_pose(self, name: str, pose: Pose) -> None:
        """Move a map image (e.g. after a local bundle adjustment)."""
        with self.lock:
            img = self._image(name)
            img.frame.rig_from_world = pose.to_pycolmap()
            self._poses[name] = pose
            self.version += 1

    def update_points(self, rows: np.ndarray, xyz: np.ndarray) -> None:
        """Move points (e.g. after a local bundle adjustment) in the lookups and the
        reconstruction. rows (Q,), xyz (Q, 3). Their :attr:`point_errors` stay those of their
        triangulation, and their :attr:`point_normals` those of their planes (a local bundle
        adjustment moves a point along the surface's scale of its errors, not the surface)."""
        rows = np.asarray(rows, np.int64)
        xyz = np.asarray(xyz, np.float64).reshape(-1, 3)
        with self.lock:
            for r, x in zip(rows.tolist(), xyz):
                self.reconstruction.points3D[int(self._ids[r])].xyz = x
            self._xyz[rows] = xyz
            self.version += 1

    # ------------------------------------------------------------------ queries
    def _image(self, name: str):
        img = self._image_by_name.get(name)
        if img is None or name not in self._name_to_idx:
            import difflib

            raise KeyError(f"Image {name!r} is not a registered map image; close matches: "
                           f"{difflib.get_close_matches(name, self.image_names, n=3)}")
        return img

    def camera(self, name: str) -> Camera:
        """Intrinsics of a map image (unbatched, float64)."""
        cam = self._cameras.get(name)
        if cam is None:
            img = self._image(name)
            cam = self._cameras[name] = Camera.from_pycolmap(self.reconstruction.cameras[img.camera_id])
        return cam

    def pose(self, name: str) -> Pose:
        """``cam_from_world`` of a map image (unbatched, float64)."""
        pose = self._poses.get(name)
        if pose is None:
            pose = self._poses[name] = Pose.from_pycolmap(self._image(name).cam_from_world())
        return pose

    def covisible_images(self, name: str, min_shared: int = 1) -> List[str]:
        """Map images sharing at least ``min_shared`` 3D points with ``name`` (itself
        excluded), sorted by the number of shared points (descending, ties by name)."""
        self._image(name)
        rows = self.kp_to_point[name]
        return [n for n, _ in self.images_observing(rows, min_shared, exclude=name)]

    def images_observing(self, rows: np.ndarray, min_count: int = 1, exclude: Optional[str] = None) -> List[tuple]:
        """Map images observing the given ``points3D`` rows: ``[(name, count), ...]`` sorted
        by the number of those points they observe (descending, ties by name), ``exclude``
        left out."""
        rows = np.unique(np.asarray(rows, np.int64))
        rows = rows[(rows >= 0) & (rows < self._num_points)]
        if len(rows) == 0:
            return []
        counts = np.zeros(len(self._image_list), np.int64)
        base = rows[rows < len(self._obs_ptr) - 1]
        if len(base):
            starts, ends = self._obs_ptr[base], self._obs_ptr[base + 1]
            lens = ends - starts
            flat = np.repeat(starts - np.cumsum(np.concatenate([[0], lens[:-1]])), lens) + np.arange(lens.sum())
            counts += np.bincount(self._obs_image[flat], minlength=len(self._image_list))
        if self._obs_extra:
            extra = [i for r in rows.tolist() for i in self._obs_extra.get(r, ())]
            if extra:
                counts += np.bincount(np.asarray(extra, np.int64), minlength=len(self._image_list))
        if exclude is not None:
            counts[self._name_to_idx[exclude]] = 0
        idx = np.flatnonzero(counts >= max(1, min_count))
        order = sorted(idx, key=lambda i: (-counts[i], self._image_list[i]))
        return [(self._image_list[i], int(counts[i])) for i in order]

    def rows_of(self, point3D_ids) -> np.ndarray:
        """Row in :attr:`points3D` of each COLMAP point id (any shape), -1 where the map has no
        such point."""
        from ..io.colmap import rows_of_ids

        with self.lock:
            return rows_of_ids(self.point3D_ids, point3D_ids)

    def num_shared_points(self, name0: str, name1: str) -> int:
        """Number of 3D points observed by both images."""
        a = self.kp_to_point[self._image(name0).name]
        b = self.kp_to_point[self._image(name1).name]
        return int(len(np.intersect1d(a[a >= 0], b[b >= 0])))

    def stats(self) -> Dict[str, float]:
        """Registered images, points, mean track length and reprojection error."""
        from .reconstruction import reconstruction_stats

        return reconstruction_stats(self.reconstruction)

    def __repr__(self) -> str:
        return (f"Map({len(self.image_names)} images, {len(self.points3D)} points, "
                f"global index {type(self.global_model).__name__})")

    # ------------------------------------------------------------------ I/O
    def save(self, path) -> Path:
        """Write the map folder (see the module docstring); existing files are replaced."""
        import pycolmap

        from .. import __version__
        from ..io.colmap import write_model
        from ..io.h5store import FeatureStore
        from ..io.json_io import write_json

        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        write_model(self.reconstruction, path / MAP_FILES["model"], text=False)
        with FeatureStore.writer(path / MAP_FILES["features"], overwrite=True) as store:
            for n in self.image_names:
                store.put(n, self.features[n])
        if not hasattr(self.global_model, "save"):
            raise TypeError(f"Global model {type(self.global_model).__name__} has no save(path)")
        self.global_model.save(path / MAP_FILES["global_model"])
        self.global_index.save(path / MAP_FILES["global_index"])
        self._save_normals(path / MAP_OPTIONAL_FILES["point_normals"])
        meta = {
            "format_version": MAP_FORMAT_VERSION,
            "versions": {"hloc_bpnp": __version__, "pycolmap": pycolmap.__version__,
                         "python": platform.python_version()},
            "global_model_type": getattr(self.global_model, "kind", type(self.global_model).__name__),
            "image_names": self.image_names,
            "stats": self.stats(),
            "conf": self.conf,
        }
        write_json(path / MAP_FILES["meta"], meta, indent=2)
        logger.info("Saved map (%d images, %d points) to %s", len(self.image_names), len(self.points3D), path)
        return path

    @classmethod
    def load(cls, path) -> "Map":
        """Read a map folder written by :meth:`save`.

        Raises:
            FileNotFoundError: naming the first missing file.
        """
        from ..io.colmap import read_model
        from ..io.h5store import FeatureStore
        from ..retrieval.index import GlobalIndex
        from .global_model import VLADGlobalModel

        path = Path(path)
        if not path.is_dir():
            raise FileNotFoundError(f"Map folder {path} does not exist")
        for key, fname in MAP_FILES.items():
            if not (path / fname).exists():
                raise FileNotFoundError(f"Map folder {path} is missing {fname} ({key}); "
                                        f"expected {sorted(MAP_FILES.values())}")
        meta = json.loads((path / MAP_FILES["meta"]).read_text())
        if meta.get("format_version") != MAP_FORMAT_VERSION:
            raise ValueError(f"{path / MAP_FILES['meta']}: map format {meta.get('format_version')} "
                             f"unsupported (expected {MAP_FORMAT_VERSION})")
        rec = read_model(path / MAP_FILES["model"])
        with FeatureStore(path / MAP_FILES["features"], "r") as store:
            features = {n: store.get(n) for n in meta["image_names"]}
        kind = meta.get("global_model_type", "vlad")
        if kind != "vlad":
            raise ValueError(f"Global model type {kind!r} in {path} cannot be loaded (only 'vlad')")
        global_model = VLADGlobalModel.load(path / MAP_FILES["global_model"])
        global_index = GlobalIndex.load(path / MAP_FILES["global_index"])
        normals = _load_normals(path / MAP_OPTIONAL_FILES["point_normals"])
        try:
            return cls.from_reconstruction(rec, features, meta["conf"], global_model=global_model,
                                           global_index=global_index, point_normals=normals)
        except _BadNormals as e:
            raise ValueError(f"{path / MAP_OPTIONAL_FILES['point_normals']}: {e}") from e

    def _save_normals(self, path: Path) -> None:
        """Write :attr:`point_normals`' known rows (see the module docstring), or remove a stale
        file when no point has a normal."""
        from ..io.atomic import atomic_open

        known = np.isfinite(self.point_normals).all(axis=1)
        if not known.any():
            path.unlink(missing_ok=True)
            return
        with atomic_open(path, "wb") as f:
            np.savez(f, point3D_ids=self.point3D_ids[known], normals=self.point_normals[known])


class _BadNormals(ValueError):
    """Point normals that do not fit the reconstruction (see :func:`_normals_by_row`)."""


def _load_normals(path: Path) -> Optional[Tuple[np.ndarray, np.ndarray]]:
    """``(point3D_ids (K,), normals (K, 3))`` of a map's ``point_normals.npz``, None when absent."""
    if not path.exists():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            ids, normals = np.asarray(z["point3D_ids"]), np.asarray(z["normals"])
    except (KeyError, ValueError, OSError) as e:
        raise ValueError(f"{path}: not a point normals file (expected arrays 'point3D_ids' (K,) and "
                         f"'normals' (K, 3)): {e}") from e
    return ids, normals


def _normals_by_row(point3D_ids: np.ndarray, ids, normals) -> np.ndarray:
    """(P, 3) unit normals in the rows of ``point3D_ids`` (P,) (increasing), NaN where ``ids``
    (K,) has none; ``normals`` (K, 3)."""
    ids = np.asarray(ids)
    normals = np.asarray(normals, np.float64)
    if ids.ndim != 1 or not np.issubdtype(ids.dtype, np.integer) or normals.shape != (len(ids), 3):
        raise _BadNormals(f"point normals must be integer point3D_ids (K,) and normals (K, 3), got "
                          f"{ids.dtype} {ids.shape} and {normals.shape}")
    length = np.linalg.norm(normals, axis=1)
    bad = ~np.isfinite(length) | (length <= 0)
    if bad.any():
        raise _BadNormals(f"point normals: {int(bad.sum())} are not finite nonzero vectors (first: point "
                          f"{int(ids[np.flatnonzero(bad)[0]])})")
    from ..io.colmap import rows_of_ids

    pos = rows_of_ids(point3D_ids, ids)
    missing = pos < 0
    if np.any(missing):
        raise _BadNormals(f"point normals: {int(np.sum(missing))} of {len(ids)} point ids are not in the "
                          f"reconstruction (first: {int(ids[np.flatnonzero(missing)[0]])})")
    out = np.full((len(point3D_ids), 3), np.nan)
    out[pos] = normals / length[:, None]
    return out
