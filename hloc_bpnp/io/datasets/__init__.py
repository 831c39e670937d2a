"""Dataset readers: each returns a :class:`~hloc_bpnp.io.Scene` with cameras, GT poses and
``image_dir`` set, ready for ``Scene.write_colmap`` (the reference model)."""
from .aachen import AachenData, read_aachen
from .cambridge import read_cambridge, read_cambridge_split
from .middlebury import read_middlebury
from .seven_scenes import DEFAULT_CAMERA as SEVEN_SCENES_CAMERA
from .seven_scenes import load_7scenes_depth, read_7scenes, read_7scenes_pose, read_7scenes_split
from .strecha import read_strecha, read_strecha_camera

__all__ = [
    "AachenData", "read_aachen", "read_cambridge", "read_cambridge_split", "read_middlebury",
    "SEVEN_SCENES_CAMERA", "load_7scenes_depth", "read_7scenes", "read_7scenes_pose",
    "read_7scenes_split", "read_strecha", "read_strecha_camera",
]
