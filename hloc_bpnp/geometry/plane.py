"""The local affine map between two views that a scene plane induces (the first-order part of
the plane's homography), for any COLMAP camera model.

Conventions: poses ``cam_from_world``, COLMAP pixels (top-left pixel centre at (0.5, 0.5)).
"""
from __future__ import annotations

from typing import Tuple

import torch

from .camera import Camera
from .pose import Pose

__all__ = ["plane_induced_affine"]


def plane_induced_affine(points2D: torch.Tensor, camera_a: Camera, pose_a: Pose, camera_b: Camera, pose_b: Pose,
                         points3D: torch.Tensor, normals: torch.Tensor,
                         step_px: float = 1.0) -> Tuple[torch.Tensor, torch.Tensor]:
    """The Jacobian ``d x_b / d x_a`` of the map from view a's pixels to view b's pixels through
    the plane of each point: the local affine warp between the two views of a small planar patch.

    Each pixel ``x_a + e`` (``e`` = ±``step_px`` along x and y: central differences) is cast as a
    ray from camera a, intersected with the plane through ``points3D`` with normal ``normals``,
    and projected into view b. Distortion is handled by the cameras' own models.

    Args:
        points2D: (N, 2) pixels in view a where the warp is wanted (e.g. a keypoint of the point).
        camera_a, pose_a: view a's camera and ``cam_from_world`` (unbatched).
        camera_b, pose_b: view b's.
        points3D: (N, 3) world points on the planes.
        normals: (N, 3) world plane normals (any length, any sign; NaN: no plane).
        step_px: the finite-difference step, pixels of view a.
    Returns:
        ``(A (N, 2, 2), valid (N,) bool)``: ``A[:, :, 0]`` is ``d x_b / d x_a[0]`` (the image of
        view a's x axis in view b), ``A[:, :, 1]`` that of its y axis; float64. ``valid`` is false
        where the normal is missing, a ray misses the plane or meets it behind camera a, the plane
        point is behind camera b, or a value is not finite (there ``A`` is the identity).
    """
    dt = torch.float64
    x = torch.as_tensor(points2D, dtype=dt)
    X = torch.as_tensor(points3D, dtype=dt)
    n = torch.as_tensor(normals, dtype=dt)
    if x.ndim != 2 or x.shape[-1] != 2 or X.shape != (x.shape[0], 3) or n.shape != X.shape:
        raise ValueError(f"plane_induced_affine: expected points2D (N, 2), points3D and normals (N, 3), got "
                         f"{tuple(x.shape)}, {tuple(X.shape)}, {tuple(n.shape)}")
    pa, pb = pose_a.to(dt), pose_b.to(dt)
    ca, cb = camera_a.to(dt), camera_b.to(dt)
    h = float(step_px)
    offs = torch.tensor([[h, 0.0], [-h, 0.0], [0.0, h], [0.0, -h]], dtype=dt)
    u = x[:, None] + offs  # (N, 4, 2)
    d = ca.unproject_rays(u) @ pa.R  # world directions R^T d, (N, 4, 3)
    C = pa.center.reshape(1, 1, 3)
    denom = (d * n[:, None]).sum(-1)  # (N, 4)
    lam = ((X - C[:, 0]) * n).sum(-1, keepdim=True) / denom
    Y = C + lam[..., None] * d  # (N, 4, 3) plane points
    Yb = pb.transform(Y.reshape(-1, 3)).reshape(-1, 4, 3)
    p = cb.project(Yb)
    A = torch.stack([(p[:, 0] - p[:, 1]) / (2 * h), (p[:, 2] - p[:, 3]) / (2 * h)], -1)  # columns: d/dx, d/dy
    valid = (torch.isfinite(n).all(-1) & (n.norm(dim=-1) > 0) & torch.isfinite(A).flatten(1).all(-1)
             & (lam > 0).all(-1) & (Yb[..., 2] > 0).all(-1))
    eye = torch.eye(2, dtype=dt).expand_as(A)
    return torch.where(valid[:, None, None], A, eye), valid
