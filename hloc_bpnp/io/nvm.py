"""VisualSfM NVM (``NVM_V3``) models: Cambridge Landmarks, Aachen Day-Night, RobotCar.

File layout (first model only; later models and the PLY section are ignored)::

    NVM_V3 [FixedK fx cx fy cy r]
    <number of cameras>
    <name> <focal> <qw qx qy qz> <cx cy cz> <radial> 0      (one line per camera)
    <number of points>
    <x y z> <r g b> <n> (<image index> <feature index> <mx my>) * n

The quaternion is the world-to-camera rotation ``R`` and ``c`` the camera centre, so
``cam_from_world = (R, -R c)``. Measurements ``(mx, my)`` are measured (distorted) pixels
relative to the image centre.

Radial distortion. VisualSfM (through PBA's ``SetNormalizedMeasurementDistortion``)
*undistorts measurements*: with ``m`` the measured point in focal units relative to the
principal point, the ideal point is ``u = m (1 + k_nvm |m|^2)``. COLMAP's SIMPLE_RADIAL goes
the other way, *distorting ideal points*: ``m = u (1 + k |u|^2)``. The two agree only to
first order with ``k = -k_nvm``. hloc never converts this value: ``colmap_from_nvm.py``
skips the NVM focal length and distortion and takes SIMPLE_RADIAL intrinsics from a
separate file (Aachen's ``database_intrinsics.txt``), and its Cambridge / 7-Scenes
pipelines use separately built COLMAP models. We do the same when an intrinsics file is
given; otherwise :func:`nvm_radial_to_colmap` fits ``k`` by least squares to the exact NVM
inverse over the image's radius range (``radial="fit"``, default), or uses the first-order
``-k_nvm`` (``radial="first_order"``), or drops it (``radial="ignore"``, PINHOLE-like
SIMPLE_RADIAL with k = 0). The principal point is the image centre ``(W/2, H/2)`` in COLMAP
pixel convention. SIMPLE_RADIAL needs the image size: from ``intrinsics``, ``image_sizes``,
the image file (PIL reads only the header), or ``default_size``, in that order.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Tuple, Union

import numpy as np
import torch

from ..geometry import Camera, Pose
from .hloc_text import check_file, format_error, iter_fields, parse_floats, parse_int, read_query_list
from .scene import Scene, SceneImage

logger = logging.getLogger(__name__)

PathLike = Union[str, Path]

__all__ = [
    "NVMCamera", "NVMModel", "read_nvm", "nvm_radial_to_colmap", "nvm_camera_to_colmap",
    "image_size", "scene_from_nvm", "reconstruction_from_nvm",
]


@dataclass
class NVMCamera:
    """One NVM camera line.

    Attributes:
        name: image name (a leading ``./`` is removed).
        focal: focal length in pixels.
        qvec: (4,) float64 world-to-camera quaternion (w, x, y, z), normalised.
        center: (3,) float64 camera centre in world coordinates.
        radial: NVM measurement distortion (focal-normalised, see module docstring).
        lineno: line of the file it came from.
    """

    name: str
    focal: float
    qvec: np.ndarray
    center: np.ndarray
    radial: float
    lineno: int = 0

    @property
    def pose(self) -> Pose:
        """cam_from_world as an unbatched float64 Pose."""
        R = Pose.from_qt(torch.tensor(self.qvec), torch.zeros(3, dtype=torch.float64)).R
        return Pose.from_center(R, torch.tensor(self.center, dtype=torch.float64))


@dataclass
class NVMModel:
    """The first model of an NVM file.

    Attributes:
        cameras: list of :class:`NVMCamera` in file order (the observations' image index).
        xyz: (M, 3) float64 points. colors: (M, 3) uint8.
        obs_point: (O,) int64 point index of each observation.
        obs_image: (O,) int64 camera index. obs_feature: (O,) int64 feature index.
        obs_xy: (O, 2) float64 measured pixels relative to the image centre.
        fixed_k: (fx, cx, fy, cy, r) from an ``NVM_V3 FixedK`` header, else None.
    """

    cameras: List[NVMCamera]
    xyz: np.ndarray
    colors: np.ndarray
    obs_point: np.ndarray
    obs_image: np.ndarray
    obs_feature: np.ndarray
    obs_xy: np.ndarray
    fixed_k: Optional[Tuple[float, ...]] = None
    path: Optional[Path] = None

    @property
    def names(self) -> List[str]:
        return [c.name for c in self.cameras]


def read_nvm(path: PathLike, skip_points: bool = False) -> NVMModel:
    """Parse an NVM_V3 file (first model). Errors name the file and the 1-based line."""
    path = check_file(path, "NVM file")
    lines = iter_fields(path, "NVM file")

    def next_line(what: str):
        try:
            return next(lines)
        except StopIteration:
            raise format_error(path, None, f"unexpected end of file while reading {what}") from None

    lineno, header = next_line("the NVM_V3 header")
    if header[0] != "NVM_V3":
        raise format_error(path, lineno, f"expected header 'NVM_V3', got {' '.join(header[:3])!r}")
    fixed_k = None
    if len(header) > 1:
        if header[1] != "FixedK" or len(header) != 7:
            raise format_error(path, lineno, "header must be 'NVM_V3' or 'NVM_V3 FixedK fx cx fy cy r'")
        fixed_k = tuple(parse_floats(path, lineno, header[2:], "FixedK intrinsics"))

    lineno, f = next_line("the number of cameras")
    if len(f) != 1:
        raise format_error(path, lineno, f"expected the number of cameras alone on the line, got {len(f)} fields")
    num_cams = parse_int(path, lineno, f[0], "number of cameras", minimum=0)
    cameras: List[NVMCamera] = []
    for i in range(num_cams):
        lineno, f = next_line(f"camera {i + 1} of {num_cams}")
        if len(f) != 11:
            raise format_error(
                path, lineno, f"camera line needs 11 fields 'name focal qw qx qy qz cx cy cz radial 0', got {len(f)}"
            )
        v = parse_floats(path, lineno, f[1:], f"camera {f[0]!r}")
        focal, q, c, radial = v[0], np.array(v[1:5]), np.array(v[5:8]), v[8]
        if focal <= 0:
            raise format_error(path, lineno, f"focal length must be positive, got {focal}")
        n = np.linalg.norm(q)
        if n < 1e-12:
            raise format_error(path, lineno, f"zero quaternion {v[1:5]} is not a rotation")
        name = f[0][2:] if f[0].startswith("./") else f[0]
        cameras.append(NVMCamera(name, focal, q / n, c, radial, lineno))

    xyz = np.zeros((0, 3))
    colors = np.zeros((0, 3), dtype=np.uint8)
    obs_p: List[int] = []
    obs_i: List[int] = []
    obs_f: List[int] = []
    obs_xy: List[Tuple[float, float]] = []
    if not skip_points:
        try:
            lineno, f = next(lines)
        except StopIteration:
            f = None  # a model without a point section
        if f is not None:
            if len(f) != 1:
                raise format_error(path, lineno, f"expected the number of points alone on the line, got {len(f)} fields")
            num_pts = parse_int(path, lineno, f[0], "number of points", minimum=0)
            # grown line by line: a corrupt count fails as a truncated file, not a huge allocation
            xyz_rows: List[List[float]] = []
            color_rows: List[List[int]] = []
            for j in range(num_pts):
                lineno, f = next_line(f"point {j + 1} of {num_pts}")
                if len(f) < 7:
                    raise format_error(path, lineno, f"point line needs 'x y z r g b n ...', got {len(f)} fields")
                xyz_rows.append(parse_floats(path, lineno, f[:3], "point xyz"))
                color_rows.append([parse_int(path, lineno, t, "color", minimum=0, maximum=255) for t in f[3:6]])
                n_obs = parse_int(path, lineno, f[6], "number of measurements", minimum=0)
                if len(f) != 7 + 4 * n_obs:
                    raise format_error(
                        path, lineno, f"point with {n_obs} measurements needs {7 + 4 * n_obs} fields, got {len(f)}"
                    )
                for k in range(n_obs):
                    s = 7 + 4 * k
                    img = parse_int(path, lineno, f[s], "image index", minimum=0)
                    if img >= num_cams:
                        raise format_error(path, lineno, f"image index {img} out of range (file has {num_cams} cameras)")
                    obs_p.append(j)
                    obs_i.append(img)
                    obs_f.append(parse_int(path, lineno, f[s + 1], "feature index", minimum=0))
                    obs_xy.append(tuple(parse_floats(path, lineno, f[s + 2:s + 4], "measurement")))
            xyz = np.array(xyz_rows, dtype=np.float64).reshape(-1, 3)
            colors = np.array(color_rows, dtype=np.uint8).reshape(-1, 3)
    model = NVMModel(
        cameras, xyz, colors,
        np.array(obs_p, dtype=np.int64), np.array(obs_i, dtype=np.int64), np.array(obs_f, dtype=np.int64),
        np.array(obs_xy, dtype=np.float64).reshape(-1, 2), fixed_k, path,
    )
    logger.info("Read NVM %s: %d cameras, %d points, %d observations", path, len(cameras), len(xyz), len(obs_p))
    return model


def nvm_radial_to_colmap(k_nvm: float, max_radius: float, num_samples: int = 256) -> float:
    """COLMAP SIMPLE_RADIAL ``k`` that best reproduces an NVM measurement distortion.

    Least squares over measured radii ``r in [0, max_radius]`` (focal units, weighted by r
    as image area is): the NVM ideal radius is ``u = r (1 + k_nvm r^2)``, COLMAP predicts
    ``u (1 + k u^2)``; minimising ``sum r (u (1 + k u^2) - r)^2`` gives ``k`` in closed form.

    Args:
        k_nvm: NVM radial distortion (focal-normalised).
        max_radius: largest measured radius, e.g. the image half-diagonal / focal.
    """
    if k_nvm == 0 or max_radius <= 0:
        return -float(k_nvm)
    r = np.linspace(0, max_radius, num_samples)[1:]
    u = r * (1 + k_nvm * r * r)
    w = r
    return float(np.sum(w * (r - u) * u ** 3) / np.sum(w * u ** 6))


def nvm_camera_to_colmap(cam: NVMCamera, width: int, height: int, radial: str = "fit") -> Camera:
    """SIMPLE_RADIAL ``(f, W/2, H/2, k)`` for an NVM camera (see module docstring)."""
    if radial == "fit":
        half_diag = 0.5 * float(np.hypot(width, height)) / cam.focal
        k = nvm_radial_to_colmap(cam.radial, half_diag)
    elif radial == "first_order":
        k = -cam.radial
    elif radial == "ignore":
        k = 0.0
    else:
        raise ValueError(f"radial must be 'fit', 'first_order' or 'ignore', got {radial!r}")
    params = torch.tensor([cam.focal, width / 2.0, height / 2.0, k], dtype=torch.float64)
    return Camera("SIMPLE_RADIAL", width, height, params)


def image_size(path: PathLike) -> Tuple[int, int]:
    """(width, height) of an image file (reads the header only)."""
    from PIL import Image

    with Image.open(check_file(path, "image")) as im:
        return im.size


def scene_from_nvm(
    nvm: Union[PathLike, NVMModel],
    image_dir: Optional[PathLike] = None,
    intrinsics: Union[PathLike, Dict[str, Camera], None] = None,
    image_sizes: Optional[Dict[str, Tuple[int, int]]] = None,
    default_size: Optional[Tuple[int, int]] = None,
    radial: str = "fit",
) -> Scene:
    """A :class:`Scene` (GT poses from the NVM) with cameras chosen as described above.

    Args:
        nvm: path or parsed model.
        image_dir: folder of the images (sizes are read from there when needed).
        intrinsics: an hloc query-list style file or dict ``{name: Camera}`` (e.g. Aachen's
            ``database_intrinsics.txt``); when given it must cover every image.
        image_sizes: ``{name: (W, H)}``; default_size: (W, H) for all others.
        radial: "fit" | "first_order" | "ignore" (see :func:`nvm_camera_to_colmap`).
    """
    model = nvm if isinstance(nvm, NVMModel) else read_nvm(nvm, skip_points=True)
    if isinstance(intrinsics, (str, Path)):
        intrinsics = read_query_list(intrinsics)
    image_dir = Path(image_dir) if image_dir is not None else None
    images = []
    for cam in model.cameras:
        if intrinsics is not None:
            if cam.name not in intrinsics:
                raise format_error(model.path or "<nvm>", cam.lineno, f"image {cam.name!r} missing from the intrinsics")
            camera = intrinsics[cam.name]
        else:
            if image_sizes is not None and cam.name in image_sizes:
                w, h = image_sizes[cam.name]
            elif image_dir is not None and (image_dir / cam.name).is_file():
                w, h = image_size(image_dir / cam.name)
            elif default_size is not None:
                w, h = default_size
            else:
                raise format_error(
                    model.path or "<nvm>", cam.lineno,
                    f"size of image {cam.name!r} unknown: not found under image_dir={image_dir} and no "
                    "image_sizes / default_size / intrinsics given",
                )
            camera = nvm_camera_to_colmap(cam, w, h, radial)
        images.append(SceneImage(cam.name, camera, cam.pose))
    return Scene(images, image_dir, {"source": str(model.path) if model.path else "nvm"})


def reconstruction_from_nvm(model: NVMModel, scene: Scene, with_points: bool = True):
    """A ``pycolmap.Reconstruction`` with the scene's cameras/poses and the NVM's points.

    Keypoints are the NVM measurements shifted by the principal point of each image's camera
    (COLMAP pixel convention); only triangulated keypoints exist (as in hloc's converter).
    ``scene`` must list the NVM's images in the same order (as :func:`scene_from_nvm` does).
    """
    import pycolmap

    if scene.names != model.names:
        raise ValueError("scene and NVM model must list the same images in the same order")
    rec = scene.to_reconstruction()
    if not with_points or len(model.xyz) == 0:
        return rec
    # per image: its observations in feature-index order become points2D
    order = np.lexsort((model.obs_feature, model.obs_image))
    obs_img = model.obs_image[order]
    bounds = np.searchsorted(obs_img, np.arange(len(model.cameras) + 1))
    point_obs: Dict[int, List[Tuple[int, int]]] = {}
    for i, im in enumerate(scene.images):
        sel = order[bounds[i]:bounds[i + 1]]
        if len(sel) == 0:
            continue
        c = im.camera.c.detach().cpu().numpy()
        xy = model.obs_xy[sel] + c
        image = rec.images[i + 1]
        image.points2D = [pycolmap.Point2D(p) for p in xy]
        for j, o in enumerate(sel.tolist()):
            point_obs.setdefault(int(model.obs_point[o]), []).append((i + 1, j))
    for pid in range(len(model.xyz)):
        track = pycolmap.Track()
        for image_id, p2d in point_obs.get(pid, []):
            track.add_element(image_id, p2d)
        if track.length() == 0:
            continue
        rec.add_point3D(model.xyz[pid], track, model.colors[pid])
    return rec
