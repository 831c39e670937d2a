"""In-memory scene description shared by dataset readers and the synthetic generator.

A :class:`Scene` is a list of :class:`SceneImage` (name relative to ``image_dir``,
:class:`~hloc_bpnp.geometry.Camera`, ground-truth :class:`~hloc_bpnp.geometry.Pose`
``cam_from_world``) that can be written as a COLMAP reference model (no 3D points), the
input of map building from known poses.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np

from ..geometry import Camera, Pose

logger = logging.getLogger(__name__)


@dataclass
class SceneImage:
    """One image of a scene.

    Attributes:
        name: path relative to the scene's image folder (may contain '/').
        camera: unbatched Camera (params of shape (P,)).
        pose: unbatched ground-truth Pose cam_from_world, or None if unknown.
        depth: optional (H, W) float32 depth map (z in the camera frame; 0 = no surface).
    """

    name: str
    camera: Camera
    pose: Optional[Pose] = None
    depth: Optional[np.ndarray] = None


@dataclass
class Scene:
    """A set of images with cameras and (optionally) ground-truth poses."""

    images: List[SceneImage]
    image_dir: Optional[Path] = None
    metadata: Dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.images)

    def __iter__(self):
        return iter(self.images)

    @property
    def names(self) -> List[str]:
        return [im.name for im in self.images]

    def __getitem__(self, key):
        if isinstance(key, str):
            for im in self.images:
                if im.name == key:
                    return im
            import difflib

            close = difflib.get_close_matches(key, self.names, n=3)
            raise KeyError(f"Image {key!r} not in scene; close matches: {close}")
        return self.images[key]

    def subset(self, names) -> "Scene":
        names = set(names)
        return Scene([im for im in self.images if im.name in names], self.image_dir, dict(self.metadata))

    def to_reconstruction(self, share_cameras: bool = False):
        """A ``pycolmap.Reconstruction`` holding cameras and GT poses (no 3D points).

        Args:
            share_cameras: reuse one camera id for images with identical intrinsics.
        """
        import pycolmap

        rec = pycolmap.Reconstruction()
        cam_ids: Dict[tuple, int] = {}
        for image_id, im in enumerate(self.images, start=1):
            if im.pose is None:
                raise ValueError(f"Image {im.name!r} has no pose: cannot write a reference model")
            pc = im.camera.to_pycolmap()
            key = (im.camera.model, im.camera.width, im.camera.height, tuple(np.round(pc.params, 12)))
            if share_cameras and key in cam_ids:
                cam_id = cam_ids[key]
            else:
                cam_id = len(cam_ids) + 1 if share_cameras else image_id
                pc.camera_id = cam_id
                rec.add_camera_with_trivial_rig(pc)
                cam_ids[key] = cam_id
            img = pycolmap.Image(name=im.name, camera_id=cam_id, image_id=image_id)
            rec.add_image_with_trivial_frame(img, im.pose.to_pycolmap())
        return rec

    def write_colmap(self, path, text: bool = True, share_cameras: bool = False) -> Path:
        """Write the scene as a COLMAP model folder (``cameras``, ``images``, ``points3D``)."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        rec = self.to_reconstruction(share_cameras=share_cameras)
        if text:
            rec.write_text(str(path))
        else:
            rec.write(str(path))
        logger.info("Wrote COLMAP model with %d images to %s", len(self.images), path)
        return path

    @classmethod
    def from_reconstruction(cls, rec, image_dir=None) -> "Scene":
        """From a ``pycolmap.Reconstruction`` (registered images, sorted by name)."""
        images = []
        for img in sorted(rec.images.values(), key=lambda i: i.name):
            has_pose = img.has_pose if hasattr(img, "has_pose") else True
            pose = Pose.from_pycolmap(img.cam_from_world) if has_pose else None
            cam = Camera.from_pycolmap(rec.cameras[img.camera_id])
            images.append(SceneImage(img.name, cam, pose))
        return cls(images, Path(image_dir) if image_dir else None)

