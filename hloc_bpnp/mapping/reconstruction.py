"""pycolmap reconstruction from in-memory features and verified matches.

- :func:`triangulate_known_poses`: 3D points from a reference model whose poses and
  intrinsics stay fixed (hloc's triangulation idea, ``pycolmap.triangulate_points``).
- :func:`incremental_sfm`: poses, intrinsics and points from images alone
  (``pycolmap.incremental_mapping``), keeping the largest model.

Both write a temporary COLMAP database (cameras, rigs, frames, images, keypoints, raw
matches, typed two-view geometries) and return an in-memory ``pycolmap.Reconstruction``.
"""
from __future__ import annotations

import contextlib
import logging
import tempfile
from pathlib import Path
from typing import Dict, Mapping, Optional

from .database import create_database, write_features, write_two_view_geometries

logger = logging.getLogger(__name__)

# Options applied onto ``pycolmap.IncrementalPipelineOptions`` (nested dicts map to nested
# option objects, e.g. {"triangulation": {"min_angle": 1.5}, "mapper": {...}}).
default_triangulation_options = {
    "extract_colors": True,
    "triangulation": {"ignore_two_view_tracks": False},
}
default_sfm_options = {
    "extract_colors": True,
    "min_model_size": 3,
    "multiple_models": True,
}


def apply_options(obj, options: Optional[Mapping], _path: str = ""):
    """Set (nested) attributes of a pycolmap options object from a dict.

    Raises:
        KeyError: an option name that the object does not have (lists the valid ones).
    """
    for key, value in (options or {}).items():
        if not hasattr(obj, key):
            valid = sorted(n for n in dir(obj) if not n.startswith("_") and not callable(getattr(obj, n)))
            raise KeyError(f"Unknown pycolmap option {_path + key!r}; valid: {valid}")
        if isinstance(value, Mapping):
            apply_options(getattr(obj, key), value, _path + key + ".")
        else:
            setattr(obj, key, value)
    return obj


@contextlib.contextmanager
def _workdir(workdir):
    if workdir is None:
        with tempfile.TemporaryDirectory(prefix="hloc_bpnp_map_") as d:
            yield Path(d)
    else:
        p = Path(workdir)
        p.mkdir(parents=True, exist_ok=True)
        yield p


@contextlib.contextmanager
def _colmap_log_level(verbose: bool, errors_only: bool = False):
    """COLMAP's (glog) INFO lines only when ``verbose``; the previous level is restored.

    ``errors_only`` also hides warnings (used when no image folder is given: pycolmap 4.2.1's
    triangulation still tries to read every image for point colours and warns per image).
    """
    import pycolmap

    previous = pycolmap.logging.minloglevel
    if not verbose:
        pycolmap.logging.minloglevel = max(previous, 2 if errors_only else 1)
    try:
        yield
    finally:
        pycolmap.logging.minloglevel = previous


def reconstruction_stats(rec) -> Dict[str, float]:
    """Number of registered images, points, observations, mean track length and error."""
    return {
        "num_reg_images": int(rec.num_reg_images()),
        "num_points3D": int(rec.num_points3D()),
        "num_observations": int(rec.compute_num_observations()),
        "mean_track_length": float(rec.compute_mean_track_length()) if rec.num_points3D() else 0.0,
        "mean_reprojection_error": float(rec.compute_mean_reprojection_error()) if rec.num_points3D() else float("nan"),
    }


def triangulate_known_poses(reference, features: Mapping[str, dict], matches: Mapping, geometries: Mapping,
                            image_dir=None, options: Optional[Mapping] = None, workdir=None,
                            verbose: bool = False):
    """Triangulate 3D points with the reference poses and intrinsics held fixed.

    Args:
        reference: ``pycolmap.Reconstruction`` with cameras and posed images (points ignored),
            e.g. ``Scene.to_reconstruction()``; at least 3 images (pycolmap 4.2.1 builds no
            points from 2).
        features: name -> feature dict (``keypoints`` (N, 2) COLMAP pixels) for every image.
        matches: (name0, name1) -> (M, 2) raw matches.
        geometries: (name0, name1) -> typed ``pycolmap.TwoViewGeometry`` (see verification).
        image_dir: folder of the images (only to extract point colours), or None.
        options: overrides applied to ``pycolmap.IncrementalPipelineOptions``.
        workdir: keep the database there (default: a temporary folder).
    Returns:
        ``pycolmap.Reconstruction`` with the reference poses and the triangulated points.
    Raises:
        RuntimeError: when no point could be triangulated.
    """
    import pycolmap

    if reference.num_images() < 3:
        raise ValueError(f"Triangulation needs at least 3 posed images, got {reference.num_images()}")
    if not geometries:
        raise RuntimeError("No verified image pair: nothing to triangulate")
    opts = apply_options(pycolmap.IncrementalPipelineOptions(), default_triangulation_options)
    apply_options(opts, options)
    if image_dir is None:
        opts.extract_colors = False
    with _workdir(workdir) as wd, _colmap_log_level(verbose, errors_only=image_dir is None):
        db_path = wd / "database.db"
        name_to_id = create_database(db_path, reference)
        write_features(db_path, name_to_id, features)
        n = write_two_view_geometries(db_path, name_to_id, matches, geometries)
        logger.info("Triangulating %d images from %d verified pairs", len(name_to_id), n)
        out = wd / "triangulated"
        out.mkdir(exist_ok=True)
        rec = pycolmap.triangulate_points(reference, str(db_path), str(image_dir or wd), str(out),
                                          clear_points=True, options=opts, refine_intrinsics=False)
    stats = reconstruction_stats(rec)
    logger.info("Triangulated map: %s", stats)
    if stats["num_points3D"] == 0:
        raise RuntimeError(
            "Triangulation produced 0 points: check that the pairs overlap, the verified matches "
            f"({n} pairs) and that the reference poses are cam_from_world")
    return rec


def incremental_sfm(cameras: Mapping[str, object], features: Mapping[str, dict], matches: Mapping,
                    geometries: Mapping, camera_ids: Optional[Mapping[str, int]] = None, image_dir=None,
                    options: Optional[Mapping] = None, workdir=None, verbose: bool = False):
    """Incremental SfM on pre-computed features and verified matches; the largest model.

    Args:
        cameras: name -> ``pycolmap.Camera`` initial intrinsics (``has_prior_focal_length``
            tells COLMAP whether to trust the focal length).
        features, matches, geometries: as in :func:`triangulate_known_poses`.
        camera_ids: name -> camera id; images sharing an id share intrinsics.
        image_dir: images folder (point colours only) or None.
        options: overrides applied to ``pycolmap.IncrementalPipelineOptions``.
    Returns:
        the ``pycolmap.Reconstruction`` with the most registered images.
    Raises:
        RuntimeError: when no model could be reconstructed.
    """
    import pycolmap

    from .database import skeleton_reconstruction

    opts = apply_options(pycolmap.IncrementalPipelineOptions(), default_sfm_options)
    apply_options(opts, options)
    if image_dir is None:
        opts.extract_colors = False
    skeleton = skeleton_reconstruction(cameras, camera_ids)
    with _workdir(workdir) as wd, _colmap_log_level(verbose):
        db_path = wd / "database.db"
        name_to_id = create_database(db_path, skeleton)
        write_features(db_path, name_to_id, features)
        n = write_two_view_geometries(db_path, name_to_id, matches, geometries)
        logger.info("Incremental SfM on %d images, %d verified pairs", len(name_to_id), n)
        out = wd / "sfm"
        out.mkdir(exist_ok=True)
        models = pycolmap.incremental_mapping(str(db_path), str(image_dir or wd), str(out), options=opts)
    if not models:
        raise RuntimeError(f"Incremental SfM could not reconstruct any model from {len(cameras)} images "
                           f"and {n} verified pairs")
    best = max(models.values(), key=lambda r: (r.num_reg_images(), r.num_points3D()))
    logger.info("SfM: %d model(s); largest registers %d / %d images, %d points", len(models),
                best.num_reg_images(), len(cameras), best.num_points3D())
    return best
