"""Analytic scene geometry: textured planar rectangles (boxes are six of them).

A :class:`Surface` is the rectangle ``{origin + a * axis_u + b * axis_v : 0 <= a <= extent_u,
0 <= b <= extent_v}`` with orthonormal ``axis_u``, ``axis_v``; its normal is
``axis_u x axis_v``. Local coordinates ``(a / extent_u, b / extent_v)`` map affinely into the
sub-rectangle ``tex_rect = (s0, t0, s1, t1)`` of texture ``tex_id`` (boxes share one texture
atlas over their faces). Rectangles are two-sided.

World frame: z is up, the ground is z = 0.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Sequence, Tuple

import numpy as np
import torch


@dataclass
class Surface:
    """One textured rectangle (float64 numpy vectors, metres)."""

    origin: np.ndarray
    axis_u: np.ndarray
    axis_v: np.ndarray
    extent: Tuple[float, float]
    tex_id: int
    tex_rect: Tuple[float, float, float, float] = (0.0, 0.0, 1.0, 1.0)
    name: str = ""

    def __post_init__(self):
        self.origin = np.asarray(self.origin, np.float64).reshape(3)
        self.axis_u = np.asarray(self.axis_u, np.float64).reshape(3)
        self.axis_v = np.asarray(self.axis_v, np.float64).reshape(3)
        self.extent = (float(self.extent[0]), float(self.extent[1]))
        self.tex_id = int(self.tex_id)
        self.tex_rect = tuple(float(x) for x in self.tex_rect)
        if min(self.extent) <= 0:
            raise ValueError(f"Surface {self.name!r}: extents must be positive, got {self.extent}")
        G = np.array([[self.axis_u @ self.axis_u, self.axis_u @ self.axis_v],
                      [self.axis_u @ self.axis_v, self.axis_v @ self.axis_v]])
        if not np.allclose(G, np.eye(2), atol=1e-9):
            raise ValueError(f"Surface {self.name!r}: axis_u and axis_v must be orthonormal, Gram={G}")

    @property
    def normal(self) -> np.ndarray:
        """(3,) unit normal ``axis_u x axis_v``."""
        return np.cross(self.axis_u, self.axis_v)

    @property
    def area(self) -> float:
        return self.extent[0] * self.extent[1]

    def point(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """(N, 3) world points at local coordinates a, b (N,) in metres."""
        return self.origin + np.asarray(a)[:, None] * self.axis_u + np.asarray(b)[:, None] * self.axis_v

    def to_dict(self) -> Dict:
        return {
            "name": self.name, "origin": self.origin.tolist(), "axis_u": self.axis_u.tolist(),
            "axis_v": self.axis_v.tolist(), "extent": list(self.extent), "tex_id": self.tex_id,
            "tex_rect": list(self.tex_rect),
        }

    @classmethod
    def from_dict(cls, d: Dict) -> "Surface":
        return cls(d["origin"], d["axis_u"], d["axis_v"], d["extent"], d["tex_id"],
                   tuple(d.get("tex_rect", (0, 0, 1, 1))), d.get("name", ""))


def rectangle(origin, axis_u, axis_v, extent_u: float, extent_v: float, tex_id: int,
              tex_rect=None, name: str = "") -> Surface:
    """A rectangle from (possibly non-unit) orthogonal axis directions.

    By default the texture is mapped isotropically: the longer side spans the whole texture
    and the shorter one the matching fraction (no stretching).
    """
    u = np.asarray(axis_u, np.float64)
    v = np.asarray(axis_v, np.float64)
    if tex_rect is None:
        span = max(extent_u, extent_v)
        tex_rect = (0.0, 0.0, extent_u / span, extent_v / span)
    return Surface(origin, u / np.linalg.norm(u), v / np.linalg.norm(v), (extent_u, extent_v),
                   tex_id, tex_rect, name)


def box_texture_span(size) -> float:
    """Metres spanned by the full width of a box's texture atlas (see :func:`box_surfaces`)."""
    sx, sy, sz = (float(x) for x in size)
    return max(3 * max(sx, sy), 2 * max(sx, sy, sz))


def box_surfaces(center, size, yaw: float, tex_id: int, name: str = "box") -> List[Surface]:
    """The six outward-facing faces of a box rotated by ``yaw`` (radians) about z.

    Args:
        center: (3,) box centre; size: (3,) full extents along its local x, y, z.
        tex_id: texture shared by the faces; face k uses (part of) cell k of a 3x2 atlas,
            all faces at the same isotropic texel size (``box_texture_span`` metres per
            texture width).
    """
    c = np.asarray(center, np.float64)
    sx, sy, sz = (float(x) for x in size)
    ex = np.array([np.cos(yaw), np.sin(yaw), 0.0])
    ey = np.array([-np.sin(yaw), np.cos(yaw), 0.0])
    ez = np.array([0.0, 0.0, 1.0])
    # (face centre offset, axis_u, axis_v, extent_u, extent_v); normal = u x v points outward
    faces = [
        (+ex * sx / 2, ey, ez, sy, sz), (-ex * sx / 2, -ey, ez, sy, sz),
        (+ey * sy / 2, -ex, ez, sx, sz), (-ey * sy / 2, ex, ez, sx, sz),
        (+ez * sz / 2, ex, ey, sx, sy), (-ez * sz / 2, ex, -ey, sx, sy),
    ]
    scale = 1.0 / box_texture_span(size)  # texture units per metre
    out = []
    for k, (off, u, v, eu, ev) in enumerate(faces):
        origin = c + off - u * eu / 2 - v * ev / 2
        col, row = k % 3, k // 3
        rect = (col / 3.0, row / 2.0, col / 3.0 + eu * scale, row / 2.0 + ev * scale)
        out.append(Surface(origin, u, v, (eu, ev), tex_id, rect, f"{name}/face{k}"))
    return out


def surface_normals(surfaces: Sequence[Surface]) -> torch.Tensor:
    """(S, 3) float64 unit normals of the surfaces."""
    return torch.from_numpy(np.stack([s.normal for s in surfaces]))


def sample_surface_points(surfaces: Sequence[Surface], num: int, rng: np.random.Generator,
                          margin: float = 0.0) -> Tuple[torch.Tensor, torch.Tensor]:
    """Sample points uniformly by area over the surfaces.

    Args:
        surfaces: S rectangles.
        num: number of points N.
        rng: seeded generator.
        margin: keep this distance (metres) from each rectangle's border (clamped to 45% of
            the extent).
    Returns:
        points (N, 3) float64 world coordinates and surface index (N,) int64.
    """
    if num < 0:
        raise ValueError(f"num must be >= 0, got {num}")
    areas = np.array([s.area for s in surfaces])
    idx = rng.choice(len(surfaces), size=num, p=areas / areas.sum())
    pts = np.zeros((num, 3))
    for k in np.unique(idx):
        m = idx == k
        s = surfaces[k]
        mu, mv = min(margin, 0.45 * s.extent[0]), min(margin, 0.45 * s.extent[1])
        a = rng.uniform(mu, s.extent[0] - mu, m.sum())
        b = rng.uniform(mv, s.extent[1] - mv, m.sum())
        pts[m] = s.point(a, b)
    return torch.from_numpy(pts), torch.from_numpy(idx.astype(np.int64))


def surfaces_to_list(surfaces: Sequence[Surface]) -> List[Dict]:
    return [s.to_dict() for s in surfaces]


def surfaces_from_list(items: Sequence[Dict]) -> List[Surface]:
    return [Surface.from_dict(d) for d in items]


@dataclass
class Layout:
    """Geometry of a generated scene: surfaces, texture sizes, and where cameras may go."""

    surfaces: List[Surface]
    texture_sizes: Dict[int, int]
    center: np.ndarray = field(default_factory=lambda: np.zeros(3))
    sky: bool = True
