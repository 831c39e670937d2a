"""Procedural textures with unique content everywhere, and mip-mapped trilinear sampling.

A texture is an (S, S, 3) uint8 image generated from a seeded ``numpy.random.Generator``:
multi-scale value noise, Gaussian blobs in several scale bands (what DoG/SIFT detects),
hard-edged discs and rectangles (corners), and line segments (edges). Nothing is tiled,
so every location is distinct and matching is unambiguous. Each colour channel is a mix
of two independent detail fields, so a grayscale conversion keeps all the detail.

Sampling uses a mip pyramid (2x2 box filter) and a per-sample level of detail chosen by
the renderer from ray differentials, so the same surface point looks the same from views
at different distances (no aliasing, which would kill keypoint repeatability).
"""
from __future__ import annotations

import logging
from typing import Dict, List

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

logger = logging.getLogger(__name__)


def _value_noise(rng: np.random.Generator, size: int, octaves=(4, 8, 16, 32, 64, 128),
                 persistence: float = 0.7) -> np.ndarray:
    """(size, size) multi-octave value noise in about [-1, 1] (bicubic upsampled grids)."""
    out = torch.zeros(1, 1, size, size)
    amp, total = 1.0, 0.0
    for cells in octaves:
        if cells >= size:
            break
        grid = torch.from_numpy(rng.uniform(-1, 1, (1, 1, cells + 1, cells + 1)).astype(np.float32))
        up = F.interpolate(grid, size=(size, size), mode="bicubic", align_corners=True)
        out += amp * up
        total += amp
        amp *= persistence
    return (out[0, 0] / max(total, 1e-9)).cpu().numpy()


def _blob_bands(rng: np.random.Generator, size: int, sigmas=(1.2, 2.0, 3.2, 5.0, 8.0, 13.0),
                density: float = 0.12) -> np.ndarray:
    """(size, size) sum of signed Gaussian blobs at random positions, one band per sigma.

    A band of sigma ``s`` holds ``density * size^2 / (2 s)^2`` impulses blurred by a Gaussian
    and rescaled so a blob's peak equals its amplitude. Wide bands are blurred on a grid
    subsampled by up to 4 (sigma >= 2 grid cells there) and upsampled bicubically.
    """
    by_factor: Dict[int, np.ndarray] = {}
    for s in sigmas:
        k = int(2 ** np.clip(np.floor(np.log2(max(s / 2.0, 1.0))), 0, 2))
        n_low = size // k
        n = int(density * size * size / (4.0 * s * s))
        imp = np.zeros((n_low, n_low), np.float32)
        ij = rng.integers(0, n_low, (n, 2))
        amp = rng.choice([-1.0, 1.0], n) * rng.uniform(0.4, 1.0, n)
        np.add.at(imp, (ij[:, 0], ij[:, 1]), amp.astype(np.float32))
        sl = s / k
        band = ndimage.gaussian_filter(imp, sl, mode="constant", truncate=3.0) * (2 * np.pi * sl * sl)
        by_factor[k] = by_factor.get(k, 0) + band
    out = np.zeros((size, size), np.float32)
    for k, band in by_factor.items():
        if k == 1:
            out += band
        else:
            t = torch.from_numpy(np.ascontiguousarray(band))[None, None]
            out += F.interpolate(t, size=(size, size), mode="bicubic", align_corners=False)[0, 0].cpu().numpy()
    return out


def _draw_discs_and_boxes(rng: np.random.Generator, img: np.ndarray, n: int,
                          rmin: float, rmax: float) -> None:
    """Draw ``n`` anti-aliased discs and axis-aligned rectangles with random values in place."""
    size = img.shape[0]
    for _ in range(n):
        r = float(np.exp(rng.uniform(np.log(rmin), np.log(rmax))))
        cx, cy = rng.uniform(0, size, 2)
        val = rng.uniform(-1, 1)
        x0, x1 = max(int(cx - r - 2), 0), min(int(cx + r + 3), size)
        y0, y1 = max(int(cy - r - 2), 0), min(int(cy + r + 3), size)
        if x1 <= x0 or y1 <= y0:
            continue
        yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float32) + 0.5
        if rng.random() < 0.5:
            d = np.sqrt((xx - cx) ** 2 + (yy - cy) ** 2) - r
        else:
            ry = r * rng.uniform(0.5, 1.5)
            d = np.maximum(np.abs(xx - cx) - r, np.abs(yy - cy) - ry)
        alpha = np.clip(0.5 - d, 0.0, 1.0)
        img[y0:y1, x0:x1] = img[y0:y1, x0:x1] * (1 - alpha) + val * alpha


def _draw_lines(rng: np.random.Generator, img: np.ndarray, n: int, lmin: float, lmax: float) -> None:
    """Draw ``n`` anti-aliased line segments of random width and value in place."""
    size = img.shape[0]
    for _ in range(n):
        length = rng.uniform(lmin, lmax)
        ang = rng.uniform(0, np.pi)
        p = rng.uniform(0, size, 2)
        q = p + length * np.array([np.cos(ang), np.sin(ang)])
        w = rng.uniform(0.7, 3.0)
        val = rng.uniform(-1, 1)
        x0, x1 = int(max(min(p[0], q[0]) - w - 2, 0)), int(min(max(p[0], q[0]) + w + 3, size))
        y0, y1 = int(max(min(p[1], q[1]) - w - 2, 0)), int(min(max(p[1], q[1]) + w + 3, size))
        if x1 <= x0 or y1 <= y0:
            continue
        yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float32) + 0.5
        dx, dy = q - p
        t = np.clip(((xx - p[0]) * dx + (yy - p[1]) * dy) / (dx * dx + dy * dy), 0, 1)
        d = np.sqrt((xx - p[0] - t * dx) ** 2 + (yy - p[1] - t * dy) ** 2) - 0.5 * w
        alpha = np.clip(0.5 - d, 0.0, 1.0)
        img[y0:y1, x0:x1] = img[y0:y1, x0:x1] * (1 - alpha) + val * alpha


def _detail_field(rng: np.random.Generator, size: int) -> np.ndarray:
    """(size, size) float32 detail field in about [-1, 1]."""
    scale = size / 1024.0
    f = 0.4 * _value_noise(rng, size) + 0.55 * _blob_bands(rng, size)
    _draw_discs_and_boxes(rng, f, int(400 * scale * scale), 2.0, 40.0 * max(scale, 0.25))
    _draw_lines(rng, f, int(160 * scale * scale), 12.0, 160.0 * max(scale, 0.25))
    return f


def make_texture(rng: np.random.Generator, size: int = 1024) -> np.ndarray:
    """Generate one procedural RGB texture.

    Args:
        rng: seeded generator (consumed).
        size: side length in texels (>= 16).
    Returns:
        (size, size, 3) uint8 image.
    """
    if size < 16:
        raise ValueError(f"texture size must be >= 16, got {size}")
    a = _detail_field(rng, size)
    b = _detail_field(rng, size)
    smooth = _value_noise(rng, size, octaves=(2, 4))
    base = rng.uniform(0.35, 0.65, 3).astype(np.float32)
    ca = rng.uniform(0.4, 0.55, 3).astype(np.float32)  # main detail: luminance-like
    cb = rng.uniform(-0.35, 0.35, 3).astype(np.float32)  # secondary detail: chroma-like
    cs = rng.uniform(-0.15, 0.15, 3).astype(np.float32)
    img = base + a[..., None] * ca + b[..., None] * cb + smooth[..., None] * cs
    return (np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8)


def build_mipmaps(tex: np.ndarray) -> List[np.ndarray]:
    """Mip pyramid of an (S, S, C) uint8 texture: level 0 is the texture, each next level
    halves the size with a 2x2 box filter, down to 1x1. Levels are float32."""
    levels = [tex.astype(np.float32)]
    while min(levels[-1].shape[:2]) > 1:
        t = levels[-1]
        h, w = (t.shape[0] // 2) * 2, (t.shape[1] // 2) * 2
        t = t[:h, :w]
        levels.append(0.25 * (t[0::2, 0::2] + t[1::2, 0::2] + t[0::2, 1::2] + t[1::2, 1::2]))
    return levels


def _bilinear(level: np.ndarray, s: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Sample an (h, w, C) level at normalized coords s, t in [0, 1] (texel centres at
    (i + 0.5) / w), clamping to the edge. Returns (N, C)."""
    h, w = level.shape[:2]
    x = np.clip(s * w - 0.5, 0, w - 1)
    y = np.clip(t * h - 0.5, 0, h - 1)
    x0 = np.minimum(np.floor(x).astype(np.int64), w - 1)
    y0 = np.minimum(np.floor(y).astype(np.int64), h - 1)
    x1 = np.minimum(x0 + 1, w - 1)
    y1 = np.minimum(y0 + 1, h - 1)
    fx = (x - x0)[:, None].astype(np.float32)
    fy = (y - y0)[:, None].astype(np.float32)
    top = level[y0, x0] * (1 - fx) + level[y0, x1] * fx
    bot = level[y1, x0] * (1 - fx) + level[y1, x1] * fx
    return top * (1 - fy) + bot * fy


def sample_trilinear(mips: List[np.ndarray], s: np.ndarray, t: np.ndarray,
                     lod: np.ndarray) -> np.ndarray:
    """Trilinear (mip-mapped) texture lookup.

    Args:
        mips: pyramid from :func:`build_mipmaps`.
        s, t: (N,) normalized texture coordinates in [0, 1] (s along the width).
        lod: (N,) level of detail (log2 of the footprint in level-0 texels; <= 0 is sharpest).
    Returns:
        (N, C) float32 values in the texture's range.
    """
    if not (s.shape == t.shape == lod.shape) or s.ndim != 1:
        raise ValueError(f"s, t, lod must be equal (N,) arrays, got {s.shape}, {t.shape}, {lod.shape}")
    C = mips[0].shape[2]
    out = np.zeros((s.shape[0], C), np.float32)
    lod = np.clip(lod, 0.0, len(mips) - 1.0)
    l0 = np.floor(lod).astype(np.int64)
    frac = (lod - l0).astype(np.float32)
    for lv in np.unique(l0):
        m = l0 == lv
        v = _bilinear(mips[lv], s[m], t[m])
        if lv + 1 < len(mips):
            f = frac[m][:, None]
            nz = f[:, 0] > 0
            if nz.any():
                v[nz] = v[nz] * (1 - f[nz]) + _bilinear(mips[lv + 1], s[m][nz], t[m][nz]) * f[nz]
        out[m] = v
    return out


class TextureBank:
    """Lazily generated, cached textures, each fully determined by (seed, id, size).

    Regenerating a bank with the same seed and sizes gives bit-identical textures, so a
    scene written to disk only needs to store the seed and sizes.
    """

    def __init__(self, seed: int, sizes: Dict[int, int]):
        self.seed = int(seed)
        self.sizes = {int(k): int(v) for k, v in sizes.items()}
        self._mips: Dict[int, List[np.ndarray]] = {}

    def texture(self, tex_id: int) -> np.ndarray:
        """(S, S, 3) uint8 texture ``tex_id``."""
        return self.mips(tex_id)[0].astype(np.uint8)

    def mips(self, tex_id: int) -> List[np.ndarray]:
        if tex_id not in self.sizes:
            raise KeyError(f"Unknown texture id {tex_id}; known ids: {sorted(self.sizes)}")
        if tex_id not in self._mips:
            rng = np.random.default_rng([self.seed, 7919, tex_id])
            self._mips[tex_id] = build_mipmaps(make_texture(rng, self.sizes[tex_id]))
            logger.debug("generated texture %d (%d px)", tex_id, self.sizes[tex_id])
        return self._mips[tex_id]

    def to_dict(self) -> Dict:
        return {"seed": self.seed, "sizes": {str(k): v for k, v in self.sizes.items()}}

    @classmethod
    def from_dict(cls, d: Dict) -> "TextureBank":
        return cls(d["seed"], {int(k): v for k, v in d["sizes"].items()})

