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
"""
from __future__ import annotations

import json
import logging
import platform
from pathlib import Path
from typing import Dict, List, Mapping, Optional

import numpy as np

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


def _numpy_feats(feats: Mapping) -> Dict[str, np.ndarray]:
    out = {}
    for k, v in feats.items():
        if hasattr(v, "detach"):
            v = v.detach().cpu().numpy()
        out[k] = np.asarray(v)
    out["keypoints"] = out["keypoints"].astype(np.float32)
    if "descriptors" in out:
        out["descriptors"] = out["descriptors"].astype(np.float32)
    return out


def _index_conf(conf: Mapping) -> Dict:
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
        kp_to_point: name -> (N,) int64 row into ``points3D``, -1 for untriangulated keypoints.
        global_model: object with ``encode(feats or descriptors) -> (Dg,) float32``.
        global_index: :class:`hloc_bpnp.retrieval.GlobalIndex` over ``image_names``.
        conf: the full configuration used to build the map.
    """

    def __init__(self, reconstruction, features, image_names, points3D, point3D_ids, kp_to_point,
                 global_model, global_index, conf, *, _obs_ptr=None, _obs_image=None):
        self.reconstruction = reconstruction
        self.features = features
        self.image_names = image_names
        self.points3D = points3D
        self.point3D_ids = point3D_ids
        self.kp_to_point = kp_to_point
        self.global_model = global_model
        self.global_index = global_index
        self.conf = conf
        self._obs_ptr = _obs_ptr      # (P+1,) CSR pointer: observations of point row p
        self._obs_image = _obs_image  # (O,) index into image_names, grouped by point row
        self._name_to_idx = {n: i for i, n in enumerate(image_names)}
        self._image_by_name = {img.name: img for img in reconstruction.images.values()}

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_reconstruction(cls, rec, features: Mapping[str, Mapping], conf: Optional[Mapping] = None,
                            global_model=None, global_index=None) -> "Map":
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
        Raises:
            KeyError: a registered image has no features.
            ValueError: its keypoint count differs from the model's 2D points.
        """
        from ..config import load_config
        from ..io.colmap import points_and_observations
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
            feats[n] = _numpy_feats(features[n])

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
            global_index = GlobalIndex(vecs.shape[1], _index_conf(conf))
            global_index.add(names, vecs)
        elif list(global_index.names) != names:
            raise ValueError("global_index names differ from the registered images of the reconstruction")
        m = cls(rec, feats, names, points3D, point3D_ids, kp_to_point, global_model, global_index, conf,
                _obs_ptr=obs_ptr, _obs_image=obs_img[order])
        logger.info("Map: %s", m.stats())
        return m

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
        img = self._image(name)
        return Camera.from_pycolmap(self.reconstruction.cameras[img.camera_id])

    def pose(self, name: str) -> Pose:
        """``cam_from_world`` of a map image (unbatched, float64)."""
        return Pose.from_pycolmap(self._image(name).cam_from_world())

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
        rows = rows[(rows >= 0) & (rows < len(self.points3D))]
        if len(rows) == 0:
            return []
        starts, ends = self._obs_ptr[rows], self._obs_ptr[rows + 1]
        lens = ends - starts
        flat = np.repeat(starts - np.cumsum(np.concatenate([[0], lens[:-1]])), lens) + np.arange(lens.sum())
        counts = np.bincount(self._obs_image[flat], minlength=len(self.image_names))
        if exclude is not None:
            counts[self._name_to_idx[exclude]] = 0
        idx = np.flatnonzero(counts >= max(1, min_count))
        order = sorted(idx, key=lambda i: (-counts[i], self.image_names[i]))
        return [(self.image_names[i], int(counts[i])) for i in order]

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
        return cls.from_reconstruction(rec, features, meta["conf"], global_model=global_model,
                                       global_index=global_index)
