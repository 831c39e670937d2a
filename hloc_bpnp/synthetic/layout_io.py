"""The synthetic scene type (:class:`SyntheticScene`), its on-disk layout, and its reader.

The type lives here, with its files, so that the generator imports this module and not the
reverse (no import circle).

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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Union

import numpy as np
import torch
from PIL import Image

from ..geometry import Camera, Pose
from ..io.scene import Scene, SceneImage
from .render import render
from .surfaces import Surface, sample_surface_points, surfaces_from_list, surfaces_to_list
from .textures import TextureBank

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1


class LazyImages(Mapping):
    """Read-only ``{name: (H, W, 3) uint8}`` mapping that loads PNGs on first access."""

    def __init__(self, image_dir: Path, names: Sequence[str]):
        self.image_dir = Path(image_dir)
        self._names = list(names)
        self._cache: Dict[str, np.ndarray] = {}

    def __getitem__(self, name: str) -> np.ndarray:
        if name not in self._names:
            raise KeyError(f"Image {name!r} not in scene ({len(self._names)} images)")
        if name not in self._cache:
            from ..io.image import read_image

            self._cache[name] = read_image(self.image_dir / name)
        return self._cache[name]

    def __iter__(self):
        return iter(self._names)

    def __len__(self) -> int:
        return len(self._names)


@dataclass
class SyntheticScene:
    """A generated scene: analytic surfaces, textures, GT cameras/poses/depths and images.

    Attributes:
        conf: the full generator config; preset: preset name (or None); seed: the seed.
        surfaces: the scene's rectangles (world frame, z up).
        textures: their TextureBank (regenerated from the seed on load).
        scene: hloc_bpnp Scene of all images (camera, GT pose, depth).
        images: {name: (H, W, 3) uint8} (lazy when loaded from disk).
        map_names, query_names: the split.
    """

    conf: Dict
    preset: Optional[str]
    seed: int
    surfaces: List[Surface]
    textures: TextureBank
    scene: Scene
    images: Mapping[str, np.ndarray]
    map_names: List[str]
    query_names: List[str] = field(default_factory=list)

    @property
    def map_scene(self) -> Scene:
        return self.scene.subset(self.map_names)

    @property
    def query_scene(self) -> Scene:
        return self.scene.subset(self.query_names)

    def query_cameras(self) -> Dict[str, Camera]:
        """{query name: Camera}, the content of an hloc query list."""
        return {n: self.scene[n].camera for n in self.query_names}

    def render_view(self, camera: Camera, pose: Pose, return_hits: bool = False):
        """Render a new view of this scene: (image (H, W, 3) uint8, depth (H, W) float32)."""
        return render(self.surfaces, camera, pose, self.textures, self.conf["shading"], return_hits)

    def sample_points(self, num: int, seed: int = 0, margin: float = 0.0):
        """(points (N, 3) float64, surface index (N,)) sampled by area over the surfaces."""
        return sample_surface_points(self.surfaces, num, np.random.default_rng(seed), margin)

    def write(self, path: Union[str, Path], overwrite: bool = False) -> Path:
        """Write the on-disk layout (see this module's docstring)."""
        return write_synthetic_scene(self, path, overwrite=overwrite)



def _write_image(path: Path, image: np.ndarray) -> None:
    """PNG through :func:`hloc_bpnp.io.png.write_png` (Pillow's PNG encoder is unsafe after
    ``import pycolmap``, see ``io/png.py``), other formats through Pillow; atomically."""
    from ..io.atomic import atomic_write_bytes
    from ..io.png import write_png

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
    """Write a :class:`SyntheticScene` to ``path``.

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
