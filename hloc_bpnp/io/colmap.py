"""Thin helpers over pycolmap 4 reconstructions (COLMAP models, text or binary).

pycolmap 4 notes: ``Image.cam_from_world`` is a method, images live in frames of rigs
(``add_camera_with_trivial_rig`` / ``add_image_with_trivial_frame``), and a 2D point
without a 3D point has ``point3D_id == 2**64 - 1`` (we expose it as -1).
"""
from __future__ import annotations

import difflib
import logging
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Optional, Union

import numpy as np

from .scene import Scene

logger = logging.getLogger(__name__)

PathLike = Union[str, Path]
MODEL_FILES = ("cameras", "images", "points3D")

__all__ = [
    "MODEL_FILES", "model_format", "read_model", "write_model", "scene_from_model",
    "ImageObservations", "ModelPoints", "points_and_observations", "rows_of_ids", "image_id_by_name",
    "get_image", "covisibility", "angular_point_errors",
]


def model_format(path: PathLike) -> Optional[str]:
    """``"bin"`` or ``"txt"`` when ``path`` holds a complete COLMAP model, else None.

    Binary wins when both are present (as COLMAP does).
    """
    p = Path(path)
    for ext in ("bin", "txt"):
        if all((p / f"{name}.{ext}").is_file() for name in MODEL_FILES):
            return ext
    return None


def read_model(path: PathLike):
    """Read a COLMAP model folder (binary ``*.bin`` or text ``*.txt``).

    Returns:
        ``pycolmap.Reconstruction``.
    Raises:
        FileNotFoundError: the folder does not exist or lacks one of ``cameras``,
        ``images``, ``points3D`` (the message lists what is missing and what is there).
    """
    import pycolmap

    p = Path(path)
    if not p.is_dir():
        raise FileNotFoundError(2, "COLMAP model folder not found", str(p))
    fmt = model_format(p)
    if fmt is None:
        present = sorted(x.name for x in p.iterdir())
        missing = {
            ext: [f"{n}.{ext}" for n in MODEL_FILES if not (p / f"{n}.{ext}").is_file()]
            for ext in ("bin", "txt")
        }
        raise FileNotFoundError(
            2,
            f"not a COLMAP model: needs cameras/images/points3D as .bin or .txt "
            f"(binary lacks {missing['bin']}, text lacks {missing['txt']}; folder has {present[:20]})",
            str(p),
        )
    rec = pycolmap.Reconstruction()
    if fmt == "bin":
        rec.read_binary(str(p))
    else:
        rec.read_text(str(p))
    logger.debug("Read COLMAP model %s (%s): %d images, %d points", p, fmt, rec.num_images(), rec.num_points3D())
    return rec


def write_model(rec, path: PathLike, text: bool = False) -> Path:
    """Write a ``pycolmap.Reconstruction`` to the folder ``path`` (created), binary by default."""
    p = Path(path)
    p.mkdir(parents=True, exist_ok=True)
    if text:
        rec.write_text(str(p))
    else:
        rec.write_binary(str(p))
    logger.debug("Wrote COLMAP model (%s) to %s", "text" if text else "binary", p)
    return p


def _as_reconstruction(path_or_rec):
    if isinstance(path_or_rec, (str, Path)):
        return read_model(path_or_rec)
    return path_or_rec


def scene_from_model(path_or_rec, image_dir: Optional[PathLike] = None) -> Scene:
    """A :class:`Scene` (cameras + poses of registered images, sorted by name)."""
    return Scene.from_reconstruction(_as_reconstruction(path_or_rec), image_dir)


def image_id_by_name(rec) -> Dict[str, int]:
    """``{image name: image_id}`` of all images of the model."""
    return {img.name: int(image_id) for image_id, img in rec.images.items()}


def get_image(rec, name: str):
    """The ``pycolmap.Image`` called ``name``; KeyError listing close matches otherwise."""
    img = rec.find_image_with_name(name)
    if img is None:
        names = [im.name for im in rec.images.values()]
        close = difflib.get_close_matches(name, names, n=3)
        raise KeyError(f"Image {name!r} not in the model ({len(names)} images); close matches: {close}")
    return img


@dataclass
class ImageObservations:
    """All 2D points of one image.

    Attributes:
        image_id: COLMAP image id.
        name: image name.
        camera_id: COLMAP camera id.
        xy: (K, 2) float64 keypoints, COLMAP pixel convention.
        point3D_ids: (K,) int64 id of the observed 3D point, -1 where none.
    """

    image_id: int
    name: str
    camera_id: int
    xy: np.ndarray
    point3D_ids: np.ndarray

    @property
    def triangulated(self) -> np.ndarray:
        """(K,) bool mask of keypoints with a 3D point."""
        return self.point3D_ids >= 0


@dataclass
class ModelPoints:
    """3D points of a model and the 2D observations of every image.

    Attributes:
        point3D_ids: (M,) int64 ids, sorted.
        xyz: (M, 3) float64 world coordinates.
        colors: (M, 3) uint8.
        errors: (M,) float64 mean reprojection errors (px).
        track_lengths: (M,) int64 number of observations.
        images: ``{name: ImageObservations}`` sorted by name.
    """

    point3D_ids: np.ndarray
    xyz: np.ndarray
    colors: np.ndarray
    errors: np.ndarray
    track_lengths: np.ndarray
    images: Dict[str, ImageObservations]

    def index_of(self, ids: np.ndarray) -> np.ndarray:
        """Row of each 3D point id in ``xyz`` (-1 for id -1 or unknown ids); any shape."""
        return rows_of_ids(self.point3D_ids, ids)

    def xyz_of(self, ids: np.ndarray) -> np.ndarray:
        """(..., 3) coordinates of point ids (NaN where the id is -1 or unknown)."""
        idx = self.index_of(ids)
        out = np.full(idx.shape + (3,), np.nan)
        out[idx >= 0] = self.xyz[idx[idx >= 0]]
        return out

    def correspondences(self, name: str):
        """2D-3D matches of one image: ``(xy (N, 2), xyz (N, 3), point3D_ids (N,))``."""
        obs = self.images[name]
        m = obs.triangulated
        return obs.xy[m], self.xyz_of(obs.point3D_ids[m]), obs.point3D_ids[m]


def rows_of_ids(sorted_ids: np.ndarray, ids) -> np.ndarray:
    """Row of each 3D point id of ``ids`` (any shape) in the increasing (P,) ``sorted_ids``, -1
    where it is not there (id -1 included)."""
    sorted_ids = np.asarray(sorted_ids, np.int64)
    ids = np.asarray(ids, dtype=np.int64)
    if len(sorted_ids) == 0:
        return np.full(ids.shape, -1, np.int64)
    pos = np.clip(np.searchsorted(sorted_ids, ids), 0, len(sorted_ids) - 1)
    return np.where((sorted_ids[pos] == ids) & (ids >= 0), pos, -1).astype(np.int64)


def points_and_observations(path_or_rec) -> ModelPoints:
    """Numpy view of a model's 3D points and every registered image's keypoints."""
    rec = _as_reconstruction(path_or_rec)
    ids = np.array(sorted(rec.points3D.keys()), dtype=np.int64)
    n = len(ids)
    xyz = np.zeros((n, 3))
    colors = np.zeros((n, 3), dtype=np.uint8)
    errors = np.zeros(n)
    lengths = np.zeros(n, dtype=np.int64)
    for i, pid in enumerate(ids.tolist()):
        p = rec.points3D[pid]
        xyz[i] = p.xyz
        colors[i] = p.color
        errors[i] = p.error
        lengths[i] = p.track.length()
    images: Dict[str, ImageObservations] = {}
    for image_id, img in sorted(rec.images.items(), key=lambda kv: kv[1].name):
        pts = img.points2D
        k = len(pts)
        xy = np.zeros((k, 2))
        p3d = np.full(k, -1, dtype=np.int64)
        for j, p in enumerate(pts):
            xy[j] = p.xy
            if p.has_point3D():
                p3d[j] = p.point3D_id
        images[img.name] = ImageObservations(int(image_id), img.name, int(img.camera_id), xy, p3d)
    return ModelPoints(ids, xyz, colors, errors, lengths, images)


def angular_point_errors(path_or_rec, points: Optional[ModelPoints] = None) -> np.ndarray:
    """(M,) mean track reprojection error of each 3D point (COLMAP's ``Point3D.error``, pixels)
    divided by the mean focal length of the cameras that observe it: an angle (radians, small
    angle), comparable across cameras and image sizes. NaN where the model has no error for
    the point (pycolmap's -1) or no observation of it. Rows follow
    :func:`points_and_observations` (``points``, computed when not given)."""
    rec = _as_reconstruction(path_or_rec)
    mp = points if points is not None else points_and_observations(rec)
    fsum = np.zeros(len(mp.point3D_ids))
    count = np.zeros(len(mp.point3D_ids))
    for obs in mp.images.values():
        rows = mp.index_of(obs.point3D_ids[obs.point3D_ids >= 0])
        rows = rows[rows >= 0]
        cam = rec.cameras[obs.camera_id]
        np.add.at(fsum, rows, float(cam.mean_focal_length()))
        np.add.at(count, rows, 1.0)
    out = np.full(len(mp.point3D_ids), np.nan)
    ok = (count > 0) & (mp.errors >= 0)
    out[ok] = mp.errors[ok] / (fsum[ok] / count[ok])
    return out


def covisibility(path_or_rec, min_shared: int = 1) -> Dict[str, Dict[str, int]]:
    """``{name: {other name: number of shared 3D points}}`` over the model's tracks.

    Pairs sharing fewer than ``min_shared`` points are dropped; inner dicts are sorted by
    decreasing count (ties by name), the order hloc's covisibility pairs use.
    """
    rec = _as_reconstruction(path_or_rec)
    names = {int(i): img.name for i, img in rec.images.items()}
    counts: Dict[int, Counter] = defaultdict(Counter)
    for p in rec.points3D.values():
        img_ids = sorted({int(el.image_id) for el in p.track.elements})
        for a in img_ids:
            for b in img_ids:
                if a != b:
                    counts[a][b] += 1
    out: Dict[str, Dict[str, int]] = {}
    for image_id in sorted(names, key=names.get):
        c = [(names[b], n) for b, n in counts[image_id].items() if n >= min_shared]
        c.sort(key=lambda x: (-x[1], x[0]))
        out[names[image_id]] = dict(c)
    return out
