"""Camera placement: look-at poses, intrinsics from a field of view, map and query paths.

Map cameras stand on an ellipse around the scene centre and look outward (at the walls),
their viewing angle sweeping an arc so neighbours overlap heavily and have a baseline.
Query cameras sit between two map neighbours, at a different radius and height and with
yaw/pitch/roll perturbations: they are seen by the map but from new viewpoints.
"""
from __future__ import annotations

from typing import Dict, List, Sequence, Tuple

import numpy as np
import torch

from ..geometry import CAMERA_MODELS, Camera, Pose


def look_at(eye, target, up=(0.0, 0.0, 1.0), roll_deg: float = 0.0) -> Pose:
    """cam_from_world pose of a camera at ``eye`` looking at ``target``.

    Camera axes follow COLMAP: x right, y down, z forward. ``up`` is the world up direction
    (the image's "up" is its projection); ``roll_deg`` rotates the camera about its optical
    axis (positive values turn the image content counter-clockwise as displayed).

    Args:
        eye, target, up: (3,) world vectors.
    Returns:
        unbatched float64 Pose.
    """
    eye = np.asarray(eye, np.float64)
    fwd = np.asarray(target, np.float64) - eye
    if np.linalg.norm(fwd) < 1e-12:
        raise ValueError("look_at: eye and target coincide")
    fwd /= np.linalg.norm(fwd)
    right = np.cross(fwd, np.asarray(up, np.float64))
    if np.linalg.norm(right) < 1e-9:
        raise ValueError(f"look_at: viewing direction {fwd} is parallel to up {up}")
    right /= np.linalg.norm(right)
    down = np.cross(fwd, right)
    r = np.deg2rad(roll_deg)
    right, down = np.cos(r) * right + np.sin(r) * down, -np.sin(r) * right + np.cos(r) * down
    R = np.stack([right, down, fwd])  # rows: camera axes in world coordinates
    return Pose.from_center(torch.from_numpy(R), torch.from_numpy(eye))


def camera_from_fov(model: str, width: int, height: int, hfov_deg: float,
                    distortion: Sequence[float] = ()) -> Camera:
    """A camera of a COLMAP model with the given horizontal field of view, centred principal
    point, square pixels and the given distortion coefficients (COLMAP order)."""
    if model not in CAMERA_MODELS:
        raise ValueError(f"Unsupported camera model {model!r}; supported: {sorted(CAMERA_MODELS)}")
    if not 1.0 < hfov_deg < 170.0:
        raise ValueError(f"hfov_deg must be in (1, 170), got {hfov_deg}")
    f = 0.5 * width / np.tan(np.deg2rad(hfov_deg) / 2)
    cx, cy = width / 2.0, height / 2.0
    dist = [float(d) for d in distortion]
    if model in ("SIMPLE_PINHOLE", "SIMPLE_RADIAL", "RADIAL"):
        params = [f, cx, cy]
    else:
        params = [f, f, cx, cy]
    n_dist = CAMERA_MODELS[model] - len(params)
    if dist and len(dist) != n_dist:
        raise ValueError(f"{model} takes {n_dist} distortion coefficients, got {len(dist)}: {dist}")
    params += dist or [0.0] * n_dist
    return Camera(model, width, height, torch.tensor(params, dtype=torch.float64))


def orbit_view(center: np.ndarray, rx: float, ry: float, theta: float, height: float,
               yaw: float, pitch: float, roll: float) -> Pose:
    """cam_from_world of a camera on the ellipse (radii rx, ry, angle theta) around ``center`` at
    ``height``, looking along the path direction turned by yaw, pitched and rolled (radians)."""
    eye = center + np.array([rx * np.cos(theta), ry * np.sin(theta), height])
    a = theta + yaw
    d = np.array([np.cos(a) * np.cos(pitch), np.sin(a) * np.cos(pitch), np.sin(pitch)])
    return look_at(eye, eye + d, roll_deg=np.rad2deg(roll))


def map_and_query_poses(conf: Dict, rng: np.random.Generator,
                        center=(0.0, 0.0, 0.0)) -> Tuple[List[Pose], List[Pose]]:
    """Poses of the map path and of held-out queries.

    ``conf`` keys (``path`` section of the generator config): ``radius`` [rx, ry], ``height``,
    ``arc_deg`` [start, end], ``num_map``, ``num_query``, ``pitch_deg``, ``yaw_offset_deg``,
    ``map_jitter`` {radius, height, yaw_deg, pitch_deg}, ``query`` {radius, height, yaw_deg,
    pitch_deg, roll_deg} (relative radius change, metres, degrees: uniform +-).
    Returns:
        (map poses, query poses), lists of unbatched Pose.
    """
    center = np.asarray(center, np.float64)
    rx, ry = (float(r) for r in conf["radius"])
    n_map, n_query = int(conf["num_map"]), int(conf["num_query"])
    if n_map < 2:
        raise ValueError(f"num_map must be >= 2, got {n_map}")
    a0, a1 = np.deg2rad(conf["arc_deg"][0]), np.deg2rad(conf["arc_deg"][1])
    full = abs(abs(a1 - a0) - 2 * np.pi) < 1e-6
    thetas = np.linspace(a0, a1, n_map, endpoint=not full)
    step = thetas[1] - thetas[0]
    pitch0 = np.deg2rad(conf["pitch_deg"])
    yaw0 = np.deg2rad(conf["yaw_offset_deg"])
    mj, qj = conf["map_jitter"], conf["query"]

    def u(x):
        return rng.uniform(-x, x)

    maps = []
    for th in thetas:
        s = 1 + u(mj["radius"])
        maps.append(orbit_view(center, rx * s, ry * s, th + u(0.1 * step), conf["height"] + u(mj["height"]),
                          yaw0 + np.deg2rad(u(mj["yaw_deg"])), pitch0 + np.deg2rad(u(mj["pitch_deg"])), 0.0))
    queries = []
    n_seg = n_map if full else n_map - 1
    segs = (np.arange(n_query) * n_seg) // max(n_query, 1)  # spread queries over the path
    for k in range(n_query):
        th = thetas[0] + (segs[k] + rng.uniform(0.3, 0.7)) * step
        s = 1 + u(qj["radius"])
        queries.append(orbit_view(center, rx * s, ry * s, th, conf["height"] + u(qj["height"]),
                             yaw0 + np.deg2rad(u(qj["yaw_deg"])), pitch0 + np.deg2rad(u(qj["pitch_deg"])),
                             np.deg2rad(u(qj["roll_deg"]))))
    return maps, queries
