"""How precisely a map's views pin down each 3D point, and what that error looks like in a query.

A 3D point triangulated from a few views is known well across their rays and poorly along them
(depth). A query further round sees part of that depth error as a 2D error along one direction
of its image, whatever the precision of its own keypoint. With keypoints of known standard
deviations ``sigma_i`` (a refiner's ``sigmas``, pixels), the first-order covariance of the
point triangulated from its observations i is

    Sigma_X = (sum_i J_i^T J_i / sigma_i^2)^-1

(``J_i`` the (2, 3) Jacobian of view i's projection at the point, the same weights as the
weighted triangulation of :mod:`hloc_bpnp.mapping.point_triangulation`), and the query sees it
as ``J_q Sigma_X J_q^T`` (pixels^2). Both in pixels of the images' own cameras, so the point's
error adds to the query keypoint's own ``sigma_q^2`` without a free ratio.

* :func:`projection_jacobians`: (..., 2, 3) pinhole Jacobians with respect to a world point;
* :func:`point_information`: the (P, 3, 3) information ``sum_i J_i^T J_i / sigma_i^2``;
* :func:`projected_covariances`: ``J_q Sigma_X J_q^T`` in a query camera.

The Jacobians use the pinhole part of each camera (lens distortion, a small change of the local
scale, is left out). Poses are ``cam_from_world``; pixels follow COLMAP's convention.
"""
from __future__ import annotations

import torch

from .camera import Camera
from .pose import Pose

__all__ = ["projection_jacobians", "point_information", "covariances_from_information", "projected_covariances"]


def projection_jacobians(points_world: torch.Tensor, R: torch.Tensor, t: torch.Tensor,
                         focal: torch.Tensor) -> torch.Tensor:
    """(..., 2, 3) Jacobians of the pinhole projection ``f * (x / z, y / z) + c`` of
    ``cam_from_world`` (R (..., 3, 3), t (..., 3)) with respect to the (..., 3) world point,
    ``focal`` (..., 2) = (fx, fy) pixels."""
    pc = (R @ points_world.unsqueeze(-1)).squeeze(-1) + t
    x, y, z = pc.unbind(-1)
    iz = 1.0 / z
    zero = torch.zeros_like(z)
    fx, fy = focal.unbind(-1)
    row0 = torch.stack([fx * iz, zero, -fx * x * iz * iz], -1)
    row1 = torch.stack([zero, fy * iz, -fy * y * iz * iz], -1)
    return torch.stack([row0, row1], -2) @ R


def point_information(num_points: int, points_world: torch.Tensor, obs_point: torch.Tensor, R: torch.Tensor,
                      t: torch.Tensor, focal: torch.Tensor, sigmas: torch.Tensor) -> torch.Tensor:
    """(P, 3, 3) float64 ``sum_i J_i^T J_i / sigma_i^2`` over the observations of each point.

    Args:
        num_points: P.
        points_world: (O, 3) the observed point of each observation.
        obs_point: (O,) int64 row in [0, P) of each observation's point.
        R, t, focal: (O, 3, 3), (O, 3), (O, 2) its view's ``cam_from_world`` and focal lengths.
        sigmas: (O,) its keypoint's standard deviation (pixels, > 0).
    Observations behind their camera add nothing.
    """
    dt = torch.float64
    X, R, t, focal, s = (torch.as_tensor(a, dtype=dt) for a in (points_world, R, t, focal, sigmas))
    J = projection_jacobians(X, R, t, focal)
    JtJ = J.transpose(-1, -2) @ J / (s * s).reshape(-1, 1, 1)
    z = ((R @ X.unsqueeze(-1)).squeeze(-1) + t)[:, 2]
    JtJ = torch.where((z > 0).reshape(-1, 1, 1), JtJ, torch.zeros_like(JtJ))
    return torch.zeros(num_points, 3, 3, dtype=dt).index_add_(0, torch.as_tensor(obs_point, dtype=torch.long), JtJ)


def covariances_from_information(info: torch.Tensor, max_std: float = 1e3) -> torch.Tensor:
    """(P, 3, 3) covariances ``info^-1``, with a floor on the information so that no direction is
    less certain than ``max_std`` (world units): a point seen along nearly parallel rays gets
    about that instead of an infinite or NaN covariance."""
    info = torch.as_tensor(info, dtype=torch.float64)
    return torch.linalg.inv(info + torch.eye(3, dtype=torch.float64) / float(max_std) ** 2)


def projected_covariances(points3D: torch.Tensor, covariances: torch.Tensor, pose: Pose, camera: Camera) -> torch.Tensor:
    """(M, 2, 2) ``J_q Sigma_X J_q^T``: the (M, 3, 3) point ``covariances`` of (M, 3)
    ``points3D`` seen in the query's pixels (``pose``: its ``cam_from_world``; ``camera``: its
    intrinsics, pinhole part)."""
    X = torch.as_tensor(points3D, dtype=torch.float64)
    pose = pose.to(torch.float64)
    M = X.shape[0]
    R = pose.R.reshape(1, 3, 3).expand(M, 3, 3)
    t = pose.t.reshape(1, 3).expand(M, 3)
    f = camera.to(torch.float64).f.reshape(1, 2).expand(M, 2)
    J = projection_jacobians(X, R, t, f)
    C = J @ torch.as_tensor(covariances, dtype=torch.float64) @ J.transpose(-1, -2)
    return 0.5 * (C + C.transpose(-1, -2))
