"""A synthetic video sequence with exact ground truth, for sequence (SLAM) mode.

The prebuilt map covers part of a generated scene (its map views on an arc of the camera
ellipse); the sequence's camera moves along the ellipse from inside that coverage to well
outside it, then cuts abruptly back to another place (a teleport that forces relocalization)
and goes on from there. Every frame is rendered from the same textured surfaces as the map.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Union

import numpy as np
from tqdm import tqdm

from ..config import merge
from ..geometry import Camera, Pose
from ..synthetic.cameras import orbit_view
from ..synthetic.generator import SyntheticScene, generate_scene, make_cameras, resolve_conf

logger = logging.getLogger(__name__)

default_conf = {
    "preset": "facades",
    "map_arc_deg": [0.0, 150.0],   # the prebuilt map's views cover this arc of the ellipse
    "num_map": 8,
    "path_arc_deg": [20.0, 250.0],  # the sequence's first stretch (leaves coverage after ~150)
    "step_deg": 5.0,
    "cut_arc_deg": [60.0, 90.0],   # after the cut (abrupt jump), it goes on here
    "jitter": {"radius": 0.02, "height": 0.05, "yaw_deg": 1.0, "pitch_deg": 0.5},
    "frame_dt": 0.1,               # seconds between frames (timestamps)
}


@dataclass
class SyntheticSequence:
    """A generated map scene plus an ordered sequence of frames with GT poses.

    Attributes:
        scene: the :class:`SyntheticScene` of the map views (``scene.map_names``).
        names, images, timestamps, poses: the frames in order (``seq/NNNN.png``).
        camera: the frames' Camera.
        path_deg: each frame's angle on the camera ellipse.
        cut_index: index of the first frame after the abrupt cut.
        outside: per frame, True when its viewing direction is outside the map's arc.
    """

    scene: SyntheticScene
    names: List[str]
    images: Dict[str, np.ndarray]
    timestamps: List[float]
    poses: Dict[str, Pose]
    camera: Camera
    path_deg: List[float]
    cut_index: int
    outside: List[bool] = field(default_factory=list)
    conf: Dict = field(default_factory=dict)

    def frames(self):
        """(name, image, timestamp) triples for :meth:`SequenceLocalizer.run`."""
        return [(n, self.images[n], t) for n, t in zip(self.names, self.timestamps)]


def generate_sequence(conf: Optional[Union[Dict, str]] = None, seed: int = 0,
                      progress: bool = False) -> SyntheticSequence:
    """Generate the map scene and render the sequence (see the module docstring).

    Args:
        conf: overrides of :data:`default_conf` (``preset``: a ``configs/synthetic`` preset).
        seed: scene seed.
    """
    conf = merge(default_conf, {"preset": conf} if isinstance(conf, str) else (conf or {}))
    scene_conf, _ = resolve_conf(conf["preset"])
    path = dict(scene_conf["path"])
    a0, a1 = (float(a) for a in conf["map_arc_deg"])
    scene_conf = merge(scene_conf, {"path": {"arc_deg": [a0, a1], "num_map": int(conf["num_map"]), "num_query": 0}})
    syn = generate_scene(scene_conf, seed=seed, progress=progress)
    _, cam = make_cameras(syn.conf)
    rng = np.random.default_rng([seed, 9])
    step = float(conf["step_deg"])
    p0, p1 = (float(a) for a in conf["path_arc_deg"])
    c0, c1 = (float(a) for a in conf["cut_arc_deg"])
    first = list(np.arange(p0, p1 + 1e-9, step))
    second = list(np.arange(c0, c1 + 1e-9, step))
    angles = first + second
    center = np.asarray(_scene_center(syn), np.float64)
    rx, ry = (float(r) for r in path["radius"])
    j = conf["jitter"]

    def u(x):
        return rng.uniform(-x, x)

    names, images, poses, stamps, outside = [], {}, {}, [], []
    margin = 0.5 * float(syn.conf["camera"]["hfov_deg"])
    for i, th in enumerate(tqdm(angles, desc="render sequence", disable=not progress)):
        s = 1 + u(j["radius"])
        pose = orbit_view(center, rx * s, ry * s, np.deg2rad(th), float(path["height"]) + u(j["height"]),
                     np.deg2rad(float(path["yaw_offset_deg"]) + u(j["yaw_deg"])),
                     np.deg2rad(float(path["pitch_deg"]) + u(j["pitch_deg"])), 0.0)
        name = f"seq/{i:04d}.png"
        img, _ = syn.render_view(cam, pose)
        names.append(name)
        images[name] = img
        poses[name] = pose
        stamps.append(i * float(conf["frame_dt"]))
        outside.append(bool(th > a1 + margin or th < a0 - margin))
    logger.info("Synthetic sequence: %d frames (%d outside the map's arc), cut at frame %d",
                len(names), sum(outside), len(first))
    return SyntheticSequence(syn, names, images, stamps, poses, cam, [float(a) for a in angles], len(first),
                             outside, conf)


def _scene_center(syn: SyntheticScene):
    """Centre of the camera ellipse (the layout centre) from the map views' poses."""
    from ..synthetic.layouts import build_layout

    layout = build_layout(syn.conf, np.random.default_rng([syn.seed, 1]))
    return layout.center
