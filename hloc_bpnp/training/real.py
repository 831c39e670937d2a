"""Training data from real posed scenes: no depth, 3D points triangulated with the known poses.

A real scene (Strecha, Middlebury, a COLMAP model with images, a saved ``Map``'s reference)
gives images with cameras and poses. Every view is a query (its references are the
``num_refs`` pose-nearest OTHER views) and a map view. The map's 3D points come from the
frozen copy of the network being trained: its features of the map views, mutual-NN matches
between pose-neighbour pairs, verification against the known epipolar geometry and
triangulation with the poses fixed (pycolmap, :func:`hloc_bpnp.mapping.build_map_from_poses`),
refreshed with the frozen copy. Nothing needs depth maps.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from ..io.scene import Scene, SceneImage
from .data import TrainScene, assign_references, make_view
from .localization import MapView

logger = logging.getLogger(__name__)

#: mapping conf used to triangulate training maps (features are given by the network)
TRAIN_MAP_CONF = {
    "matcher": "mnn",
    "pairs": {"method": "poses", "num_pairs": 5, "rotation_threshold_deg": 60.0},
    "verification": {"method": "poses", "max_error": 4.0, "min_num_inliers": 15},
    "triangulation": {"triangulation": {"ignore_two_view_tracks": False, "min_angle": 1.5},
                      "mapper": {"filter_max_reproj_error": 4.0, "filter_min_tri_angle": 1.5}},
}


def load_real_scene(path: Union[str, Path]) -> Scene:
    """A posed scene from a folder: Strecha layout (``images/``, ``gt_dense_cameras/``) or a
    Middlebury folder (``*_par.txt``). Raises ValueError for anything else."""
    from ..io.datasets import read_middlebury, read_strecha

    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"scene folder not found: {path}")
    if (path / "gt_dense_cameras").is_dir():
        return read_strecha(path)
    if list(path.glob("*_par.txt")):
        return read_middlebury(path)
    raise ValueError(f"{path}: not a Strecha-layout folder (images/, gt_dense_cameras/) nor a Middlebury "
                     f"folder (*_par.txt)")


def load_map_scene(model: Union[str, Path], images: Union[str, Path], min_shared: int = 15,
                   pairs_per_image: int = 10) -> Tuple[Scene, Optional[List[Tuple[str, str]]]]:
    """A posed scene from a COLMAP model (an SfM map: its poses and intrinsics are taken as the
    truth) and its image folder, with the pairs to train on: for each image, its
    ``pairs_per_image`` most covisible images sharing at least ``min_shared`` 3D points.

    ``model`` is a COLMAP model folder (``cameras``/``images``/``points3D``) or a saved
    ``hloc-bpnp map`` folder (its ``sfm/`` model). Returns ``(scene, pairs)``; ``pairs`` is
    None for a small model (<= 20 images) without 3D points (every pair is then matched).

    Raises:
        FileNotFoundError: ``model`` or ``images`` is not a folder.
        ValueError: an image of the model is missing under ``images``, fewer than 4 images are
            registered, or a large model has no covisible pair.
    """
    from ..io.colmap import covisibility, read_model, scene_from_model

    model, images = Path(model), Path(images)
    if not model.is_dir():
        raise FileNotFoundError(f"COLMAP model folder not found: {model}")
    if (model / "map.json").is_file() and (model / "sfm").is_dir():
        model = model / "sfm"  # a saved hloc-bpnp map
    if not images.is_dir():
        raise FileNotFoundError(f"image folder of the model {model} not found: {images}")
    rec = read_model(model)
    scene = scene_from_model(rec, images)
    missing = [n for n in scene.names if not (images / n).is_file()]
    if missing:
        raise ValueError(f"{images}: {len(missing)} images of the model {model} are missing, e.g. {missing[:3]}")
    if len(scene) < 4:
        raise ValueError(f"model {model}: {len(scene)} registered images; refiner training needs at least 4")
    cov = covisibility(rec, min_shared=min_shared)
    pairs = sorted({tuple(sorted((a, b))) for a, nb in cov.items() for b in list(nb)[:pairs_per_image]})
    if not pairs:
        if len(scene) > 20:
            raise ValueError(f"model {model}: no two images share {min_shared} 3D points (no covisible pairs)")
        logger.warning("model %s has no covisible pairs (no 3D points?): matching all %d images pairwise", model,
                       len(scene))
        return scene, None
    return scene, pairs


def train_scene_from_posed(scene: Scene, name: str, num_refs: int = 3, multiple: int = 32,
                           resize_max: Optional[int] = 1024, channels: int = 1) -> TrainScene:
    """Wrap a posed :class:`Scene` (images read from ``scene.image_dir``) as a TrainScene
    without depth: every view is a query and a map view."""
    from ..io.image import read_image

    if scene.image_dir is None:
        raise ValueError(f"scene {name!r} has no image folder")
    views = {}
    for im in scene:
        if im.pose is None:
            raise ValueError(f"scene {name!r}: image {im.name!r} has no pose")
        rgb = read_image(Path(scene.image_dir) / im.name, grayscale=False)
        views[im.name] = make_view(im.name, rgb, im.camera, im.pose, None, multiple=multiple,
                                   resize_max=resize_max, channels=channels)
    names = list(views)
    ts = TrainScene(name, views, names, names)
    assign_references(ts, num_refs)
    return ts


def triangulated_map_views(net: torch.nn.Module, scene: TrainScene, names: Optional[Sequence[str]] = None,
                           conf: Optional[Dict] = None) -> Dict[str, MapView]:
    """Map views of ``scene`` with 3D points triangulated from ``net``'s features and the GT poses.

    Returns:
        name -> MapView holding only the keypoints that got a 3D point (may be empty).
    """
    from ..config import merge
    from ..mapping.build import build_map_from_poses

    names = list(names if names is not None else scene.map_names)
    feats = {}
    was = net.training
    net.eval()
    try:
        with torch.no_grad():
            for n in names:
                v = scene.views[n]
                out = net(v.image[None])
                ok = out["valid"][0]
                H, W = v.image.shape[-2:]
                feats[n] = {"keypoints": (out["keypoints"][0][ok] + 0.5).float().cpu().numpy(),
                            "descriptors": out["descriptors"][0][ok].float().cpu().numpy(),
                            "scores": out["scores"][0][ok].float().cpu().numpy(),
                            "image_size": np.array([W, H], dtype=np.int64)}
    finally:
        net.train(was)
    posed = Scene([SceneImage(n, scene.views[n].camera, scene.views[n].pose) for n in names])
    # the features are given (every image): the config records the network that made them
    mconf = merge(TRAIN_MAP_CONF, conf or {}) | {"features": network_features_conf(net)}
    try:
        m = build_map_from_poses(posed, conf=mconf, features=feats, progress=False)
    except (RuntimeError, ValueError) as e:
        raise ValueError(f"training scene {scene.name!r}: triangulating its map from the known poses failed "
                         f"({e}); it would train on nothing: check its poses/intrinsics or drop it") from e
    out: Dict[str, MapView] = {}
    for n in names:
        f = feats[n]
        rows = m.kp_to_point.get(n) if n in m.kp_to_point else None
        if rows is None:
            out[n] = _empty(n, f)
            continue
        rows = np.asarray(rows)
        keep = rows >= 0
        out[n] = MapView(n, torch.from_numpy(f["keypoints"][keep]).double(),
                         torch.from_numpy(f["descriptors"][keep]),
                         torch.from_numpy(m.points3D[rows[keep]]).double(),
                         torch.from_numpy(f["image_size"]))
    logger.info("scene %s: training map with %d points, %s keypoints with 3D per view", scene.name,
                len(m.points3D), [int(v.keypoints.shape[0]) for v in out.values()])
    return out


def network_features_conf(net: torch.nn.Module) -> Dict:
    """The features section recorded in a training map: the trained network's extractor."""
    from ..features.networks import network_name

    name = network_name(net)
    return {"model": name, "preset": f"{name} (network being trained)"}


def _empty(name: str, f: Dict) -> MapView:
    D = f["descriptors"].shape[1]
    return MapView(name, torch.zeros(0, 2, dtype=torch.float64), torch.zeros(0, D), torch.zeros(0, 3, dtype=torch.float64),
                   torch.from_numpy(f["image_size"]))


def load_real_scenes(paths: Sequence[Union[str, Path]], num_refs: int = 3, resize_max: Optional[int] = 1024,
                     multiple: int = 32, channels: int = 1, exclude: Sequence[str] = ()) -> List[TrainScene]:
    """TrainScenes from scene folders (names = folder names). ``exclude``: folder names that
    must not train (evaluation scenes): passing one raises ValueError."""
    out = []
    for p in paths:
        p = Path(p)
        if p.name in set(exclude):
            raise ValueError(f"scene {p.name!r} is an evaluation scene and must not train")
        out.append(train_scene_from_posed(load_real_scene(p), p.name, num_refs, multiple, resize_max, channels))
        logger.info("real scene %s: %d views", p.name, len(out[-1].views))
    return out
