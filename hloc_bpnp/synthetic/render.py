"""Vectorised ray caster: exact depth, surface ids and mip-mapped texture shading.

For every pixel centre (COLMAP convention: pixel (i, j) has its centre at (j + 0.5, i + 0.5))
the camera's ray ``(x, y, 1)`` (distortion removed by ``Camera.unproject_rays``) is cut with
every rectangle; the nearest hit in front of the camera wins. As the ray has z = 1 in the
camera frame, the hit's ray parameter *is* its depth. Texture lookups are trilinear with a
level of detail from analytic ray differentials, and shading is a fixed per-surface
Lambertian factor, so a surface point has the same colour in every view.
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Dict, Optional, Sequence, Tuple

import numpy as np
import torch

from ..geometry import Camera, Pose
from .surfaces import Surface
from .textures import TextureBank, sample_trilinear

_RAY_CACHE: "OrderedDict[tuple, Tuple[np.ndarray, np.ndarray, np.ndarray]]" = OrderedDict()

default_shading = {
    "ambient": 0.55,               # share of light that does not depend on orientation
    "light_dir": [0.4, -0.3, 0.85],  # towards the light, world frame (normalized)
    "sky": [205, 222, 240],       # background colour (uint8 RGB) where no surface is hit
    "lod_bias": 0.0,              # added to the mip level (negative = sharper, may alias)
}


def pixel_centers(width: int, height: int) -> torch.Tensor:
    """(H, W, 2) float64 pixel centres in COLMAP convention: (j + 0.5, i + 0.5)."""
    i, j = torch.meshgrid(torch.arange(height, dtype=torch.float64),
                          torch.arange(width, dtype=torch.float64), indexing="ij")
    return torch.stack([j + 0.5, i + 0.5], -1)


TILE = 16  # pixels per side of the tiles used to cull surfaces


def camera_rays(camera: Camera) -> Dict[str, np.ndarray]:
    """Rays (x, y, 1) through all pixel centres, their differentials and tile bounds.

    Cached per camera (model, size, params). Returns a dict with
    ``rays``, ``dx``, ``dy``: (H, W, 3) float64 (ray, d ray / d column, d ray / d row);
    ``tile_box``: (T, 4) min x, min y, max x, max y of the normalized ray coordinates of
    each TILE x TILE tile; ``tile_pix``: list of T flat pixel index arrays.
    """
    if camera.params.dim() != 1:
        raise ValueError(f"render needs a single camera, got params of shape {tuple(camera.params.shape)}")
    key = (camera.model, camera.width, camera.height, tuple(camera.params.detach().double().tolist()))
    if key in _RAY_CACHE:
        _RAY_CACHE.move_to_end(key)
        return _RAY_CACHE[key]
    cam = camera.to(dtype=torch.float64)
    H, W = camera.height, camera.width
    # torch's batched 2x2 solves in the Newton undistortion are ~10x slower multi-threaded
    n_threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        with torch.no_grad():
            pix = pixel_centers(W, H).reshape(-1, 2)
            rays = cam.unproject_rays(pix).reshape(H, W, 3).cpu().numpy()
    finally:
        torch.set_num_threads(n_threads)
    if not np.isfinite(rays).all():
        bad = int((~np.isfinite(rays).all(-1)).sum())
        raise ValueError(f"{camera}: {bad} of {H * W} pixels lie beyond the distortion's invertible range "
                         "(no ray: distortion too strong for this image size)")
    dx = np.gradient(rays, axis=1) if W > 1 else np.zeros_like(rays)
    dy = np.gradient(rays, axis=0) if H > 1 else np.zeros_like(rays)
    flat = np.arange(H * W).reshape(H, W)
    boxes, pixs = [], []
    for i0 in range(0, H, TILE):
        for j0 in range(0, W, TILE):
            r = rays[i0:i0 + TILE, j0:j0 + TILE, :2].reshape(-1, 2)
            boxes.append(np.concatenate([r.min(0), r.max(0)]))
            pixs.append(flat[i0:i0 + TILE, j0:j0 + TILE].reshape(-1))
    out = {"rays": rays, "dx": dx, "dy": dy, "tile_box": np.array(boxes), "tile_pix": pixs}
    _RAY_CACHE[key] = out
    while len(_RAY_CACHE) > 8:
        _RAY_CACHE.popitem(last=False)
    return out


def _clip_near(poly: np.ndarray, near: float) -> np.ndarray:
    """Clip a convex (K, 3) polygon (camera frame) to z >= near (Sutherland-Hodgman)."""
    out = []
    K = len(poly)
    for i in range(K):
        p, q = poly[i], poly[(i + 1) % K]
        pin, qin = p[2] >= near, q[2] >= near
        if pin:
            out.append(p)
        if pin != qin:
            out.append(p + (near - p[2]) / (q[2] - p[2]) * (q - p))
    return np.array(out).reshape(-1, 3)


@dataclass
class RayHits:
    """Per-pixel result of :func:`raycast` (all (H, W)).

    Attributes:
        depth: float64 z in the camera frame, 0 where no surface is hit.
        index: int64 surface index, -1 where no surface is hit.
        a, b: float64 local coordinates (metres) on the hit surface.
    """

    depth: np.ndarray
    index: np.ndarray
    a: np.ndarray
    b: np.ndarray


def _surface_in_camera(s: Surface, R: np.ndarray, t: np.ndarray):
    return R @ s.origin + t, R @ s.axis_u, R @ s.axis_v, R @ s.normal


def raycast(surfaces: Sequence[Surface], camera: Camera, pose: Pose,
            near: float = 1e-3) -> RayHits:
    """Nearest surface along the ray of every pixel centre.

    Args:
        surfaces: S rectangles (world frame).
        camera: unbatched Camera; pose: unbatched cam_from_world Pose.
        near: hits closer than this depth are ignored.
    """
    if pose.R.dim() != 2:
        raise ValueError(f"raycast needs a single pose, got batch shape {tuple(pose.shape)}")
    cr = camera_rays(camera)
    H, W = camera.height, camera.width
    d = cr["rays"].reshape(-1, 3)
    R = pose.R.detach().double().cpu().numpy()
    t = pose.t.detach().double().cpu().numpy()
    best = np.full(d.shape[0], np.inf)
    index = np.full(d.shape[0], -1, np.int64)
    A = np.zeros(d.shape[0])
    B = np.zeros(d.shape[0])
    tile_box = cr["tile_box"]
    for k, s in enumerate(surfaces):
        o, u, v, n = _surface_in_camera(s, R, t)
        eu, ev = s.extent
        corners = np.stack([o, o + u * eu, o + u * eu + v * ev, o + v * ev])
        poly = _clip_near(corners, near)
        if len(poly) == 0:
            continue  # entirely behind the camera
        xy = poly[:, :2] / poly[:, 2:3]
        lo, hi = xy.min(0), xy.max(0)
        tiles = np.nonzero((tile_box[:, 0] <= hi[0]) & (tile_box[:, 2] >= lo[0])
                           & (tile_box[:, 1] <= hi[1]) & (tile_box[:, 3] >= lo[1]))[0]
        if len(tiles) == 0:
            continue
        pix = np.concatenate([cr["tile_pix"][i] for i in tiles])
        dp = d[pix]
        dn = dp[:, 0] * n[0] + dp[:, 1] * n[1] + dp[:, 2] * n[2]
        with np.errstate(divide="ignore", invalid="ignore"):
            z = (n @ o) / dn
            a = z * (dp[:, 0] * u[0] + dp[:, 1] * u[1] + dp[:, 2] * u[2]) - o @ u
            b = z * (dp[:, 0] * v[0] + dp[:, 1] * v[1] + dp[:, 2] * v[2]) - o @ v
            hit = (z > near) & (z < best[pix]) & (a >= 0) & (a <= eu) & (b >= 0) & (b <= ev)
        sel = pix[hit]
        best[sel] = z[hit]
        index[sel] = k
        A[sel] = a[hit]
        B[sel] = b[hit]
    depth = np.where(index >= 0, best, 0.0)
    return RayHits(depth.reshape(H, W), index.reshape(H, W), A.reshape(H, W), B.reshape(H, W))


def render(surfaces: Sequence[Surface], camera: Camera, pose: Pose, textures: TextureBank,
           shading: Optional[Dict] = None, return_hits: bool = False):
    """Render an RGB image and a depth map.

    Args:
        surfaces: S rectangles; their ``tex_id`` index ``textures``.
        camera: unbatched Camera of any supported model (distortion included).
        pose: unbatched cam_from_world Pose.
        textures: the scene's TextureBank.
        shading: overrides of ``default_shading``.
        return_hits: also return the :class:`RayHits`.
    Returns:
        image (H, W, 3) uint8, depth (H, W) float32 (z in the camera frame, 0 = background),
        and the hits if ``return_hits``.
    """
    sh = dict(default_shading, **(shading or {}))
    hits = raycast(surfaces, camera, pose)
    cr = camera_rays(camera)
    H, W = camera.height, camera.width
    img = np.empty((H * W, 3), np.float32)
    img[:] = np.asarray(sh["sky"], np.float32)
    idx = hits.index.reshape(-1)
    z_all = hits.depth.reshape(-1)
    a_all, b_all = hits.a.reshape(-1), hits.b.reshape(-1)
    d_all, dx_all, dy_all = (cr[k].reshape(-1, 3) for k in ("rays", "dx", "dy"))
    R = pose.R.detach().double().cpu().numpy()
    t = pose.t.detach().double().cpu().numpy()
    light = np.asarray(sh["light_dir"], np.float64)
    light /= np.linalg.norm(light)
    order = np.argsort(idx, kind="stable")
    ids, starts = np.unique(idx[order], return_index=True)
    ends = np.append(starts[1:], len(order))
    for k, i0, i1 in zip(ids, starts, ends):
        if k < 0:
            continue
        s = surfaces[k]
        m = order[i0:i1]
        _, u, v, n = _surface_in_camera(s, R, t)
        mips = textures.mips(s.tex_id)
        size = mips[0].shape[0]
        s0, t0, s1, t1 = s.tex_rect
        ks, kt = (s1 - s0) / s.extent[0], (t1 - t0) / s.extent[1]
        tex_s = s0 + a_all[m] * ks
        tex_t = t0 + b_all[m] * kt
        # ray differentials: dP = z (dd - (n.dd)/(n.d) d), in texels of level 0
        z, d = z_all[m, None], d_all[m]
        nd = d @ n
        foot = np.zeros(len(m))
        for dd in (dx_all[m], dy_all[m]):
            dP = z * (dd - (dd @ n / nd)[:, None] * d)
            foot = np.maximum(foot, np.hypot(dP @ u * ks * size, dP @ v * kt * size))
        lod = np.log2(np.maximum(foot, 1e-6)) + float(sh["lod_bias"])
        color = sample_trilinear(mips, tex_s, tex_t, lod)
        f = sh["ambient"] + (1 - sh["ambient"]) * abs(float(s.normal @ light))
        img[m] = color * f
    image = np.clip(img + 0.5, 0, 255).astype(np.uint8).reshape(H, W, 3)
    depth = hits.depth.astype(np.float32)
    if return_hits:
        return image, depth, hits
    return image, depth
