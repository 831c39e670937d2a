"""COLMAP database creation from in-memory cameras, features and verified matches.

pycolmap 4.x stores images inside rigs and frames, so the database is always written from a
``pycolmap.Reconstruction`` skeleton (cameras + trivial rigs + trivial frames + images): the
reference model when poses are known, or a pose-less skeleton for SfM. Image ids in the
database equal the skeleton's ids, which is what ``pycolmap.triangulate_points`` expects.

Verified matches must be written as two-view geometries *with a configuration*
(CALIBRATED, UNCALIBRATED, ...): pycolmap 4.2.1 silently ignores untyped ones.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Dict, Mapping, Tuple

import numpy as np

logger = logging.getLogger(__name__)

Pair = Tuple[str, str]


def create_database(path, rec) -> Dict[str, int]:
    """Create a new COLMAP database holding the cameras, rigs, frames and images of ``rec``.

    Args:
        path: database file to create (an existing file is replaced).
        rec: ``pycolmap.Reconstruction`` skeleton (points are ignored).
    Returns:
        name -> image_id (the same ids as in ``rec``).
    """
    import pycolmap

    path = Path(path)
    if path.exists():
        path.unlink()
    path.parent.mkdir(parents=True, exist_ok=True)
    name_to_id: Dict[str, int] = {}
    with pycolmap.Database.open(str(path)) as db:
        for cam in rec.cameras.values():
            db.write_camera(cam, use_camera_id=True)
        for rig in rec.rigs.values():
            db.write_rig(rig, use_rig_id=True)
        for frame in rec.frames.values():
            db.write_frame(frame, use_frame_id=True)
        for image_id, img in rec.images.items():
            db.write_image(img, use_image_id=True)
            name_to_id[img.name] = int(image_id)
    return name_to_id


def skeleton_reconstruction(cameras: Mapping[str, object], camera_ids: Mapping[str, int] = None):
    """A pose-less ``pycolmap.Reconstruction`` with one trivial rig/frame per image.

    Args:
        cameras: name -> ``pycolmap.Camera`` (sorted by name to assign image ids 1..N).
        camera_ids: optional name -> camera id; images with the same id share the camera
            (the first camera given for an id is used). Default: one camera per image.
    Returns:
        ``pycolmap.Reconstruction`` whose frames carry identity poses (unregistered use only).
    """
    import pycolmap

    rec = pycolmap.Reconstruction()
    names = sorted(cameras)
    added = set()
    for image_id, name in enumerate(names, start=1):
        cam_id = int(camera_ids[name]) if camera_ids is not None else image_id
        if cam_id not in added:
            cam = pycolmap.Camera(cameras[name].todict())
            cam.camera_id = cam_id
            rec.add_camera_with_trivial_rig(cam)
            added.add(cam_id)
        img = pycolmap.Image(name=name, camera_id=cam_id, image_id=image_id)
        rec.add_image_with_trivial_frame(img, pycolmap.Rigid3d())
    return rec


def write_features(path, name_to_id: Mapping[str, int], features: Mapping[str, dict]) -> None:
    """Write keypoints (COLMAP pixels, float32) of every database image.

    Raises:
        KeyError: an image in the database has no entry in ``features``.
    """
    import pycolmap

    with pycolmap.Database.open(str(path)) as db:
        for name, image_id in name_to_id.items():
            if name not in features:
                raise KeyError(f"No features for database image {name!r}")
            kp = np.ascontiguousarray(np.asarray(features[name]["keypoints"], dtype=np.float32))
            if kp.ndim != 2 or kp.shape[1] != 2:
                raise ValueError(f"keypoints of {name!r} must be (N, 2), got {kp.shape}")
            db.write_keypoints(image_id, kp)


def write_two_view_geometries(path, name_to_id: Mapping[str, int], matches: Mapping[Pair, np.ndarray],
                              geometries: Mapping[Pair, object]) -> int:
    """Write raw matches and typed two-view geometries (verified inlier matches).

    Args:
        matches: (name0, name1) -> (M, 2) keypoint indices (raw matches).
        geometries: (name0, name1) -> ``pycolmap.TwoViewGeometry`` with ``config`` set and
            ``inlier_matches`` in the (name0, name1) order; pairs without one are written as
            raw matches only (ignored by triangulation and SfM).
    Returns:
        number of pairs written with a geometry.
    """
    import pycolmap

    untyped = pycolmap.TwoViewGeometryConfiguration.UNDEFINED
    n_geom = 0
    written = set()
    with pycolmap.Database.open(str(path)) as db:
        for (n0, n1), m in matches.items():
            i0, i1 = name_to_id[n0], name_to_id[n1]
            key = (min(i0, i1), max(i0, i1))
            if i0 == i1 or key in written:
                continue
            written.add(key)
            db.write_matches(i0, i1, np.ascontiguousarray(np.asarray(m, dtype=np.uint32).reshape(-1, 2)))
            tvg = geometries.get((n0, n1))
            if tvg is None:
                continue
            if int(tvg.config) == int(untyped):
                raise ValueError(f"Two-view geometry of pair {(n0, n1)} has no configuration type; "
                                 "triangulation would silently ignore it")
            db.write_two_view_geometry(i0, i1, tvg)
            n_geom += 1
    return n_geom
