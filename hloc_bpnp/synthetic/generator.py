"""``generate_scene``: a seeded synthetic scene with exact ground truth, held in memory.

The scene is fully determined by (config, seed): the layout, textures and camera poses
use separate generators derived from the seed, so e.g. changing the number of queries
leaves the geometry and textures unchanged.

Image names are ``map/NNNN.png`` and ``query/NNNN.png`` (relative to the images folder,
hloc style).
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Dict, Optional, Tuple, Union

import numpy as np
import torch
from tqdm import tqdm

from ..config import load_config, merge
from ..geometry import Camera, Pose
from ..io.scene import Scene, SceneImage
from .cameras import camera_from_fov, map_and_query_poses
from .layout_io import SyntheticScene
from .layouts import build_layout
from .render import default_shading, render
from .textures import TextureBank

logger = logging.getLogger(__name__)

default_conf = {
    "layout": "facades",             # "facades" (open square, sky) or "room" (closed)
    "size": [30.0, 24.0, 14.0],      # enclosure extents x, y, height (metres)
    "clearance": 1.0,                # min distance between boxes and the camera path
    "num_boxes": 5,                  # free-standing boxes between path and walls
    "box_size": [[0.8, 0.8, 0.8], [3.0, 2.0, 3.0]],  # min / max extents
    "num_wall_boxes": 8,             # boxes protruding from the walls
    "wall_box_width": [1.0, 4.0],
    "wall_box_height": [0.5, 3.0],
    "wall_box_depth": [0.3, 1.2],
    "texture": {"texel_m": 0.015, "texture_min": 256, "texture_max": 1024},
    "camera": {"model": "PINHOLE", "width": 640, "height": 480, "hfov_deg": 65.0, "distortion": []},
    "query_camera": None,            # overrides of "camera" for queries (None: same)
    "path": {
        "radius": [6.0, 4.5], "height": 1.6, "arc_deg": [0.0, 360.0],
        "num_map": 12, "num_query": 6, "pitch_deg": 8.0, "yaw_offset_deg": 0.0,
        "map_jitter": {"radius": 0.05, "height": 0.2, "yaw_deg": 4.0, "pitch_deg": 2.0},
        "query": {"radius": 0.2, "height": 0.5, "yaw_deg": 10.0, "pitch_deg": 5.0, "roll_deg": 5.0},
    },
    "shading": dict(default_shading),
}


def resolve_conf(conf_or_preset: Union[str, Path, Dict, None]) -> Tuple[Dict, Optional[str]]:
    """(full config, preset name or None) from a preset name, a YAML path or a dict."""
    preset = None
    if isinstance(conf_or_preset, (str, Path)):
        p = Path(conf_or_preset)
        preset = p.stem if p.suffix in (".yaml", ".yml") else str(conf_or_preset)
    user = load_config("synthetic", conf_or_preset)
    conf = merge(default_conf, user, strict=True)
    return conf, preset


def make_cameras(conf: Dict) -> Tuple[Camera, Camera]:
    """(map camera, query camera) from the ``camera`` / ``query_camera`` config."""
    def build(c):
        return camera_from_fov(c["model"], c["width"], c["height"], c["hfov_deg"], c.get("distortion") or [])

    cam = build(conf["camera"])
    qc = merge(conf["camera"], conf["query_camera"], strict=True) if conf.get("query_camera") else conf["camera"]
    return cam, build(qc)


def generate_scene(conf_or_preset: Union[str, Path, Dict, None] = "facades", seed: int = 0,
                   progress: bool = False) -> SyntheticScene:
    """Generate a synthetic scene in memory.

    Args:
        conf_or_preset: preset name in ``configs/synthetic/`` (``facades``, ``room``,
            ``small``, ...), a YAML path, or a dict of overrides of ``default_conf``.
        seed: any non-negative int; same (config, seed) gives bit-identical output.
        progress: show a tqdm bar over the rendered views.
    Returns:
        SyntheticScene with rendered images and depths.
    """
    seed = int(seed)
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    conf, preset = resolve_conf(conf_or_preset)
    layout = build_layout(conf, np.random.default_rng([seed, 1]))
    textures = TextureBank(seed, layout.texture_sizes)
    map_poses, query_poses = map_and_query_poses(conf["path"], np.random.default_rng([seed, 2]), layout.center)
    map_cam, query_cam = make_cameras(conf)
    views = [(f"map/{i:04d}.png", map_cam, p) for i, p in enumerate(map_poses)]
    views += [(f"query/{i:04d}.png", query_cam, p) for i, p in enumerate(query_poses)]
    images: Dict[str, np.ndarray] = {}
    scene_images = []
    for name, cam, pose in tqdm(views, desc="render", disable=not progress):
        img, depth = render(layout.surfaces, cam, pose, textures, conf["shading"])
        images[name] = img
        scene_images.append(SceneImage(name, cam, pose, depth))
        cover = float((depth > 0).mean())
        if cover < 0.5:
            logger.warning("view %s sees scene surfaces in only %.0f%% of its pixels", name, 100 * cover)
    meta = {"seed": seed, "preset": preset, "generator": "hloc_bpnp.synthetic"}
    scene = Scene(scene_images, None, meta)
    logger.info("Generated synthetic scene (%s, seed %d): %d surfaces, %d map + %d query views",
                preset or conf["layout"], seed, len(layout.surfaces), len(map_poses), len(query_poses))
    return SyntheticScene(conf, preset, seed, layout.surfaces, textures, scene, images,
                          [v[0] for v in views[:len(map_poses)]], [v[0] for v in views[len(map_poses):]])


def _as_tensor(x) -> torch.Tensor:
    return x if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x))


def interpolate_depth(depth, pixels, max_rel_jump: float = 0.05) -> Tuple[torch.Tensor, torch.Tensor]:
    """Bilinear interpolation of *inverse* depth at sub-pixel positions.

    Inverse depth is affine in the image for a plane seen by a pinhole camera, so this is
    exact there (up to distortion curvature). A sample is invalid if any of its 4
    neighbours is background (0) or the neighbours' depths differ by more than
    ``max_rel_jump`` (an occlusion edge).

    Args:
        depth: (H, W) depth map (numpy or torch), 0 = no surface.
        pixels: (N, 2) COLMAP pixel coordinates.
    Returns:
        depth (N,) float64 (0 where invalid), valid (N,) bool.
    """
    d = _as_tensor(depth).double()
    x = _as_tensor(pixels).double()
    if d.dim() != 2 or x.dim() != 2 or x.shape[-1] != 2:
        raise ValueError(f"interpolate_depth needs depth (H, W) and pixels (N, 2), got "
                         f"{tuple(d.shape)} and {tuple(x.shape)}")
    H, W = d.shape
    gx, gy = x[:, 0] - 0.5, x[:, 1] - 0.5  # to pixel-index coordinates
    inside = (gx >= 0) & (gy >= 0) & (gx <= W - 1) & (gy <= H - 1)
    x0 = gx.clamp(0, W - 1).floor().long().clamp(max=max(W - 2, 0))
    y0 = gy.clamp(0, H - 1).floor().long().clamp(max=max(H - 2, 0))
    x1, y1 = (x0 + 1).clamp(max=W - 1), (y0 + 1).clamp(max=H - 1)
    fx, fy = gx.clamp(0, W - 1) - x0, gy.clamp(0, H - 1) - y0
    n = torch.stack([d[y0, x0], d[y0, x1], d[y1, x0], d[y1, x1]], -1)
    ok = inside & (n > 0).all(-1)
    ok &= n.max(-1).values <= (1 + max_rel_jump) * n.min(-1).values
    inv = torch.where(n > 0, 1.0 / n.clamp(min=1e-12), torch.zeros_like(n))
    w = torch.stack([(1 - fx) * (1 - fy), fx * (1 - fy), (1 - fx) * fy, fx * fy], -1)
    iv = (inv * w).sum(-1)
    out = torch.where(ok, 1.0 / iv.clamp(min=1e-12), torch.zeros_like(iv))
    return out, ok


def backproject(pixels, depth, camera: Camera, pose: Pose) -> torch.Tensor:
    """World points of pixels with known depths.

    Args:
        pixels: (..., N, 2) COLMAP pixel coordinates.
        depth: (..., N) z in the camera frame.
        camera: Camera; pose: cam_from_world Pose (broadcastable batch).
    Returns:
        (..., N, 3) world points (float64 when the inputs are); NaN for pixels beyond the
        distortion's invertible range (see ``Camera.unproject``).
    """
    x = _as_tensor(pixels)
    z = _as_tensor(depth).to(x.dtype)
    if x.shape[-1] != 2 or z.shape != x.shape[:-1]:
        raise ValueError(f"backproject needs pixels (..., N, 2) and depth (..., N), got "
                         f"{tuple(x.shape)} and {tuple(z.shape)}")
    cam = camera.to(dtype=x.dtype)
    p_cam = cam.unproject_rays(x) * z.unsqueeze(-1)
    return pose.to(dtype=x.dtype).inv().transform(p_cam)


def depth_to_points(depth, camera: Camera, pose: Pose) -> Tuple[torch.Tensor, torch.Tensor]:
    """World points of every pixel centre of a depth map.

    Args:
        depth: (H, W) z in the camera frame, 0 = no surface.
        camera: unbatched Camera of size W x H; pose: unbatched cam_from_world Pose.
    Returns:
        points (H, W, 3) float64 world coordinates (meaningless where invalid),
        valid (H, W) bool (depth > 0).
    """
    from .render import pixel_centers

    d = _as_tensor(depth).double()
    if d.shape != (camera.height, camera.width):
        raise ValueError(f"depth of shape {tuple(d.shape)} does not match camera size "
                         f"{camera.height}x{camera.width} (H x W)")
    pix = pixel_centers(camera.width, camera.height).reshape(-1, 2)
    pts = backproject(pix, d.reshape(-1), camera, pose.to(dtype=torch.float64))
    return pts.reshape(camera.height, camera.width, 3), d > 0
