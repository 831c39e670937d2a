"""Cambridge Landmarks (Kendall et al., PoseNet, ICCV 2015): King's College, Old Hospital, ...

``dataset_train.txt`` / ``dataset_test.txt``: three header lines, then
``seq/frameXXXXX.png X Y Z W P Q R`` where ``(X, Y, Z)`` is the camera centre and
``(W, P, Q, R)`` the world-to-camera quaternion (w, x, y, z) of the VisualSfM model
``reconstruction.nvm`` the labels come from. So ``cam_from_world = (R(q), -R(q) c)``,
exactly as the NVM's cameras (:mod:`hloc_bpnp.io.nvm`).

Intrinsics: the NVM stores a focal length and a radial distortion per image (its names end
in ``.jpg`` while the frames are ``.png``: images are matched by name without extension).
hloc instead uses Sattler's COLMAP SIMPLE_RADIAL models rescaled to the image size; give
``intrinsics`` (an hloc query list / dict) to use those. The image size comes from the
image files or ``image_size`` (the frames are 1920x1080).
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Dict, Optional, Tuple, Union

from ...geometry import Camera, Pose
from ..hloc_text import check_file, format_error, parse_qt, read_query_list
from ..nvm import nvm_camera_to_colmap, read_nvm
from ..scene import Scene, SceneImage
from ._common import check_dir, image_size as _image_size

logger = logging.getLogger(__name__)

PathLike = Union[str, Path]
SCENES = ("KingsCollege", "OldHospital", "ShopFacade", "StMarysChurch", "GreatCourt", "Street")
SPLIT_FILES = {"train": "dataset_train.txt", "test": "dataset_test.txt"}


def read_cambridge_split(path: PathLike) -> Dict[str, Pose]:
    """``{name: cam_from_world}`` from a ``dataset_{train,test}.txt`` file (3 header lines)."""
    path = check_file(path, "Cambridge split file")
    out: Dict[str, Pose] = {}
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if lineno <= 3:
                continue
            fields = line.split()
            if not fields:
                continue
            if len(fields) != 8:
                raise format_error(path, lineno, f"expected 'name X Y Z W P Q R' (8 fields), got {len(fields)}")
            name = fields[0]
            # parse_qt takes (qw qx qy qz tx ty tz); here the last 3 of the 7 are the centre
            qc = parse_qt(path, lineno, fields[4:8] + fields[1:4], f"pose of {name!r}")
            pose = Pose.from_center(qc.R, qc.t)
            if name in out:
                raise format_error(path, lineno, f"duplicate image {name!r}")
            out[name] = pose
    return out


def read_cambridge(
    scene_dir: PathLike,
    split: str = "all",
    nvm: Optional[PathLike] = "reconstruction.nvm",
    intrinsics: Union[PathLike, Dict[str, Camera], None] = None,
    image_size: Optional[Tuple[int, int]] = None,
    radial: str = "fit",
) -> Scene:
    """Read one Cambridge Landmarks scene.

    Args:
        scene_dir: e.g. ``datasets/cambridge/KingsCollege``.
        split: "train", "test" or "all" (train then test).
        nvm: NVM file (relative to scene_dir) giving per-image focal + distortion; used
            when ``intrinsics`` is None.
        intrinsics: hloc query-list file or ``{name: Camera}``; overrides the NVM.
        image_size: (W, H) used when the image file is absent.
        radial: NVM distortion conversion, see :func:`hloc_bpnp.io.nvm.nvm_camera_to_colmap`.
    Returns:
        Scene (``image_dir = scene_dir``) with ``metadata["split"]`` = {name: "train"|"test"}.
    """
    scene_dir = check_dir(scene_dir, "Cambridge scene")
    splits = ("train", "test") if split == "all" else (split,)
    if any(s not in SPLIT_FILES for s in splits):
        raise ValueError(f"split must be 'train', 'test' or 'all', got {split!r}")
    poses: Dict[str, Pose] = {}
    which: Dict[str, str] = {}
    for s in splits:
        for name, pose in read_cambridge_split(scene_dir / SPLIT_FILES[s]).items():
            poses[name] = pose
            which[name] = s
    if isinstance(intrinsics, (str, Path)):
        intrinsics = read_query_list(intrinsics)
    nvm_cams = {}
    nvm_path = None
    if intrinsics is None:
        if nvm is None:
            raise ValueError("read_cambridge needs either the NVM model or intrinsics for the cameras")
        nvm_path = Path(nvm) if Path(nvm).is_absolute() else scene_dir / nvm
        nvm_cams = {Path(c.name).with_suffix("").as_posix(): c for c in read_nvm(nvm_path, skip_points=True).cameras}
    images = []
    for name, pose in poses.items():
        if intrinsics is not None:
            if name not in intrinsics:
                raise KeyError(f"image {name!r} missing from the given intrinsics")
            camera = intrinsics[name]
        else:
            key = Path(name).with_suffix("").as_posix()
            if key not in nvm_cams:
                raise KeyError(f"image {name!r} of the {which[name]} split not found in {nvm_path}")
            if (scene_dir / name).is_file():
                w, h = _image_size(scene_dir / name)
            elif image_size is not None:
                w, h = image_size
            else:
                raise FileNotFoundError(2, "image not found and no image_size given", str(scene_dir / name))
            camera = nvm_camera_to_colmap(nvm_cams[key], w, h, radial)
        images.append(SceneImage(name, camera, pose))
    logger.info("Read Cambridge %s (%s): %d images", scene_dir.name, split, len(images))
    return Scene(images, scene_dir, {"dataset": "cambridge", "scene": scene_dir.name, "split": which})
