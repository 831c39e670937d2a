"""Map building pipelines: features -> pairs -> matches -> verification -> pycolmap -> Map.

- :func:`build_map_from_poses`: known poses and intrinsics (a :class:`Scene`), 3D points by
  triangulation with the poses fixed (hloc's triangulation).
- :func:`build_map_sfm`: images alone (unknown or shared intrinsics), incremental SfM,
  keeping the largest model.

Configuration: ``configs/mapping/<preset>.yaml`` merged over :data:`default_conf`
(see :func:`mapping_config`). Every stage is also usable on its own
(:func:`extract_features`, :func:`make_pairs`, :func:`match_pairs`).
"""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
from tqdm import tqdm

from ..config import load_config, merge, preset_path
from ..features.feature_dict import as_numpy, to_numpy
from ..io.atomic import atomic_open, atomic_write_text
from ..io.scene import Scene
from .keypoint_adjustment import adjust_if_enabled
from .point_triangulation import weigh_points_if_enabled
from .keypoint_adjustment import default_conf as adjustment_defaults

logger = logging.getLogger(__name__)

Pair = Tuple[str, str]
ImagesLike = Union[str, Path, Mapping[str, np.ndarray]]
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".tif", ".tiff", ".pgm")

default_conf = {
    "features": "sift",          # preset name of configs/features, or a dict
    "matcher": "mnn_ratio",      # preset name of configs/matchers, or a dict
    "pairs": {
        "method": "poses",       # poses | exhaustive | retrieval
        "num_pairs": 10,         # neighbours per image (poses, retrieval)
        "rotation_threshold_deg": 45.0,  # poses: only pair views whose axes differ less
    },
    "retrieval": "vlad",         # preset name of configs/retrieval, or a dict
    "verification": {
        "method": "poses",       # poses (known poses) | ransac
        "max_error": 4.0,
        "min_num_inliers": 15,
        "ransac_confidence": 0.999,
        "ransac_max_trials": 10000,
    },
    "triangulation": {},         # overrides of pycolmap.IncrementalPipelineOptions
    # after triangulation (or SfM): each point re-solved with weights 1 / sigma^2 of its
    # observations' keypoint uncertainties, poses fixed (mapping/point_triangulation.py).
    # auto: when the features carry a refiner's sigmas (xfeat_refined) and keypoint_adjustment
    # is off (it moves the observations off the detections) | uncertainty | false
    "triangulation_weights": "auto",
    # after triangulation: each track's observations aligned to each other on the images, the
    # points re-triangulated (mapping/keypoint_adjustment.py; needs the images; use with query
    # patch alignment)
    "keypoint_adjustment": dict(adjustment_defaults),
    "sfm": {
        "camera_mode": "auto",   # auto | single | per_image
        "camera_model": "SIMPLE_RADIAL",
        "default_focal_length_factor": 1.2,
        "options": {},           # overrides of pycolmap.IncrementalPipelineOptions
    },
}


def _merge_conf(base: Mapping, override: Optional[Mapping], source: Optional[str] = None) -> Dict:
    """Strict merge (unknown keys raise :class:`~hloc_bpnp.config.UnknownConfigKeyError`
    naming them and ``source``, the file they came from) except for the free-form pycolmap
    option dicts ``triangulation`` and ``sfm.options``, which :func:`apply_options` validates."""
    override = dict(override or {})
    tri = override.pop("triangulation", None)
    if "sfm" in override:
        override["sfm"] = dict(override["sfm"] or {})
        sfm_opts = override["sfm"].pop("options", None)
    else:
        sfm_opts = None
    out = merge(base, override, strict=True, source=source, section="mapping")
    out["triangulation"] = merge(out["triangulation"], tri)
    out["sfm"]["options"] = merge(out["sfm"]["options"], sfm_opts)
    return out


def mapping_config(conf: Union[str, Path, Mapping, None] = None, **overrides) -> Dict:
    """The full mapping config: a preset name/path/dict merged over :data:`default_conf`.

    String entries ``features``, ``matcher`` and ``retrieval`` are presets, resolved when
    used; ``overrides`` (nested dicts allowed) are merged last. Unknown keys raise
    :class:`~hloc_bpnp.config.UnknownConfigKeyError` (a ``KeyError`` naming the preset's file
    and the keys), except inside the pycolmap option dicts (``triangulation``,
    ``sfm.options``), which are checked against pycolmap's options when applied.
    """
    user = load_config("mapping", conf) if conf is not None else {}
    src = preset_path("mapping", conf)
    return _merge_conf(_merge_conf(default_conf, user, str(src) if src is not None else None), overrides)


# ---------------------------------------------------------------------------- stages
def resolved_mapping_config(conf: Union[str, Path, Mapping, None] = None, **overrides) -> Dict:
    """The config that a build with ``conf`` records as ``Map.conf`` (``map.json``): the
    merged :func:`mapping_config` with the features / matcher / retrieval presets resolved
    to their dicts. Compare it with a saved map's (see ``map.check_saved_map_config``)."""
    return resolve_presets(mapping_config(conf, **overrides))


def list_images(image_dir) -> List[str]:
    """Image names (relative paths, '/' separated, sorted) under ``image_dir`` (recursive)."""
    root = Path(image_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"Image folder {root} does not exist")
    names = sorted(p.relative_to(root).as_posix() for p in root.rglob("*")
                   if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
    if not names:
        raise FileNotFoundError(f"No image ({', '.join(IMAGE_EXTENSIONS)}) found in {root}")
    return names


def read_map_image(images: ImagesLike, name: str) -> np.ndarray:
    if isinstance(images, Mapping):
        if name not in images:
            raise KeyError(f"No image array for {name!r}")
        return images[name]
    from ..io.image import read_image

    return read_image(Path(images) / name)


def build_extractor_from_conf(conf):
    from ..features import build_extractor

    return build_extractor(conf)


def build_matcher_from_conf(conf):
    from ..matching import build_matcher

    return build_matcher(conf)


def extract_features(extractor, names: Sequence[str], images: ImagesLike, progress: bool = True) -> Dict[str, dict]:
    """Run ``extractor`` on every image.

    Args:
        extractor: a :class:`hloc_bpnp.features.Extractor` (or a preset name / config dict).
        names: image names.
        images: folder holding the names, or name -> (H, W[, 3]) array.
    Returns:
        name -> features dict (the extractor's torch tensors).
    """
    if isinstance(extractor, (str, Mapping)):
        extractor = build_extractor_from_conf(extractor)
    return {n: extractor.extract(read_map_image(images, n)) for n in tqdm(names, desc="extraction", disable=not progress)}


def extract_features_cached(extractor_conf, names: Sequence[str], images: ImagesLike, cache_dir,
                            progress: bool = True) -> Dict[str, dict]:
    """:func:`extract_features` that survives being killed: each image's features go to
    ``cache_dir/<name>.npz`` (temporary name, then rename) as soon as they are extracted, and a
    rerun loads those instead of extracting again, so it resumes and yields the same features.

    ``cache_dir/extractor.json`` records the extractor config; a cache made with another
    config is refused (ValueError naming the folder). An unreadable cache entry is extracted anew.
    Returns name -> features (numpy arrays).
    """
    cache = FeatureCache(cache_dir, extractor_conf)
    out, todo = cache.load(names)
    extractor = build_extractor_from_conf(cache.conf) if todo else None
    for n in tqdm(todo, desc="extraction", disable=not progress):
        out[n] = cache.put(n, features_to_numpy({n: extractor.extract(read_map_image(images, n))})[n])
    return {n: out[n] for n in names}


class FeatureCache:
    """Per-image feature files ``cache_dir/<name>.npz`` of one extractor config (recorded in
    ``cache_dir/extractor.json``; another config is refused with a ValueError naming the
    folder). Used by :func:`extract_features_cached` and by the distributed extraction (whose
    driver alone writes here)."""

    def __init__(self, cache_dir, extractor_conf):
        import json

        self.dir = Path(cache_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.conf = load_config("features", extractor_conf)
        key = json.dumps(self.conf, sort_keys=True, default=str)
        stamp = self.dir / "extractor.json"
        if stamp.is_file():
            if stamp.read_text() != key:
                raise ValueError(f"{self.dir}: its cached features come from another extractor config "
                                 f"({stamp.read_text()[:200]}); use another --workdir or delete the folder")
        else:
            atomic_write_text(stamp, key)

    def load(self, names: Sequence[str]) -> Tuple[Dict[str, dict], List[str]]:
        """(name -> cached features, names still to extract); unreadable entries are redone."""
        out, todo = {}, []
        for n in names:
            f = self.dir / f"{n}.npz"
            if f.is_file():
                try:
                    with np.load(f, allow_pickle=False) as z:
                        out[n] = {k: z[k] for k in z.files}
                    continue
                except (OSError, ValueError) as e:
                    logger.warning("%s: unreadable cache entry, extracting %s again (%s)", f, n, e)
            todo.append(n)
        if out:
            logger.info("Resuming: %d of %d images' features from %s", len(out), len(names), self.dir)
        return out, todo

    def put(self, name: str, feats: Mapping[str, np.ndarray]) -> Dict[str, np.ndarray]:
        """Write one image's numpy features atomically; returns them."""
        f = self.dir / f"{name}.npz"
        with atomic_open(f, "wb") as fh:  # a file object: np.savez would append .npz to a name
            np.savez(fh, **feats)
        return dict(feats)


def _dedupe(pairs: Sequence[Pair]) -> List[Pair]:
    seen, out = set(), []
    for a, b in pairs:
        key = (a, b) if a < b else (b, a)
        if a != b and key not in seen:
            seen.add(key)
            out.append(key)
    return out


def make_pairs(names: Sequence[str], conf: Mapping, poses=None, features=None, global_model=None):
    """Image pairs to match (unordered, each once).

    Args:
        names: map images.
        conf: the ``pairs`` section of the config.
        poses: name -> Pose or a Scene (method ``poses``).
        features: name -> features (method ``retrieval``).
        global_model: fitted model with ``encode`` (method ``retrieval``).
    """
    from ..retrieval.pairs import pairs_exhaustive, pairs_from_poses, pairs_from_retrieval

    method, k = conf["method"], int(conf["num_pairs"])
    if method == "exhaustive":
        pairs = pairs_exhaustive(list(names))
    elif method == "poses":
        if poses is None:
            raise ValueError("Pair method 'poses' needs known poses (build_map_from_poses)")
        pairs = pairs_from_poses(poses, k, float(conf["rotation_threshold_deg"]))
    elif method == "retrieval":
        if global_model is None or features is None:
            raise ValueError("Pair method 'retrieval' needs features and a global model")
        from ..retrieval.index import GlobalIndex

        vecs = np.stack([np.asarray(global_model.encode(features[n]), np.float32) for n in names])
        index = GlobalIndex(vecs.shape[1], {"type": "flat"})
        index.add(list(names), vecs)
        pairs = pairs_from_retrieval(vecs, list(names), index, k)
    else:
        raise ValueError(f"Unknown pair method {method!r}; use poses, exhaustive or retrieval")
    pairs = _dedupe(pairs)
    logger.info("%d pairs (%s) over %d images", len(pairs), method, len(names))
    return pairs


def match_pairs(matcher, pairs: Sequence[Pair], features: Mapping[str, dict], progress: bool = True) -> Dict[Pair, np.ndarray]:
    """Match every pair.

    Returns:
        (name0, name1) -> (M, 2) int64 keypoint indices.
    """
    if isinstance(matcher, (str, Mapping)):
        matcher = build_matcher_from_conf(matcher)
    out = {}
    for n0, n1 in tqdm(pairs, desc="matching", disable=not progress):
        res = matcher.match(features[n0], features[n1])
        m0 = res["matches0"]
        m0 = as_numpy(m0)
        m0 = m0.reshape(-1).astype(np.int64)
        valid = np.flatnonzero(m0 >= 0)
        out[(n0, n1)] = np.stack([valid, m0[valid]], 1)
    return out


def features_to_numpy(features: Mapping[str, dict]) -> Dict[str, dict]:
    """``{name: feature dict}`` as the map stores them (numpy, float32 keypoints/descriptors)."""
    return {n: to_numpy(f, float32=True) for n, f in features.items()}


def _to_torch_feats(feats: Mapping) -> Dict:
    import torch

    return {k: v if isinstance(v, torch.Tensor) else torch.as_tensor(np.asarray(v)) for k, v in feats.items()}


def resolve_presets(conf: Mapping) -> Dict:
    """Replace preset names by their config dicts (features/matcher keep the name as ``preset``)."""
    conf = dict(conf)
    for key, section in (("features", "features"), ("matcher", "matchers"), ("retrieval", "retrieval")):
        if isinstance(conf[key], (str, Path)):
            name = str(conf[key])
            conf[key] = load_config(section, name)
            if key != "retrieval":
                conf[key].setdefault("preset", Path(name).stem)
    return conf


def _front_end(names, images, conf, poses=None, features=None, progress=True):
    """Features (numpy), pairs, matches and global model for ``names``.

    ``features`` (name -> feats) are reused where given; the other images are extracted.
    """
    from .global_model import build_global_model

    timings = {}
    t0 = time.time()
    given = dict(features or {})
    todo = [n for n in names if n not in given]
    feats_t = {**{n: _to_torch_feats(given[n]) for n in names if n in given},
               **(extract_features(conf["features"], todo, images, progress) if todo else {})}
    feats_t = {n: feats_t[n] for n in names}
    timings["extraction"] = time.time() - t0
    feats = features_to_numpy(feats_t)
    global_model = build_global_model(conf["retrieval"], feats)
    pairs = make_pairs(names, conf["pairs"], poses=poses, features=feats, global_model=global_model)
    t0 = time.time()
    matches = match_pairs(conf["matcher"], pairs, feats_t, progress)
    timings["matching"] = time.time() - t0
    return feats, pairs, matches, global_model, timings


# ---------------------------------------------------------------------------- pipelines
def build_map_from_poses(scene: Scene, images: Optional[ImagesLike] = None, conf=None, workdir=None,
                         features: Optional[Mapping[str, dict]] = None, progress: bool = True,
                         verbose: bool = False):
    """Map with known poses and intrinsics: features, pairs, matches, verification,
    triangulation with fixed poses.

    Args:
        scene: posed images (cam_from_world) with their cameras; at least 3.
        images: folder of the images or name -> array; default ``scene.image_dir``.
        conf: mapping preset name / dict (merged over :data:`default_conf`).
        workdir: keep the COLMAP database there (default: temporary).
        features: pre-computed name -> features (same extractor as ``conf``) to reuse.
    Returns:
        :class:`~hloc_bpnp.mapping.Map` (its ``conf`` records everything used).
    """
    from .map import Map
    from .reconstruction import triangulate_known_poses
    from .verification import verify_pairs

    conf = resolve_presets(mapping_config(conf))
    images = scene.image_dir if images is None else images
    if images is None and not (features and all(n in features for n in scene.names)):
        raise ValueError("No images: pass an image folder / dict or set scene.image_dir")
    missing = [im.name for im in scene if im.pose is None]
    if missing:
        raise ValueError(f"build_map_from_poses: images without pose: {missing[:5]}")
    if len(scene) < 3:
        raise ValueError(f"Need at least 3 posed images to triangulate, got {len(scene)}")
    names = scene.names
    feats, pairs, matches, global_model, timings = _front_end(names, images, conf, poses=scene, features=features,
                                                                   progress=progress)
    t0 = time.time()
    cameras = {im.name: im.camera for im in scene}
    poses = {im.name: im.pose for im in scene}
    geoms = verify_pairs(matches, feats, cameras, poses, conf["verification"], progress=progress)
    reference = scene.to_reconstruction()
    image_dir = None if isinstance(images, Mapping) else images
    rec = triangulate_known_poses(reference, feats, matches, geoms, image_dir=image_dir,
                                  options=conf["triangulation"], workdir=workdir, verbose=verbose)
    weigh_points_if_enabled(rec, feats, conf)
    timings["triangulation"] = time.time() - t0
    t0 = time.time()
    feats, normals = adjust_if_enabled(rec, feats, images, conf["keypoint_adjustment"], progress=progress)
    timings["keypoint_adjustment"] = time.time() - t0
    logger.info("Mapping timings (s): %s", {k: round(v, 2) for k, v in timings.items()})
    return Map.from_reconstruction(rec, feats, conf, global_model=global_model, point_normals=normals)


def _initial_cameras(names, images, feats, sfm_conf, cameras=None):
    """name -> pycolmap.Camera and name -> camera id for SfM."""
    import pycolmap

    from ..geometry import Camera

    if isinstance(cameras, Camera):
        cameras = {n: cameras for n in names}
    out = {}
    for n in names:
        if cameras is not None and n in cameras:
            cam = cameras[n].to_pycolmap()
            cam.has_prior_focal_length = True
        else:
            w, h = (int(x) for x in np.asarray(feats[n]["image_size"]).reshape(-1)[:2])
            cam = None
            if images is not None and not isinstance(images, Mapping):
                opts = pycolmap.ImageReaderOptions()
                opts.camera_model = sfm_conf["camera_model"]
                opts.default_focal_length_factor = float(sfm_conf["default_focal_length_factor"])
                cam = pycolmap.infer_camera_from_image(str(Path(images) / n), opts)
                if (cam.width, cam.height) != (w, h):  # EXIF rotation applied by our reader
                    cam = None
            if cam is None:
                f = float(sfm_conf["default_focal_length_factor"]) * max(w, h)
                cam = pycolmap.Camera.create_from_model_name(0, sfm_conf["camera_model"], f, w, h)
        out[n] = cam
    mode = sfm_conf["camera_mode"]
    if mode == "per_image":
        ids = {n: i + 1 for i, n in enumerate(sorted(names))}
    elif mode == "single":
        sizes = {(out[n].width, out[n].height) for n in names}
        if len(sizes) > 1:
            raise ValueError(f"camera_mode 'single' needs images of one size, got {sorted(sizes)}")
        ids = {n: 1 for n in names}
    elif mode == "auto":
        keys: Dict[tuple, int] = {}
        ids = {}
        for n in sorted(names):
            c = out[n]
            key = (c.width, c.height, c.has_prior_focal_length, tuple(np.round(c.params, 6)))
            ids[n] = keys.setdefault(key, len(keys) + 1)
    else:
        raise ValueError(f"Unknown camera_mode {mode!r}; use auto, single or per_image")
    return out, ids


def build_map_sfm(images: ImagesLike, conf=None, camera_mode: Optional[str] = None, names: Optional[Sequence[str]] = None,
                  cameras=None, workdir=None, features: Optional[Mapping[str, dict]] = None,
                  progress: bool = True, verbose: bool = False):
    """Map from images alone: features, pairs, matches, RANSAC verification, incremental SfM.

    Args:
        images: image folder or name -> array.
        conf: mapping preset name / dict (e.g. ``"sfm"``), merged over :data:`default_conf`.
        camera_mode: overrides ``conf["sfm"]["camera_mode"]``: ``auto`` (images with the same
            size and prior share intrinsics), ``single`` or ``per_image``.
        names: subset of images (default: all in the folder / dict).
        cameras: known intrinsics: one :class:`Camera` for all images, or name -> Camera
            (their focal lengths are trusted as priors and refined).
        features: pre-computed name -> features (same extractor as ``conf``) to reuse.
    Returns:
        :class:`~hloc_bpnp.mapping.Map` of the largest reconstructed model;
        ``map.stats()["num_reg_images"]`` is the number of registered images.
    """
    from .map import Map
    from .reconstruction import incremental_sfm
    from .verification import verify_pairs

    conf = resolve_presets(mapping_config("sfm" if conf is None else conf))
    if camera_mode is not None:
        conf["sfm"] = {**conf["sfm"], "camera_mode": camera_mode}
    if conf["pairs"]["method"] == "poses":
        raise ValueError("SfM has no poses to pair images with: use pairs.method exhaustive or retrieval")
    if names is None:
        names = sorted(images) if isinstance(images, Mapping) else list_images(images)
    names = sorted(names)
    if len(names) < 2:
        raise ValueError(f"SfM needs at least 2 images, got {len(names)}")
    feats, pairs, matches, global_model, timings = _front_end(names, images, conf, features=features,
                                                              progress=progress)
    t0 = time.time()
    pc_cams, cam_ids = _initial_cameras(names, images, feats, conf["sfm"], cameras)
    vconf = {**conf["verification"], "method": "ransac"}
    geoms = verify_pairs(matches, feats, pc_cams, None, vconf, progress=progress)
    image_dir = None if isinstance(images, Mapping) else images
    rec = incremental_sfm(pc_cams, feats, matches, geoms, camera_ids=cam_ids, image_dir=image_dir,
                          options=conf["sfm"]["options"], workdir=workdir, verbose=verbose)
    timings["sfm"] = time.time() - t0
    logger.info("SfM registered %d / %d images; timings (s): %s", rec.num_reg_images(), len(names),
                {k: round(v, 2) for k, v in timings.items()})
    # poses (and cameras) as SfM left them
    weigh_points_if_enabled(rec, feats, conf)
    feats, normals = adjust_if_enabled(rec, feats, images, conf["keypoint_adjustment"], progress=progress)
    return Map.from_reconstruction(rec, feats, conf, global_model=global_model, point_normals=normals)
