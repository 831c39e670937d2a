"""Training data: (query image, camera, GT pose) plus a map of reference views with known poses.

A :class:`TrainScene` holds grayscale views (image, camera, GT ``cam_from_world``, optional
depth), which of them form the map, which are queries, and for each query its reference
views (the ``num_refs`` map views closest in pose: hloc's pairs-from-poses idea, which in
training plays the part of retrieval).

3D points of map keypoints come from depth (exact, synthetic) via :func:`points_from_depth`;
for a map without depth (Strecha, a user's COLMAP model) the caller supplies a function that
returns 3D points for map keypoints (by triangulation with the known poses:
:func:`hloc_bpnp.training.real.triangulated_map_views`).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..geometry import Camera, Pose, rotation_error_deg

logger = logging.getLogger(__name__)


@dataclass
class TrainView:
    """One image with ground truth.

    Attributes:
        name: image name.
        image: (C, H, W) float32 in [0, 1], C = 1 (grayscale) or 3; H, W multiples of the network's
            ``size_multiple`` (cropped at the bottom/right, which keeps the intrinsics).
        camera: unbatched float64 Camera of ``image``.
        pose: unbatched float64 Pose ``cam_from_world``.
        depth: (H, W) float32 z-depth (0 = no surface) or None.
    """

    name: str
    image: torch.Tensor
    camera: Camera
    pose: Pose
    depth: Optional[torch.Tensor] = None

    def to(self, device) -> "TrainView":
        """The same view with its image, camera, pose and depth on ``device``."""
        return TrainView(self.name, self.image.to(device), self.camera.to(device), self.pose.to(device),
                         None if self.depth is None else self.depth.to(device))


@dataclass
class TrainScene:
    """Views, map/query split and per-query reference views."""

    name: str
    views: Dict[str, TrainView]
    map_names: List[str]
    query_names: List[str]
    refs: Dict[str, List[str]] = field(default_factory=dict)

    def to(self, device) -> "TrainScene":
        """The same scene with every view's tensors on ``device``."""
        return TrainScene(self.name, {n: v.to(device) for n, v in self.views.items()}, list(self.map_names),
                          list(self.query_names), dict(self.refs))


def _float01(image: np.ndarray) -> torch.Tensor:
    """(H, W) or (H, W, 3) uint8/float array -> float32 tensor of the same shape in [0, 1]."""
    a = np.asarray(image)
    t = torch.from_numpy(np.ascontiguousarray(a)).float()
    if a.dtype == np.uint8:
        t = t / 255.0
    if not (t.ndim == 2 or (t.ndim == 3 and t.shape[-1] == 3)):
        raise ValueError(f"image must be (H, W) or (H, W, 3), got {tuple(a.shape)}")
    return t


def to_gray_tensor(image: np.ndarray) -> torch.Tensor:
    """(H, W) or (H, W, 3) uint8/float array -> (1, H, W) float32 in [0, 1]."""
    t = _float01(image)
    if t.ndim == 3:
        t = 0.299 * t[..., 0] + 0.587 * t[..., 1] + 0.114 * t[..., 2]
    return t[None].contiguous()


def to_rgb_tensor(image: np.ndarray) -> torch.Tensor:
    """(H, W) or (H, W, 3) uint8/float array -> (3, H, W) float32 in [0, 1]."""
    t = _float01(image)
    if t.ndim == 2:
        t = t[..., None].expand(-1, -1, 3)
    return t.permute(2, 0, 1).contiguous()


def make_view(name: str, image: np.ndarray, camera: Camera, pose: Pose,
              depth: Optional[np.ndarray] = None, multiple: int = 8, resize_max: Optional[int] = None,
              channels: int = 1) -> TrainView:
    """Build a :class:`TrainView`: grayscale (``channels=1``) or RGB (3), optional downscale,
    crop to ``multiple``."""
    img = to_gray_tensor(image) if channels == 1 else to_rgb_tensor(image)
    cam = camera.to(torch.float64)
    dep = None if depth is None else torch.as_tensor(np.asarray(depth, dtype=np.float32))
    H, W = img.shape[-2:]
    if resize_max and max(H, W) > resize_max:
        s = resize_max / max(H, W)
        h2, w2 = int(round(H * s)), int(round(W * s))
        img = F.interpolate(img[None], size=(h2, w2), mode="bilinear", align_corners=False, antialias=True)[0]
        cam = cam.scale(w2 / W, h2 / H)
        if dep is not None:
            dep = F.interpolate(dep[None, None], size=(h2, w2), mode="nearest")[0, 0]
        H, W = h2, w2
    h, w = (H // multiple) * multiple, (W // multiple) * multiple
    img = img[:, :h, :w].contiguous()
    if dep is not None:
        dep = dep[:h, :w].contiguous()
    cam = Camera(cam.model, w, h, cam.params)
    return TrainView(name, img, cam, pose.to(torch.float64), dep)


def select_references(map_poses: Dict[str, Pose], query_pose: Pose, k: int,
                      max_angle_deg: float = 60.0, exclude: Sequence[str] = ()) -> List[str]:
    """The ``k`` map views nearest to the query in camera centre among those whose viewing
    rotation differs by less than ``max_angle_deg`` (all views if too few qualify)."""
    names = [n for n in map_poses if n not in set(exclude)]
    if not names:
        raise ValueError("select_references: no map views to choose from")
    C = torch.stack([map_poses[n].center for n in names])
    R = torch.stack([map_poses[n].R for n in names])
    dist = (C - query_pose.center).norm(dim=-1)
    ang = rotation_error_deg(R, query_pose.R.expand_as(R))
    order = torch.argsort(dist + torch.where(ang < max_angle_deg, 0.0, 1e9))
    return [names[i] for i in order[:k].tolist()]


def points_from_depth(keypoints: torch.Tensor, view: TrainView, max_rel_jump: float = 0.02):
    """World points of keypoints from the view's depth map (bilinear, discontinuity-checked).

    Args:
        keypoints: (N, 2) COLMAP pixels in ``view.image``.
        max_rel_jump: reject keypoints whose 2x2 depth neighbourhood varies by more than this
            fraction (depth edges, where interpolation invents points).
    Returns:
        points (N, 3) float64 world coordinates, valid (N,) bool.
    """
    if view.depth is None:
        raise ValueError(f"view {view.name!r} has no depth")
    d = view.depth.double()
    H, W = d.shape
    xy = keypoints.detach().double() - 0.5  # pixel-index frame
    x0 = xy[:, 0].floor().clamp(0, W - 2)
    y0 = xy[:, 1].floor().clamp(0, H - 2)
    fx, fy = (xy[:, 0] - x0).clamp(0, 1), (xy[:, 1] - y0).clamp(0, 1)
    xi, yi = x0.long(), y0.long()
    d00, d01 = d[yi, xi], d[yi, xi + 1]
    d10, d11 = d[yi + 1, xi], d[yi + 1, xi + 1]
    nb = torch.stack([d00, d01, d10, d11], -1)
    z = (1 - fy) * ((1 - fx) * d00 + fx * d01) + fy * ((1 - fx) * d10 + fx * d11)
    valid = (nb.amin(-1) > 0) & ((nb.amax(-1) - nb.amin(-1)) <= max_rel_jump * nb.amin(-1))
    rays = view.camera.unproject_rays(keypoints.detach().double())  # NaN beyond a distortion fold
    p_cam = rays * z[:, None]
    p_world = view.pose.inv().transform(p_cam)
    valid = valid & torch.isfinite(p_world).all(-1)
    return p_world, valid


def visible_in(view: TrainView, points3d: torch.Tensor, max_rel_depth_err: float = 0.02):
    """Project world points into a view with depth; (pixels (N, 2), visible (N,) bool).

    Visible = in front, inside the image and not occluded (the depth map agrees with the
    point's depth within ``max_rel_depth_err``).
    """
    p_cam = view.pose.transform(points3d.double())
    x, inside = view.camera.project_with_valid(p_cam)
    if view.depth is None:
        return x, inside
    H, W = view.depth.shape
    xi = (x[:, 0] - 0.5).round().long().clamp(0, W - 1)
    yi = (x[:, 1] - 0.5).round().long().clamp(0, H - 1)
    dz = view.depth[yi, xi].double()
    ok = inside & (dz > 0) & ((dz - p_cam[:, 2]).abs() <= max_rel_depth_err * p_cam[:, 2].abs())
    return x, ok


def train_scene_from_synthetic(syn, name: str, num_refs: int = 3, multiple: int = 8,
                               resize_max: Optional[int] = None) -> TrainScene:
    """Wrap a ``hloc_bpnp.synthetic`` scene (images, depth, cameras, poses, map/query split)."""
    scene = syn.scene
    map_names = list(_attr(syn, ("map_names", "mapping_names", "map")))
    query_names = list(_attr(syn, ("query_names", "queries", "query")))
    views = {}
    for im in scene.images:
        if im.pose is None:
            raise ValueError(f"synthetic image {im.name!r} has no pose")
        views[im.name] = make_view(im.name, syn.images[im.name], im.camera, im.pose, im.depth,
                                   multiple=multiple, resize_max=resize_max)
    ts = TrainScene(name, views, map_names, query_names)
    assign_references(ts, num_refs)
    return ts


def assign_references(ts: TrainScene, num_refs: int) -> None:
    """Fill ``ts.refs`` with the ``num_refs`` pose-nearest map views of every query."""
    map_poses = {n: ts.views[n].pose for n in ts.map_names}
    ts.refs = {q: select_references(map_poses, ts.views[q].pose, num_refs, exclude=(q,))
               for q in ts.query_names}


def _attr(obj, names):
    for n in names:
        if hasattr(obj, n):
            return getattr(obj, n)
    raise AttributeError(f"{type(obj).__name__} has none of the attributes {names}")


def load_synthetic_scenes(preset: str, seeds: Sequence[int], num_refs: int = 3,
                          resize_max: Optional[int] = None, overrides: Optional[Dict] = None,
                          prefix: str = "syn", multiple: int = 8) -> List[TrainScene]:
    """Generate synthetic scenes (``hloc_bpnp.synthetic.generate_scene``) for several seeds.

    ``overrides`` are merged over the preset (e.g. ``{"path": {"num_query": 8}}``).
    """
    from ..config import load_config, merge
    from ..synthetic import generate_scene

    conf = merge(load_config("synthetic", preset), overrides or {}) if overrides else preset
    out = []
    for s in seeds:
        syn = generate_scene(conf, seed=int(s))
        out.append(train_scene_from_synthetic(syn, f"{prefix}{preset}_{s}", num_refs, multiple=multiple,
                                              resize_max=resize_max))
        logger.info("synthetic scene %s seed %d: %d map, %d query views", preset, s,
                    len(out[-1].map_names), len(out[-1].query_names))
    return out
