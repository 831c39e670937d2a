"""Scene layouts: a town square enclosed by facades, or a room with furniture.

Both are an axis-aligned enclosure of size ``(sx, sy, sz)`` centred on the origin with the
ground at z = 0, four inward-facing walls, optional ceiling (``room``), boxes standing on
the ground between the camera path and the walls, and boxes protruding from the walls
(balconies, shelves) for depth variation. Cameras move on an ellipse inside (see
``cameras.py``); boxes keep a clearance from it.
"""
from __future__ import annotations

import logging
from typing import Dict, List

import numpy as np

from .surfaces import Layout, Surface, box_surfaces, box_texture_span, rectangle

logger = logging.getLogger(__name__)

LAYOUTS = ("facades", "room")


def _texture_size(extent: float, conf: Dict) -> int:
    n = extent / float(conf["texel_m"])
    size = 2 ** int(np.ceil(np.log2(max(n, 1.0))))
    return int(np.clip(size, conf["texture_min"], conf["texture_max"]))


def _path_points(conf: Dict, num: int = 360) -> np.ndarray:
    rx, ry = conf["path"]["radius"]
    th = np.linspace(0, 2 * np.pi, num, endpoint=False)
    return np.stack([rx * np.cos(th), ry * np.sin(th)], -1)


def build_layout(conf: Dict, rng: np.random.Generator) -> Layout:
    """Surfaces and texture sizes of the scene described by ``conf`` (see ``generator.py``).

    Raises ValueError if the camera path does not fit inside the enclosure.
    """
    kind = conf["layout"]
    if kind not in LAYOUTS:
        raise ValueError(f"Unknown layout {kind!r}; choose one of {LAYOUTS}")
    sx, sy, sz = (float(v) for v in conf["size"])
    rx, ry = (float(v) for v in conf["path"]["radius"])
    clearance = float(conf["clearance"])
    wall_depth_max = float(conf["wall_box_depth"][1])
    if rx + clearance + wall_depth_max >= sx / 2 or ry + clearance + wall_depth_max >= sy / 2:
        raise ValueError(
            f"Camera path radius {conf['path']['radius']} plus clearance {clearance} m and wall "
            f"boxes {wall_depth_max} m does not fit in a {kind} of size {conf['size']}"
        )
    tconf = conf["texture"]
    surfaces: List[Surface] = []
    sizes: Dict[int, int] = {}

    def new_tex(extent: float) -> int:
        tid = len(sizes)
        sizes[tid] = _texture_size(extent, tconf)
        return tid

    X, Y = sx / 2, sy / 2
    # ground (normal up) and walls facing the centre
    surfaces.append(rectangle([-X, -Y, 0], [1, 0, 0], [0, 1, 0], sx, sy, new_tex(max(sx, sy)), name="ground"))
    walls = [
        ([X, -Y, 0], [-1, 0, 0], sx, "wall_south"),   # y = -Y, faces +y
        ([X, Y, 0], [0, -1, 0], sy, "wall_east"),     # x = +X, faces -x
        ([-X, Y, 0], [1, 0, 0], sx, "wall_north"),    # y = +Y, faces -y
        ([-X, -Y, 0], [0, 1, 0], sy, "wall_west"),    # x = -X, faces +x
    ]
    for origin, u, length, name in walls:
        surfaces.append(rectangle(origin, u, [0, 0, 1], length, sz, new_tex(max(length, sz)), name=name))
    if kind == "room":
        surfaces.append(rectangle([-X, Y, sz], [1, 0, 0], [0, -1, 0], sx, sy, new_tex(max(sx, sy)), name="ceiling"))

    # boxes protruding from the walls
    lo_d, hi_d = conf["wall_box_depth"]
    for k in range(int(conf["num_wall_boxes"])):
        w = int(rng.integers(4))
        origin, u, length, _ = walls[w]
        u = np.asarray(u, np.float64)
        inward = np.cross(u, [0.0, 0.0, 1.0])  # wall normal, pointing into the scene
        width = rng.uniform(*conf["wall_box_width"])
        height = rng.uniform(*conf["wall_box_height"])
        depth = rng.uniform(lo_d, hi_d)
        along = rng.uniform(width / 2 + 0.1, max(length - width / 2 - 0.1, width / 2 + 0.1))
        z0 = rng.uniform(0.0, max(sz - height - 0.2, 0.0)) if rng.random() < 0.7 else 0.0
        center = np.asarray(origin, np.float64) + u * along + inward * depth / 2
        center[2] = z0 + height / 2
        yaw = np.arctan2(u[1], u[0])
        tid = new_tex(box_texture_span((width, depth, height)))
        surfaces += box_surfaces(center, (width, depth, height), yaw, tid, name=f"wall_box{k}")

    # free-standing boxes between the path and the walls
    path = _path_points(conf)
    placed: List[np.ndarray] = []
    lo, hi = np.asarray(conf["box_size"][0], float), np.asarray(conf["box_size"][1], float)
    for k in range(int(conf["num_boxes"])):
        for _ in range(200):
            size = rng.uniform(lo, hi)
            rho = 0.5 * np.hypot(size[0], size[1])
            c = rng.uniform([-X + rho + 0.1, -Y + rho + 0.1], [X - rho - 0.1, Y - rho - 0.1])
            if np.min(np.linalg.norm(path - c, axis=1)) < rho + clearance:
                continue
            if (c[0] / rx) ** 2 + (c[1] / ry) ** 2 < 1.0:  # inside the path: would block views
                continue
            if any(np.linalg.norm(c - p[:2]) < rho + p[2] + 0.2 for p in placed):
                continue
            break
        else:
            logger.warning("could not place free-standing box %d without collisions; skipped", k)
            continue
        placed.append(np.array([c[0], c[1], rho]))
        yaw = rng.uniform(0, np.pi)
        tid = new_tex(box_texture_span(size))
        surfaces += box_surfaces([c[0], c[1], size[2] / 2], size, yaw, tid, name=f"box{k}")
    return Layout(surfaces, sizes, np.zeros(3), sky=(kind == "facades"))
