"""Synthetic textured scenes with exact ground truth (poses, intrinsics, depth).

``generate_scene("facades", seed=0)`` builds a scene in memory; ``.write(dir)`` stores the
layout the pipeline reads (images, depth, COLMAP GT model, hloc lists);
``load_synthetic_scene(dir)`` reads it back. ``render`` draws any new view.
"""
from .cameras import camera_from_fov, look_at, map_and_query_poses
from .generator import (SyntheticScene, backproject, default_conf, depth_to_points, generate_scene,
                        interpolate_depth)
from .layout_io import load_synthetic_scene, write_synthetic_scene
from .layouts import build_layout
from .render import RayHits, pixel_centers, raycast, render
from .surfaces import Surface, box_surfaces, rectangle, sample_surface_points, surface_normals
from .textures import TextureBank, make_texture

__all__ = [
    "SyntheticScene", "generate_scene", "load_synthetic_scene", "write_synthetic_scene",
    "default_conf", "render", "raycast", "RayHits", "pixel_centers",
    "depth_to_points", "backproject", "interpolate_depth",
    "look_at", "camera_from_fov", "map_and_query_poses", "build_layout",
    "Surface", "rectangle", "box_surfaces", "sample_surface_points", "surface_normals",
    "TextureBank", "make_texture",
]
