"""On-disk layout of a synthetic scene, and its reader.

::

    DIR/images/<name>                    RGB PNG, name = map/NNNN.png | query/NNNN.png
    DIR/depth/<name without .png>.npy    (H, W) float32 z in the camera frame, 0 = no surface
    DIR/sfm_gt/                          COLMAP text model of ALL images with GT poses (no points)
    DIR/sfm_map/                         the same for the MAP images only (the ``map --reference``)
    DIR/map_list.txt                     map image names, one per line
    DIR/query_list_with_intrinsics.txt   hloc query list: name MODEL W H params...
    DIR/scene.json                       seed, preset, config, surfaces, textures, and the exact
                                         (float64) cameras and poses of every image

``scene.json`` is the reader's source of truth (full precision); ``sfm_gt`` and the lists are
for the rest of the pipeline (map building, localization, evaluation).
"""
from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Dict, Union

import numpy as np
import torch
from PIL import Image

from ..geometry import Camera, Pose
from ..io.scene import Scene, SceneImage
from .surfaces import surfaces_from_list, surfaces_to_list
from .textures import TextureBank

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1



def _write_image(path: Path, image: np.ndarray) -> None:
    """PNG through :func:`hloc_bpnp.io.png.write_png` (Pillow's PNG encoder is unsafe after
    ``import pycolmap``, see ``io/png.py``), other formats through Pillow; atomically."""
    from ..io.png import atomic_write_bytes, write_png

    if path.suffix.lower() == ".png":
        write_png(path, image)
        return
    import io

    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format=Image.registered_extensions().get(path.suffix.lower(), "PNG"))
    atomic_write_bytes(path, buf.getvalue())

def depth_path(root: Path, name: str) -> Path:
    return Path(root) / "depth" / (str(Path(name).with_suffix("")) + ".npy")


def _camera_dict(cam: Camera) -> Dict:
    return {"model": cam.model, "width": cam.width, "height": cam.height,
            "params": cam.params.detach().double().cpu().tolist()}


def _pose_dict(pose: Pose) -> Dict:
    return {"R": pose.R.detach().double().cpu().tolist(), "t": pose.t.detach().double().cpu().tolist()}


def write_synthetic_scene(syn, path: Union[str, Path], overwrite: bool = False) -> Path:
    """Write a :class:`~hloc_bpnp.synthetic.generator.SyntheticScene` to ``path``.

    Raises FileExistsError if ``path/scene.json`` exists and not ``overwrite``.
    """
    from ..io.hloc_text import write_query_list

    root = Path(path)
    if (root / "scene.json").exists():
        if not overwrite:
            raise FileExistsError(f"{root} already holds a synthetic scene (scene.json); use overwrite")
        for sub in ("images", "depth", "sfm_gt", "sfm_map"):
            shutil.rmtree(root / sub, ignore_errors=True)
    root.mkdir(parents=True, exist_ok=True)
    entries = []
    for im in syn.scene:
        img_path = root / "images" / im.name
        _write_image(img_path, np.asarray(syn.images[im.name]))
        dp = depth_path(root, im.name)
        dp.parent.mkdir(parents=True, exist_ok=True)
        np.save(dp, np.asarray(im.depth, np.float32))
        role = "query" if im.name in set(syn.query_names) else "map"
        entries.append({"name": im.name, "role": role, "camera": _camera_dict(im.camera),
                        "pose": _pose_dict(im.pose)})
    syn.scene.write_colmap(root / "sfm_gt", text=True)
    syn.scene.subset(list(syn.map_names)).write_colmap(root / "sfm_map", text=True)  # map images only
    (root / "map_list.txt").write_text("".join(n + "\n" for n in syn.map_names), encoding="utf-8")
    write_query_list(root / "query_list_with_intrinsics.txt", syn.query_cameras())
    meta = {
        "format_version": FORMAT_VERSION, "seed": syn.seed, "preset": syn.preset, "conf": syn.conf,
        "textures": syn.textures.to_dict(), "surfaces": surfaces_to_list(syn.surfaces),
        "images": entries,
    }
    (root / "scene.json").write_text(json.dumps(meta, indent=1), encoding="utf-8")
    logger.info("Wrote synthetic scene (%d map, %d query images) to %s",
                len(syn.map_names), len(syn.query_names), root)
    return root


def load_synthetic_scene(path: Union[str, Path]):
    """Read a scene written by :func:`write_synthetic_scene` (images load lazily).

    Returns:
        SyntheticScene whose ``scene.image_dir`` is ``path/images``.
    """
    from .generator import LazyImages, SyntheticScene

    root = Path(path)
    meta_path = root / "scene.json"
    if not meta_path.is_file():
        raise FileNotFoundError(f"No synthetic scene at {root}: {meta_path} is missing")
    meta = json.loads(meta_path.read_text(encoding="utf-8"))
    if meta.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{meta_path}: unsupported format_version {meta.get('format_version')!r} "
                         f"(this reader handles {FORMAT_VERSION})")
    images = []
    for e in meta["images"]:
        c = e["camera"]
        cam = Camera(c["model"], c["width"], c["height"], torch.tensor(c["params"], dtype=torch.float64))
        pose = Pose(torch.tensor(e["pose"]["R"], dtype=torch.float64), torch.tensor(e["pose"]["t"], dtype=torch.float64))
        dp = depth_path(root, e["name"])
        if not dp.is_file():
            raise FileNotFoundError(f"{meta_path} lists {e['name']!r} but its depth {dp} is missing")
        images.append(SceneImage(e["name"], cam, pose, np.load(dp)))
    scene = Scene(images, root / "images", {"seed": meta["seed"], "preset": meta["preset"],
                                           "generator": "hloc_bpnp.synthetic"})
    names = [e["name"] for e in meta["images"]]
    return SyntheticScene(
        conf=meta["conf"], preset=meta["preset"], seed=meta["seed"],
        surfaces=surfaces_from_list(meta["surfaces"]), textures=TextureBank.from_dict(meta["textures"]),
        scene=scene, images=LazyImages(root / "images", names),
        map_names=[e["name"] for e in meta["images"] if e["role"] == "map"],
        query_names=[e["name"] for e in meta["images"] if e["role"] == "query"],
    )
