"""Photometric refinement of 3D points on local planes, with the map's poses fixed (the
multi-view-stereo idea of PMVS: a point and a normal are fitted so that the point's patch
looks the same in every view that sees it).

Why: a triangulated point inherits its detections' errors along its rays. Query patch
alignment (``localization.patch_alignment``) centres its templates on the projections of the
map's 3D points, so a point off the surface hands the query its depth error, scaled by the
parallax between the query and the template's view. Aligning the observations by translation
only (``keypoint_adjustment``'s ``reference`` / ``consensus``) does not follow the
foreshortening between views far apart. Here each point keeps its position in one reference
view (its ray) and only its depth along that ray and the normal of a small plane through it
move: the reference patch is mapped into every other view through the plane's homography, and
the zero-mean, unit-variance patches are made to agree (Levenberg-Marquardt, batched over all
points). The point is then on the surface wherever that surface is textured, and its
projection in every view shows the same surface point.

Conventions: poses cam_from_world, COLMAP pixels (top-left pixel centre at (0.5, 0.5)).
"""
from __future__ import annotations

import logging
from typing import Callable, Dict, Sequence, Tuple

import numpy as np
import torch

from ..features.patch_lk import normalise_patches as _normalise
from ..features.patch_lk import prepare_image
from ..features.patch_lk import sample_points as _sample
from ..geometry.camera import Camera
from ..geometry.pose import Pose

logger = logging.getLogger(__name__)

__all__ = ["refine_points_on_planes"]


class _Problem:
    """The points' planes and their observations, batched: (P,) points, (O,) observations
    (point row, view image id) of the views other than each point's reference."""

    def __init__(self, xyz, ref_img, obs_pt, obs_img, cameras, poses, radius, stride):
        self.cameras, self.poses = cameras, poses
        self.obs_pt = torch.as_tensor(obs_pt, dtype=torch.long)
        self.obs_img = np.asarray(obs_img, np.int64)
        self.groups = {int(i): torch.from_numpy(np.flatnonzero(self.obs_img == i)) for i in np.unique(self.obs_img)}
        r = torch.arange(-radius, radius + 1, stride, dtype=torch.float64)
        r = r - r.mean()  # centred on the point whatever the stride
        self.grid = torch.stack(torch.meshgrid(r, r, indexing="xy"), -1).reshape(-1, 2)  # (G, 2)
        P = len(xyz)
        self.ref_img = np.asarray(ref_img, np.int64)
        self.ref_groups = {int(i): torch.from_numpy(np.flatnonzero(self.ref_img == i)) for i in np.unique(self.ref_img)}
        self.C = torch.zeros(P, 3, dtype=torch.float64)
        self.x_ref = torch.zeros(P, 2, dtype=torch.float64)
        self.rays = torch.zeros(P, len(self.grid), 3, dtype=torch.float64)  # world directions of the grid pixels
        for i, s in self.ref_groups.items():
            pose, cam = poses[i], cameras[i]
            self.C[s] = pose.center.reshape(1, 3).to(torch.float64)
            x = cam.project(pose.transform(xyz[s]))
            self.x_ref[s] = x
            d = cam.unproject_rays(x[:, None] + self.grid)  # (n, G, 3) camera frame
            self.rays[s] = d @ pose.R.to(torch.float64)  # R^T d, row vectors
        v = xyz - self.C
        self.d0 = v.norm(dim=-1)
        self.u = v / self.d0[:, None]
        a = torch.where(self.u[:, :1].abs() < 0.9, torch.tensor([[1.0, 0, 0]], dtype=torch.float64),
                        torch.tensor([[0, 1.0, 0]], dtype=torch.float64))
        self.e1 = torch.nn.functional.normalize(torch.cross(self.u, a.expand_as(self.u), dim=-1), dim=-1)
        self.e2 = torch.cross(self.u, self.e1, dim=-1)
        # depth per pixel of motion in the view with the most parallax: the depth parameter is
        # in those pixels, so that the steps and bounds mean the same for every point
        h = 1e-4 * self.d0
        q1 = self._project_obs((self.C + (self.d0 + h)[:, None] * self.u)[:, None])[:, 0]
        q0 = self._project_obs((self.C + (self.d0 - h)[:, None] * self.u)[:, None])[:, 0]
        px_per_depth = torch.zeros(P, dtype=torch.float64).scatter_reduce_(
            0, self.obs_pt, (q1 - q0).norm(dim=-1) / (2 * h[self.obs_pt]), "amax")
        self.depth_per_px = 1.0 / px_per_depth.clamp_min(1e-12)

    def point(self, theta: torch.Tensor) -> torch.Tensor:
        """(P, 3) points for (P, 3) parameters (depth in px of the largest parallax, normal tilts)."""
        return self.C + (self.d0 + theta[:, 0] * self.depth_per_px)[:, None] * self.u

    def normal(self, theta: torch.Tensor) -> torch.Tensor:
        """(P, 3) unit normals of the points' planes (facing the reference view) for (P, 3) parameters."""
        return torch.nn.functional.normalize(-self.u + theta[:, 1:2] * self.e1 + theta[:, 2:3] * self.e2, dim=-1)

    def plane_points(self, theta: torch.Tensor) -> torch.Tensor:
        """(P, G, 3) world points where the reference view's grid rays meet each point's plane."""
        X = self.point(theta)
        n = self.normal(theta)
        lam = ((X - self.C) * n).sum(-1, keepdim=True) / (self.rays * n[:, None]).sum(-1).clamp_max(-1e-6)
        return self.C[:, None] + lam[..., None] * self.rays

    def _project_obs(self, Y: torch.Tensor) -> torch.Tensor:
        """(P, G, 3) world points -> (O, G, 2) pixels in each observation's view."""
        out = torch.zeros(len(self.obs_pt), Y.shape[1], 2, dtype=torch.float64)
        for i, s in self.groups.items():
            out[s] = self.cameras[i].project(self.poses[i].transform(Y[self.obs_pt[s]]))
        return out

    def project(self, theta: torch.Tensor) -> torch.Tensor:
        return self._project_obs(self.plane_points(theta))


def _sample_obs(problem: _Problem, images: Dict[int, torch.Tensor], q: torch.Tensor) -> torch.Tensor:
    """(3, O, G) image, x and y gradient at (O, G, 2) pixels of each observation's view."""
    out = torch.zeros(3, *q.shape[:2], dtype=torch.float64)
    for i, s in problem.groups.items():
        out[:, s] = _sample(images[i], q[s].float()).double()
    return out


def refine_points_on_planes(xyz: torch.Tensor, tracks: Sequence[Sequence[int]], cameras: Dict[int, Camera],
                            poses: Dict[int, Pose], image_of: Callable[[int], torch.Tensor], radius: int = 5,
                            blur_sigma: float = 1.0, iterations: int = 10, max_depth_px: float = 3.0,
                            max_tilt: float = 1.2, max_angle_deg: float = 60.0,
                            min_ncc: float = 0.5, stride: int = 1) -> Tuple[torch.Tensor, torch.Tensor, Dict]:
    """Refine the depths of (P, 3) points ``xyz`` along the ray of one reference view each, with
    the normal of a (2 radius + 1)^2-pixel plane patch, so that the patch agrees in all views.

    Args:
        xyz: (P, 3) world points (float64).
        tracks: per point, the image ids that observe it (keys of ``cameras`` / ``poses``).
        cameras, poses: per image id, its camera and cam_from_world pose.
        image_of: image id -> (1, 1, H, W) or (H, W) gray image.
        radius: patch half-size in the reference view, pixels.
        blur_sigma: Gaussian pre-smoothing of every image.
        iterations: Levenberg-Marquardt iterations.
        max_depth_px: bound on the depth change, in pixels of motion in the view of largest
            parallax.
        max_tilt: bound on each normal tilt parameter (tan of the tilt from the reference's ray).
        max_angle_deg: views whose ray to the point is further than this from the reference's
            are not used.
        min_ncc: a point whose patches correlate less than this on average keeps its position.
        stride: the patch's sampling step in the reference view, pixels (2: a quarter of the
            samples over the same support).
    Returns:
        ``(xyz (P, 3), refined (P,) bool, stats)``; ``stats`` has ``"n_points"``,
        ``"n_refined"``, ``"median_depth_px"`` (of the refined points' moves),
        ``"ncc_before"`` / ``"ncc_after"`` (medians over refined points) and ``"normals"``:
        (P, 3) float64 world unit normals of the refined points' planes, facing their
        reference view, NaN for the others.
    """
    if int(radius) < 1 or int(stride) < 1 or int(stride) > 2 * int(radius):
        raise ValueError(f"plane refinement: radius must be >= 1 and stride in [1, 2 radius], got radius {radius!r}, "
                         f"stride {stride!r}")
    xyz = torch.as_tensor(xyz, dtype=torch.float64)
    P = len(xyz)
    centers = {i: p.center.reshape(-1).to(torch.float64).cpu().numpy() for i, p in poses.items()}
    cos_max = float(np.cos(np.deg2rad(max_angle_deg)))
    rows, ref_img, obs_pt, obs_img = [], [], [], []
    X_np = xyz.cpu().numpy()
    for p, track in enumerate(tracks):
        ids = [int(i) for i in track]
        if len(ids) < 2:
            continue
        cs = np.stack([centers[i] for i in ids])
        r = int(np.argmin(np.linalg.norm(cs - cs.mean(0), axis=1)))
        rays = X_np[p][None] - cs
        rays /= np.linalg.norm(rays, axis=1, keepdims=True).clip(1e-12)
        cosang = rays @ rays[r]
        others = [i for j, i in enumerate(ids) if j != r and cosang[j] >= cos_max]
        if not others:
            continue
        row = len(rows)
        rows.append(p)
        ref_img.append(ids[r])
        obs_pt += [row] * len(others)
        obs_img += others
    stats = {"n_points": P, "n_refined": 0, "median_depth_px": 0.0, "ncc_before": float("nan"),
             "ncc_after": float("nan"), "normals": torch.full((P, 3), float("nan"), dtype=torch.float64)}
    refined = torch.zeros(P, dtype=torch.bool)
    if not rows:
        return xyz.clone(), refined, stats
    rows_t = torch.tensor(rows)
    prob = _Problem(xyz[rows_t], ref_img, obs_pt, obs_img, cameras, poses, int(radius), int(stride))
    images = {i: prepare_image(image_of(i), blur_sigma) for i in set(ref_img) | set(obs_img)}
    n_pts, G = len(rows), len(prob.grid)
    template = torch.zeros(n_pts, G, dtype=torch.float64)
    for i, s in prob.ref_groups.items():
        template[s] = _sample(images[i], (prob.x_ref[s][:, None] + prob.grid).float())[0].double()
    template = _normalise(template)[0][prob.obs_pt]  # (O, G)
    count = torch.bincount(prob.obs_pt, minlength=n_pts).double()

    def per_point(v):
        return torch.zeros(n_pts, *v.shape[1:], dtype=torch.float64).index_add_(0, prob.obs_pt, v)

    def cost(theta):
        I = _sample_obs(prob, images, prob.project(theta))[0]
        return per_point((_normalise(I)[0] - template).pow(2).mean(-1)) / count

    lo = torch.tensor([-max_depth_px, -max_tilt, -max_tilt], dtype=torch.float64)
    theta = torch.zeros(n_pts, 3, dtype=torch.float64)
    mu = torch.full((n_pts,), 1e-2, dtype=torch.float64)
    c0 = cost(theta)
    c = c0.clone()
    steps = torch.tensor([1e-3, 1e-4, 1e-4], dtype=torch.float64)
    for _ in range(int(iterations)):
        q = prob.project(theta)
        dq = []
        for k in range(3):  # forward differences of the geometry (float64; smooth in theta)
            e = torch.zeros(3, dtype=torch.float64)
            e[k] = steps[k]
            dq.append((prob.project(theta + e) - q) / steps[k])
        dq = torch.stack(dq, -1)  # (O, G, 2, 3)
        I, Ix, Iy = _sample_obs(prob, images, q)
        In, sd = _normalise(I)
        dI = Ix[..., None] * dq[:, :, 0] + Iy[..., None] * dq[:, :, 1]  # (O, G, 3)
        J = (dI - dI.mean(1, keepdim=True)) / sd[..., None]
        r = In - template
        H = per_point(J.transpose(1, 2) @ J)
        g = per_point(torch.einsum("ogk,og->ok", J, r))
        Hd = H + mu[:, None, None] * torch.diag_embed(H.diagonal(dim1=-2, dim2=-1).clamp_min(1e-9))
        step = -torch.linalg.solve(Hd, g[..., None])[..., 0]
        step = torch.where(torch.isfinite(step), step, torch.zeros_like(step))
        cand = torch.maximum(torch.minimum(theta + step, -lo), lo)
        cc = cost(cand)
        ok = cc < c
        theta = torch.where(ok[:, None], cand, theta)
        c = torch.where(ok, cc, c)
        mu = torch.where(ok, mu / 3, mu * 4).clamp(1e-6, 1e4)
    ncc0, ncc = 1 - c0 * (G - 1) / (2 * G), 1 - c * (G - 1) / (2 * G)  # mean NCC over the views
    good = (ncc >= min_ncc) & (c < c0)
    out = xyz.clone()
    out[rows_t[good]] = prob.point(theta)[good]
    refined[rows_t[good]] = True
    stats["normals"][rows_t[good]] = prob.normal(theta)[good]
    if good.any():
        stats.update(n_refined=int(good.sum()), median_depth_px=float(theta[good, 0].abs().median()),
                     ncc_before=float(ncc0[good].median()), ncc_after=float(ncc[good].median()))
    logger.info("Plane refinement: %d/%d points refined (median depth move %.2f px, NCC %.3f -> %.3f)",
                stats["n_refined"], P, stats["median_depth_px"], stats["ncc_before"], stats["ncc_after"])
    return out, refined, stats
