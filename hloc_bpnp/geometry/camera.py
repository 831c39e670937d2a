"""Batched, differentiable COLMAP camera models.

Pixel convention (used everywhere in hloc_bpnp): COLMAP's. The centre of the top-left
pixel is at (0.5, 0.5); the image spans [0, W] x [0, H]. A point in camera coordinates
``p = (X, Y, Z)`` (Z forward) maps to normalized coordinates ``(X/Z, Y/Z)``, is distorted
by the model, then scaled by the focal lengths and shifted by the principal point.

Supported models (parameter order exactly as COLMAP / pycolmap):

=============== =====================================
model           params
=============== =====================================
SIMPLE_PINHOLE  f, cx, cy
PINHOLE         fx, fy, cx, cy
SIMPLE_RADIAL   f, cx, cy, k
RADIAL          f, cx, cy, k1, k2
OPENCV          fx, fy, cx, cy, k1, k2, p1, p2
=============== =====================================

All functions take tensors with any leading batch shape and are differentiable w.r.t.
points and parameters (``unproject`` uses an implicit final Newton step, so its gradient
is that of the exact inverse, not of an unrolled loop).

Distortion is invertible only up to its fold: e.g. SIMPLE_RADIAL with k < 0 maps the
undistorted radius r to r (1 + k r^2), which grows only while r^2 < -1 / (3 k). A distorted
point beyond the fold's image has no (correct) preimage; ``undistort`` / ``unproject`` return
NaN there (``unproject_with_valid`` also returns the mask) instead of a wrong root (Newton
from such a point lands past the fold, often in the opposite quadrant).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence, Union

import numpy as np
import torch

CAMERA_MODELS = {
    "SIMPLE_PINHOLE": 3,
    "PINHOLE": 4,
    "SIMPLE_RADIAL": 4,
    "RADIAL": 5,
    "OPENCV": 8,
}
DISTORTED_MODELS = ("SIMPLE_RADIAL", "RADIAL", "OPENCV")


def clamp_to_image(xy, width: float, height: float):
    """(..., 2) COLMAP pixels (torch or numpy) clamped into the image's extent [0, W] x [0, H]
    (matchers such as LightGlue refuse keypoints outside it)."""
    if isinstance(xy, torch.Tensor):
        return torch.stack([xy[..., 0].clamp(0.0, float(width)), xy[..., 1].clamp(0.0, float(height))], -1)
    xy = np.asarray(xy)
    return np.stack([np.clip(xy[..., 0], 0.0, float(width)), np.clip(xy[..., 1], 0.0, float(height))], -1)


def _check_model(model: str, params: torch.Tensor) -> None:
    if model not in CAMERA_MODELS:
        raise ValueError(
            f"Unsupported camera model {model!r}; supported: {sorted(CAMERA_MODELS)}"
        )
    if params.shape[-1] != CAMERA_MODELS[model]:
        raise ValueError(
            f"Camera model {model} expects {CAMERA_MODELS[model]} params, "
            f"got params of shape {tuple(params.shape)}"
        )


def split_params(model: str, params: torch.Tensor):
    """Split a (..., P) parameter tensor into (fx, fy, cx, cy, dist) with dist (..., D).

    For single-focal models fx and fy are the same tensor. ``dist`` is the (possibly
    empty) tail of distortion coefficients.
    """
    _check_model(model, params)
    if model in ("SIMPLE_PINHOLE", "SIMPLE_RADIAL", "RADIAL"):
        f, cx, cy = params[..., 0], params[..., 1], params[..., 2]
        return f, f, cx, cy, params[..., 3:]
    fx, fy, cx, cy = params[..., 0], params[..., 1], params[..., 2], params[..., 3]
    return fx, fy, cx, cy, params[..., 4:]


def distort(model: str, dist: torch.Tensor, uv: torch.Tensor) -> torch.Tensor:
    """Apply the model's lens distortion to normalized coordinates.

    Args:
        model: COLMAP model name.
        dist: (..., D) distortion coefficients (D may be 0).
        uv: (..., N, 2) undistorted normalized coordinates.
    Returns:
        (..., N, 2) distorted normalized coordinates.
    """
    if model not in DISTORTED_MODELS:
        return uv
    u, v = uv[..., 0], uv[..., 1]
    d = dist.unsqueeze(-2)  # (..., 1, D) broadcast over N
    r2 = u * u + v * v
    if model == "SIMPLE_RADIAL":
        radial = d[..., 0] * r2
        du, dv = u * radial, v * radial
    elif model == "RADIAL":
        radial = d[..., 0] * r2 + d[..., 1] * r2 * r2
        du, dv = u * radial, v * radial
    else:  # OPENCV
        k1, k2, p1, p2 = d[..., 0], d[..., 1], d[..., 2], d[..., 3]
        radial = k1 * r2 + k2 * r2 * r2
        uv2 = u * v
        du = u * radial + 2 * p1 * uv2 + p2 * (r2 + 2 * u * u)
        dv = v * radial + 2 * p2 * uv2 + p1 * (r2 + 2 * v * v)
    return torch.stack([u + du, v + dv], dim=-1)


def distort_jacobian(model: str, dist: torch.Tensor, uv: torch.Tensor) -> torch.Tensor:
    """(..., N, 2, 2) Jacobian of ``distort`` w.r.t. uv (analytic)."""
    u, v = uv[..., 0], uv[..., 1]
    one = torch.ones_like(u)
    zero = torch.zeros_like(u)
    if model not in DISTORTED_MODELS:
        return torch.stack([torch.stack([one, zero], -1), torch.stack([zero, one], -1)], -2)
    d = dist.unsqueeze(-2)
    r2 = u * u + v * v
    if model == "SIMPLE_RADIAL":
        radial = d[..., 0] * r2
        dradial = d[..., 0]  # d radial / d r2
        p1 = p2 = zero
    elif model == "RADIAL":
        radial = d[..., 0] * r2 + d[..., 1] * r2 * r2
        dradial = d[..., 0] + 2 * d[..., 1] * r2
        p1 = p2 = zero
    else:
        k1, k2, p1, p2 = d[..., 0], d[..., 1], d[..., 2], d[..., 3]
        radial = k1 * r2 + k2 * r2 * r2
        dradial = k1 + 2 * k2 * r2
    # du = u*radial + 2 p1 u v + p2 (r2 + 2u^2)
    j00 = 1 + radial + u * dradial * 2 * u + 2 * p1 * v + p2 * 6 * u
    j01 = u * dradial * 2 * v + 2 * p1 * u + p2 * 2 * v
    # dv = v*radial + 2 p2 u v + p1 (r2 + 2v^2)
    j10 = v * dradial * 2 * u + 2 * p2 * v + p1 * 2 * u
    j11 = 1 + radial + v * dradial * 2 * v + 2 * p2 * u + p1 * 6 * v
    return torch.stack([torch.stack([j00, j01], -1), torch.stack([j10, j11], -1)], -2)


def _solve2x2(J: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """Closed-form solve of (..., 2, 2) systems J x = r with r (..., 2).

    Much faster than ``torch.linalg.solve`` on millions of tiny systems (no LAPACK calls).
    """
    a, b, c, d = J[..., 0, 0], J[..., 0, 1], J[..., 1, 0], J[..., 1, 1]
    det = a * d - b * c
    return torch.stack([(d * r[..., 0] - b * r[..., 1]) / det, (a * r[..., 1] - c * r[..., 0]) / det], -1)


def _in_invertible_range(model: str, dist: torch.Tensor, uv: torch.Tensor) -> torch.Tensor:
    """(..., N) bool: ``uv`` (undistorted) lies inside the fold of the distortion.

    The radial profile ``g(r) = r (1 + k1 r^2 + k2 r^4)`` must increase on [0, r], i.e.
    ``q(s) = 1 + 3 k1 s + 5 k2 s^2 > 0`` for s in [0, r^2] (checked at r^2 and at the vertex
    of q), the radial factor ``1 + k1 r^2 + k2 r^4`` must be positive (same direction as
    the distorted point), and for OPENCV the Jacobian determinant must be positive.
    """
    u, v = uv[..., 0], uv[..., 1]
    d = dist.unsqueeze(-2)
    s = u * u + v * v
    k1 = d[..., 0]
    k2 = d[..., 1] if model in ("RADIAL", "OPENCV") else torch.zeros_like(k1)
    q_end = 1 + 3 * k1 * s + 5 * k2 * s * s
    k2_safe = torch.where(k2 > 0, k2, torch.ones_like(k2))
    s_star = -3 * k1 / (10 * k2_safe)
    q_star = 1 + 3 * k1 * s_star + 5 * k2 * s_star * s_star
    vertex_inside = (k2 > 0) & (s_star > 0) & (s_star < s)
    ok = (q_end > 0) & (~vertex_inside | (q_star > 0)) & (1 + k1 * s + k2 * s * s > 0)
    if model == "OPENCV":
        J = distort_jacobian(model, dist, uv)
        ok = ok & (J[..., 0, 0] * J[..., 1, 1] - J[..., 0, 1] * J[..., 1, 0] > 0)
    return ok


def undistort(
    model: str, dist: torch.Tensor, uv_d: torch.Tensor, num_iters: int = 30, return_valid: bool = False
):
    """Invert ``distort`` by Newton iterations (batched), differentiably.

    The iterations run without autograd; one final Newton step is taken with autograd on,
    which makes the result's first-order gradient equal to the exact implicit gradient
    of the inverse mapping.

    Args:
        dist: (..., D); uv_d: (..., N, 2) distorted normalized coordinates.
        return_valid: also return the (..., N) bool mask of invertible points.
    Returns:
        (..., N, 2) undistorted normalized coordinates; NaN for points with no preimage
        inside the distortion's invertible range (beyond its fold) or where Newton did not
        converge (gradient 0 there). With ``return_valid``: (coordinates, valid mask).
    """
    if model not in DISTORTED_MODELS:
        if return_valid:
            return uv_d, torch.isfinite(uv_d).all(-1)
        return uv_d
    with torch.no_grad():
        ud = uv_d.detach()
        uv = ud.clone()
        dd = dist.detach()
        for _ in range(num_iters):
            res = distort(model, dd, uv) - ud
            J = distort_jacobian(model, dd, uv)
            step = _solve2x2(J, res)
            uv = uv - step
            done = ~torch.isfinite(step).all(-1) | (step.abs().amax(-1) < 1e-15 * (1 + uv.abs().amax(-1)))
            if bool(done.all()) if done.numel() else True:
                break
        tol = torch.finfo(ud.dtype).eps ** 0.5 * (1 + ud.abs().amax(-1))
        err = (distort(model, dd, uv) - ud).abs().amax(-1)
        valid = torch.isfinite(uv).all(-1) & (err <= tol) & _in_invertible_range(model, dd, uv)
        uv = torch.where(valid.unsqueeze(-1), uv, torch.zeros_like(uv))
    # implicit step: value unchanged at convergence, gradient of the true inverse
    # (invalid points start from 0 against their own distorted image: finite, then masked)
    target = torch.where(valid.unsqueeze(-1), uv_d, distort(model, dist, uv).detach())
    res = distort(model, dist, uv) - target
    J = distort_jacobian(model, dist.detach(), uv).detach()
    out = uv - _solve2x2(J, res)
    out = torch.where(valid.unsqueeze(-1), out, torch.full_like(out, float("nan")))
    return (out, valid) if return_valid else out


@dataclass
class Camera:
    """A batch of cameras of one COLMAP model.

    Attributes:
        model: COLMAP model name (see module docstring).
        width, height: image size in pixels (shared by the batch).
        params: (..., P) parameters in COLMAP order.
    """

    model: str
    width: int
    height: int
    params: torch.Tensor

    def __post_init__(self):
        if not isinstance(self.params, torch.Tensor):
            self.params = torch.as_tensor(self.params, dtype=torch.float64)
        _check_model(self.model, self.params)
        self.width = int(self.width)
        self.height = int(self.height)
        if self.width <= 0 or self.height <= 0:
            raise ValueError(f"Camera size must be positive, got {self.width}x{self.height}")

    # ----------------------------------------------------------------- constructors
    @classmethod
    def from_K(cls, K: torch.Tensor, width: int, height: int) -> "Camera":
        """PINHOLE camera(s) from (..., 3, 3) intrinsic matrices (skew ignored)."""
        K = torch.as_tensor(K)
        params = torch.stack([K[..., 0, 0], K[..., 1, 1], K[..., 0, 2], K[..., 1, 2]], -1)
        return cls("PINHOLE", width, height, params)

    @classmethod
    def from_pycolmap(cls, cam, dtype: torch.dtype = torch.float64, device=None) -> "Camera":
        """From a ``pycolmap.Camera``."""
        name = cam.model.name if hasattr(cam.model, "name") else str(cam.model)
        params = torch.tensor(list(cam.params), dtype=dtype, device=device)
        return cls(name, cam.width, cam.height, params)

    def to_pycolmap(self):
        """To a ``pycolmap.Camera`` (unbatched cameras only)."""
        import pycolmap

        if self.params.dim() != 1:
            raise ValueError("to_pycolmap needs a single camera (params of shape (P,))")
        return pycolmap.Camera(
            model=self.model,
            width=self.width,
            height=self.height,
            params=self.params.detach().cpu().double().numpy(),
        )

    @classmethod
    def from_hloc_line(cls, model: str, width, height, params: Sequence[float]) -> "Camera":
        return cls(model, int(width), int(height), torch.tensor([float(p) for p in params], dtype=torch.float64))

    # ----------------------------------------------------------------- properties
    @property
    def dtype(self):
        return self.params.dtype

    @property
    def device(self):
        return self.params.device

    @property
    def has_distortion(self) -> bool:
        return self.model in DISTORTED_MODELS

    @property
    def f(self) -> torch.Tensor:
        """(..., 2) focal lengths (fx, fy)."""
        fx, fy, _, _, _ = split_params(self.model, self.params)
        return torch.stack([fx, fy], -1)

    @property
    def c(self) -> torch.Tensor:
        """(..., 2) principal point (cx, cy), COLMAP pixel convention."""
        _, _, cx, cy, _ = split_params(self.model, self.params)
        return torch.stack([cx, cy], -1)

    @property
    def dist(self) -> torch.Tensor:
        return split_params(self.model, self.params)[4]

    @property
    def K(self) -> torch.Tensor:
        """(..., 3, 3) calibration matrix of the pinhole part."""
        fx, fy, cx, cy, _ = split_params(self.model, self.params)
        zero, one = torch.zeros_like(fx), torch.ones_like(fx)
        return torch.stack(
            [
                torch.stack([fx, zero, cx], -1),
                torch.stack([zero, fy, cy], -1),
                torch.stack([zero, zero, one], -1),
            ],
            -2,
        )

    def to(self, *args, **kwargs) -> "Camera":
        return Camera(self.model, self.width, self.height, self.params.to(*args, **kwargs))

    def with_params(self, params: torch.Tensor) -> "Camera":
        return Camera(self.model, self.width, self.height, params)

    def scale(self, sx: float, sy: Optional[float] = None) -> "Camera":
        """Camera for an image resized by (sx, sy) (new = old * s), COLMAP convention."""
        sy = sx if sy is None else sy
        fx, fy, cx, cy, dist = split_params(self.model, self.params)
        p = self.params.clone()
        if self.model in ("SIMPLE_PINHOLE", "SIMPLE_RADIAL", "RADIAL"):
            if abs(sx - sy) > 1e-9:
                raise ValueError(f"{self.model} has one focal length: anisotropic scale not possible")
            p[..., 0], p[..., 1], p[..., 2] = fx * sx, cx * sx, cy * sy
        else:
            p[..., 0], p[..., 1], p[..., 2], p[..., 3] = fx * sx, fy * sy, cx * sx, cy * sy
        return Camera(self.model, round(self.width * sx), round(self.height * sy), p)

    # ----------------------------------------------------------------- mappings
    def normalize(self, pts: torch.Tensor) -> torch.Tensor:
        """(..., N, 2) pixels -> distorted normalized coordinates (no undistortion)."""
        return (pts - self.c.unsqueeze(-2)) / self.f.unsqueeze(-2)

    def denormalize(self, uv: torch.Tensor) -> torch.Tensor:
        """(..., N, 2) distorted normalized coordinates -> pixels."""
        return uv * self.f.unsqueeze(-2) + self.c.unsqueeze(-2)

    def project(self, p_cam: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
        """Project camera-frame points to pixels.

        Args:
            p_cam: (..., N, 3) points in the camera frame.
        Returns:
            (..., N, 2) pixel coordinates (COLMAP convention). Points with Z <= 0 give
            meaningless values: check ``p_cam[..., 2] > 0`` (see ``project_with_valid``).
        """
        if p_cam.shape[-1] != 3:
            raise ValueError(f"p_cam must have shape (..., N, 3), got {tuple(p_cam.shape)}")
        z = p_cam[..., 2:3]
        z = torch.where(z.abs() < eps, torch.full_like(z, eps), z)
        uv = p_cam[..., :2] / z
        return self.denormalize(distort(self.model, self.dist, uv))

    def project_with_valid(self, p_cam: torch.Tensor, min_depth: float = 1e-6, margin: float = 0.0):
        """(pixels (..., N, 2), valid (..., N)) where valid means in front and inside the image,
        at least ``margin`` pixels from its border."""
        x = self.project(p_cam)
        valid = (
            (p_cam[..., 2] > min_depth)
            & (x[..., 0] >= margin)
            & (x[..., 1] >= margin)
            & (x[..., 0] <= self.width - margin)
            & (x[..., 1] <= self.height - margin)
        )
        return x, valid

    def unproject(self, pts: torch.Tensor) -> torch.Tensor:
        """Pixels -> undistorted normalized coordinates (rays with z = 1 dropped).

        Args:
            pts: (..., N, 2) pixel coordinates.
        Returns:
            (..., N, 2) normalized coordinates ``(X/Z, Y/Z)``; NaN for pixels outside the
            distortion's invertible range (see the module docstring and
            :meth:`unproject_with_valid`).
        """
        return self.unproject_with_valid(pts)[0]

    def unproject_with_valid(self, pts: torch.Tensor):
        """(normalized coordinates (..., N, 2), valid (..., N) bool): ``unproject`` and the
        mask of pixels with a true preimage (False: beyond the distortion's fold; NaN there)."""
        if pts.shape[-1] != 2:
            raise ValueError(f"pts must have shape (..., N, 2), got {tuple(pts.shape)}")
        return undistort(self.model, self.dist, self.normalize(pts), return_valid=True)

    def unproject_rays(self, pts: torch.Tensor) -> torch.Tensor:
        """(..., N, 2) pixels -> (..., N, 3) rays (x, y, 1) in the camera frame (NaN x, y
        where ``unproject`` gives NaN)."""
        uv = self.unproject(pts)
        return torch.cat([uv, torch.ones_like(uv[..., :1])], -1)

    def __repr__(self) -> str:
        return f"Camera({self.model}, {self.width}x{self.height}, params={self.params.tolist()})"


CameraLike = Union[Camera, torch.Tensor]
