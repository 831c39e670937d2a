"""Pose error metrics, accurate for tiny errors.

Rotations are first projected onto SO(3) (some ground truths, e.g. Strecha, are
orthonormal only to ~1e-6), and the angle uses ``atan2(||vee(skew part)||, trace term)``,
which stays accurate near zero, unlike ``arccos((trace - 1) / 2)``.
"""
from __future__ import annotations

import math

import torch

from .pose import Pose, project_to_so3, so3_log


def rotation_angle(R: torch.Tensor) -> torch.Tensor:
    """(..., 3, 3) rotation -> (...) angle in radians, accurate near 0 and pi."""
    s = torch.stack(
        [R[..., 2, 1] - R[..., 1, 2], R[..., 0, 2] - R[..., 2, 0], R[..., 1, 0] - R[..., 0, 1]], -1
    ).norm(dim=-1)
    c = R[..., 0, 0] + R[..., 1, 1] + R[..., 2, 2] - 1
    return torch.atan2(s, c)


def rotation_error_deg(R_est: torch.Tensor, R_gt: torch.Tensor, project: bool = True) -> torch.Tensor:
    """Angle of ``R_est R_gt^T`` in degrees; (..., 3, 3) x2 -> (...)."""
    R_est = torch.as_tensor(R_est, dtype=torch.float64)
    R_gt = torch.as_tensor(R_gt, dtype=torch.float64)
    if project:
        R_est, R_gt = project_to_so3(R_est), project_to_so3(R_gt)
    return rotation_angle(R_est @ R_gt.transpose(-1, -2)) * (180.0 / math.pi)


def rotation_error_vectors(R_est: torch.Tensor, R_gt: torch.Tensor) -> torch.Tensor:
    """Axis-angle of ``R_est R_gt^T`` (the camera frame for cam_from_world rotations), in
    degrees; (..., 3, 3) x2 -> (..., 3). Its norm is :func:`rotation_error_deg`; the direction
    lets errors of different methods be compared (``protocols.gt_consistency``)."""
    R_est = project_to_so3(torch.as_tensor(R_est, dtype=torch.float64))
    R_gt = project_to_so3(torch.as_tensor(R_gt, dtype=torch.float64))
    return so3_log(R_est @ R_gt.transpose(-1, -2)) * (180.0 / math.pi)


def center_error(est: Pose, gt: Pose) -> torch.Tensor:
    """Distance between camera centres (scene units); (...)."""
    return (est.center.double() - gt.center.double()).norm(dim=-1)


def pose_error(est: Pose, gt: Pose):
    """(rotation error in degrees, camera-centre distance) for batches of poses."""
    return rotation_error_deg(est.R, gt.R), center_error(est, gt)
