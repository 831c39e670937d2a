"""Rigid poses, world-to-camera (``cam_from_world``) as in COLMAP.

``x_cam = R @ x_world + t``. The camera centre in the world is ``-R^T t``.
Quaternions are ``(w, x, y, z)`` (COLMAP text files, hloc results); pycolmap's
``Rotation3d.quat`` is ``(x, y, z, w)`` and is converted at the edge here.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from kornia.geometry.conversions import (
    quaternion_to_rotation_matrix,
    rotation_matrix_to_quaternion,
)


def skew(v: torch.Tensor) -> torch.Tensor:
    """(..., 3) -> (..., 3, 3) cross-product matrix."""
    x, y, z = v.unbind(-1)
    o = torch.zeros_like(x)
    return torch.stack(
        [torch.stack([o, -z, y], -1), torch.stack([z, o, -x], -1), torch.stack([-y, x, o], -1)], -2
    )


def so3_exp(aa: torch.Tensor) -> torch.Tensor:
    """(..., 3) axis-angle -> (..., 3, 3) rotation (Rodrigues), smooth at 0, any dtype.

    Uses the Taylor expansion for tiny angles so that gradients stay finite at aa = 0.
    """
    theta2 = (aa * aa).sum(-1, keepdim=True).unsqueeze(-1)  # (..., 1, 1)
    small = theta2 < 1e-8
    theta2_safe = torch.where(small, torch.ones_like(theta2), theta2)
    theta = theta2_safe.sqrt()
    a = torch.where(small, 1 - theta2 / 6 + theta2 * theta2 / 120, torch.sin(theta) / theta)
    b = torch.where(small, 0.5 - theta2 / 24 + theta2 * theta2 / 720, (1 - torch.cos(theta)) / theta2_safe)
    W = skew(aa)
    eye = torch.eye(3, dtype=aa.dtype, device=aa.device).expand_as(W)
    return eye + a * W + b * (W @ W)


def so3_log(R: torch.Tensor) -> torch.Tensor:
    """(..., 3, 3) rotation -> (..., 3) axis-angle, accurate near 0 and near pi."""
    q = rotation_matrix_to_quaternion(R.contiguous())  # (w, x, y, z)
    q = torch.where(q[..., :1] < 0, -q, q)
    w, xyz = q[..., 0], q[..., 1:]
    n = xyz.norm(dim=-1)
    angle = 2 * torch.atan2(n, w)
    small = n < 1e-12
    scale = torch.where(small, 2.0 / w.clamp_min(1e-12), angle / torch.where(small, torch.ones_like(n), n))
    return xyz * scale.unsqueeze(-1)


def project_to_so3(R: torch.Tensor) -> torch.Tensor:
    """Nearest rotation matrix (SVD), for near-orthonormal inputs such as Strecha GT."""
    U, _, Vh = torch.linalg.svd(R)
    d = torch.det(U @ Vh)
    D = torch.diag_embed(torch.stack([torch.ones_like(d), torch.ones_like(d), d], -1))
    return U @ D @ Vh


def is_rotation(R: torch.Tensor, tol: float = 1e-4) -> torch.Tensor:
    """(..., 3, 3) -> (...) bool: orthonormal within ``tol`` and det = +1."""
    eye = torch.eye(3, dtype=R.dtype, device=R.device)
    orth = (R @ R.transpose(-1, -2) - eye).abs().amax((-1, -2)) < tol
    return orth & ((torch.det(R) - 1).abs() < tol)


@dataclass
class Pose:
    """A batch of rigid transforms ``cam_from_world``.

    Attributes:
        R: (..., 3, 3) rotation.
        t: (..., 3) translation.
    """

    R: torch.Tensor
    t: torch.Tensor

    def __post_init__(self):
        self.R = torch.as_tensor(self.R)
        self.t = torch.as_tensor(self.t, dtype=self.R.dtype, device=self.R.device)
        if self.R.shape[-2:] != (3, 3) or self.t.shape[-1] != 3 or self.R.shape[:-2] != self.t.shape[:-1]:
            raise ValueError(
                f"Pose needs R (..., 3, 3) and t (..., 3) with equal batch shapes, got "
                f"R {tuple(self.R.shape)} and t {tuple(self.t.shape)}"
            )

    # ---------------------------------------------------------------- constructors
    @classmethod
    def identity(cls, batch_shape=(), dtype=torch.float64, device=None) -> "Pose":
        R = torch.eye(3, dtype=dtype, device=device).expand(*batch_shape, 3, 3).clone()
        return cls(R, torch.zeros(*batch_shape, 3, dtype=dtype, device=device))

    @classmethod
    def from_aa(cls, aa_t: torch.Tensor) -> "Pose":
        """From (..., 6) = [axis-angle (3), translation (3)] (the BPnP parametrisation)."""
        if aa_t.shape[-1] != 6:
            raise ValueError(f"pose vector must be (..., 6), got {tuple(aa_t.shape)}")
        return cls(so3_exp(aa_t[..., :3]), aa_t[..., 3:])

    @classmethod
    def from_qt(cls, q: torch.Tensor, t: torch.Tensor) -> "Pose":
        """From quaternion (..., 4) as (w, x, y, z) and translation (..., 3)."""
        q = torch.as_tensor(q)
        q = q / q.norm(dim=-1, keepdim=True)
        return cls(quaternion_to_rotation_matrix(q), torch.as_tensor(t, dtype=q.dtype))

    @classmethod
    def from_matrix(cls, T: torch.Tensor) -> "Pose":
        """From (..., 3, 4) or (..., 4, 4) matrices [R | t]."""
        return cls(T[..., :3, :3], T[..., :3, 3])

    @classmethod
    def from_pycolmap(cls, rigid, dtype=torch.float64, device=None) -> "Pose":
        """From a ``pycolmap.Rigid3d`` (cam_from_world).

        Also accepts pycolmap 4's ``Image.cam_from_world`` bound method (called here).
        """
        if callable(rigid) and not hasattr(rigid, "matrix"):
            rigid = rigid()
        M = torch.tensor(rigid.matrix(), dtype=dtype, device=device)
        return cls.from_matrix(M)

    @classmethod
    def stack(cls, poses: Sequence["Pose"]) -> "Pose":
        """Poses of equal batch shape (...) stacked along a new first dimension -> (K, ...)."""
        poses = list(poses)
        if not poses:
            raise ValueError("Pose.stack: no poses given")
        return cls(torch.stack([p.R for p in poses]), torch.stack([p.t for p in poses]))

    @classmethod
    def from_center(cls, R: torch.Tensor, center: torch.Tensor) -> "Pose":
        """From a world-to-camera rotation and the camera centre in world coordinates."""
        return cls(R, -(R @ center.unsqueeze(-1)).squeeze(-1))

    # ---------------------------------------------------------------- conversions
    @property
    def dtype(self):
        return self.R.dtype

    @property
    def device(self):
        return self.R.device

    @property
    def shape(self):
        return self.t.shape[:-1]

    def aa_t(self) -> torch.Tensor:
        """(..., 6) [axis-angle, t]."""
        return torch.cat([so3_log(self.R), self.t], -1)

    def qvec(self) -> torch.Tensor:
        """(..., 4) quaternion (w, x, y, z) with w >= 0."""
        q = rotation_matrix_to_quaternion(self.R.contiguous())
        return torch.where(q[..., :1] < 0, -q, q)

    def matrix(self) -> torch.Tensor:
        """(..., 4, 4) homogeneous matrix."""
        M = torch.zeros(*self.shape, 4, 4, dtype=self.dtype, device=self.device)
        M[..., :3, :3] = self.R
        M[..., :3, 3] = self.t
        M[..., 3, 3] = 1
        return M

    def to_pycolmap(self):
        """To a ``pycolmap.Rigid3d`` (single pose only)."""
        import numpy as np
        import pycolmap

        if self.t.dim() != 1:
            raise ValueError("to_pycolmap needs a single pose")
        q = self.qvec().detach().cpu().double().numpy()
        xyzw = np.array([q[1], q[2], q[3], q[0]])
        return pycolmap.Rigid3d(pycolmap.Rotation3d(xyzw), self.t.detach().cpu().double().numpy())

    def to(self, *args, **kwargs) -> "Pose":
        return Pose(self.R.to(*args, **kwargs), self.t.to(*args, **kwargs))

    def __getitem__(self, idx) -> "Pose":
        return Pose(self.R[idx], self.t[idx])

    # ---------------------------------------------------------------- algebra
    def inv(self) -> "Pose":
        Rt = self.R.transpose(-1, -2)
        return Pose(Rt, -(Rt @ self.t.unsqueeze(-1)).squeeze(-1))

    def compose(self, other: "Pose") -> "Pose":
        """``self @ other``: apply ``other`` first, then ``self``."""
        return Pose(self.R @ other.R, (self.R @ other.t.unsqueeze(-1)).squeeze(-1) + self.t)

    __matmul__ = compose

    def transform(self, points: torch.Tensor) -> torch.Tensor:
        """(..., N, 3) world points -> (..., N, 3) camera points."""
        return points @ self.R.transpose(-1, -2) + self.t.unsqueeze(-2)

    @property
    def center(self) -> torch.Tensor:
        """(..., 3) camera centre in world coordinates."""
        return -(self.R.transpose(-1, -2) @ self.t.unsqueeze(-1)).squeeze(-1)

    def __repr__(self) -> str:
        return f"Pose(shape={tuple(self.shape)}, dtype={self.dtype})"
