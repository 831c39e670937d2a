"""Photometric alignment of a localized query's inlier keypoints to the map's observations.

A per-keypoint refiner moves each keypoint on its own; it cannot see that the query's keypoint
and the map's observation of the same 3D point sit on slightly different surface points
(detector-level errors of 1-3 px, measured on the Middlebury temple). Once the query has a
pose, each inlier keypoint is aligned to the observation of its 3D point in the map image
closest to the query's camera centre: a translation-only Lucas-Kanade fit of a normalised
image patch (zero mean, unit variance, Gaussian-weighted window), the map's patch fixed.
The pose is then refined again by BPnP from the aligned keypoints.

Measured (README, "Query patch alignment"; ``pipelines/finetune_real.py --no-train``, variant
``+aligned``): Middlebury temple leave-one-out, `limited` position 0.298 -> 0.245 cm with
pretrained XFeat and 0.258 -> 0.239 cm with the shipped refiner (pretrained: 0.298); Herz-Jesu
1.176 -> 0.839 cm (pretrained). Pairwise on the temple's fixed Sampson matches (one side
aligned to the other) the median Sampson error drops x0.52, while one position per keypoint
(a consensus over all its matches) gets x0.75 (``benchmarks/bench_pair_alignment.py``):
alignment pays most where one side is fixed, as the map's observations are for a query.

All positions are COLMAP pixels (top-left pixel centre at (0.5, 0.5)).
"""
from __future__ import annotations

import logging
import math
from collections import OrderedDict
from pathlib import Path
from typing import Callable, Dict, List, Mapping, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F
from kornia.filters import gaussian_blur2d

logger = logging.getLogger(__name__)

default_conf = {
    "enabled": False,
    "radius": 5,  # patch half-size, pixels (11 x 11)
    "iterations": 10,
    "blur_sigma": 1.0,  # Gaussian pre-smoothing of both images (widens LK's basin)
    # bound of each shift coordinate, applied at every iteration: a keypoint whose fit runs
    # away stays at the bound. Measured on 5 temple folds (pretrained XFeat, `limited` pos):
    # rejecting the shifts that reach it instead, 0.309 cm; bounded, 0.242; none 0.327
    "max_shift_px": 3.0,
    # zero-normalised cross-correlation of the aligned patches below which the keypoint stays
    # where it was (same folds: 0.3 -> 0.237 cm, 0.5 -> 0.301: too many good fits rejected)
    "min_ncc": 0.3,
}


def _sample(img: torch.Tensor, pts: torch.Tensor) -> torch.Tensor:
    """Bilinear samples of (1, C, H, W) ``img`` at (N, P, 2) COLMAP pixels -> (C, N, P)."""
    H, W = img.shape[-2:]
    g = torch.stack([2 * pts[..., 0] / W - 1, 2 * pts[..., 1] / H - 1], -1).to(img.dtype)
    return F.grid_sample(img, g[None], mode="bilinear", align_corners=False, padding_mode="border")[0]


def _normalise(v: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    mu = v.mean(-1, keepdim=True)
    sd = v.std(-1, keepdim=True) + 1e-4
    return (v - mu) / sd, sd


def _blur_radius(blur_sigma: float) -> int:
    return max(1, int(round(3 * blur_sigma))) if blur_sigma > 0 else 0


def _with_gradients(img: torch.Tensor) -> torch.Tensor:
    """(B, 1, H, W) -> (B, 3, H, W): the image and its x / y central differences."""
    gx = F.pad(img[..., :, 2:] - img[..., :, :-2], (1, 1, 0, 0), mode="replicate") / 2
    gy = F.pad(img[..., 2:, :] - img[..., :-2, :], (0, 0, 1, 1), mode="replicate") / 2
    return torch.cat([img, gx, gy], 1)


def _blur(img: torch.Tensor, blur_sigma: float) -> torch.Tensor:
    r = _blur_radius(blur_sigma)
    if r == 0:
        return img
    return gaussian_blur2d(img, (2 * r + 1, 2 * r + 1), (blur_sigma, blur_sigma), border_type="replicate")


def _windows(image: torch.Tensor, points: torch.Tensor, half: int, blur_sigma: float,
             gradients: bool) -> Tuple[torch.Tensor, torch.Tensor]:
    """Square crops of a raw (1, 1, H, W) gray image (uint8 or float in [0, 1]) around (N, 2)
    COLMAP pixels, blurred (and with their x / y central differences when ``gradients``):
    ``(windows (N, 1 or 3, S, S) float32, origin (N, 2))`` with S = 2 * half + 1 and
    ``origin`` the pixel index of each window's top-left pixel. Pixels outside the image repeat
    its border (as :func:`prepare_image`'s replicate padding)."""
    H, W = image.shape[-2:]
    dev = image.device
    o = torch.floor(points.to(dev, torch.float32) - 0.5).long() - half  # (N, 2) x, y
    r = torch.arange(2 * half + 1, device=dev)
    xs = (o[:, :1] + r).clamp(0, W - 1)  # (N, S)
    ys = (o[:, 1:] + r).clamp(0, H - 1)
    win = _to_float(image[0, 0][ys[:, :, None], xs[:, None, :]][:, None])  # (N, 1, S, S)
    win = _blur(win, blur_sigma)
    return (_with_gradients(win) if gradients else win), o.float()


def _sample_windows(windows: torch.Tensor, origin: torch.Tensor, pts: torch.Tensor) -> torch.Tensor:
    """Bilinear samples of (N, C, S, S) ``windows`` at (N, P, 2) COLMAP pixels -> (C, N, P)."""
    S = windows.shape[-1]
    local = pts - 0.5 - origin[:, None]  # pixel-index coordinates inside each window
    g = (2 * local / (S - 1) - 1).to(windows.dtype)[:, :, None]  # (N, P, 1, 2)
    out = F.grid_sample(windows, g, mode="bilinear", align_corners=True, padding_mode="border")  # (N, C, P, 1)
    return out[..., 0].permute(1, 0, 2)


def prepare_image(image, blur_sigma: float = 1.0) -> torch.Tensor:
    """(H, W) or (1, 1, H, W) gray image -> (1, 3, H, W): the image blurred with ``blur_sigma``
    and its x / y central differences, what :func:`align_patches` samples. Prepare an image
    once when it is aligned against several others."""
    return _with_gradients(_blur(_to_float(_as_image(image)), blur_sigma))


def align_patches(ref_image: torch.Tensor, image: torch.Tensor, ref_points: torch.Tensor, points: torch.Tensor,
                  radius: int = 5, iterations: int = 10, blur_sigma: float = 1.0, max_shift_px: float = 3.0,
                  min_ncc: float = 0.5, prepared: bool = False) -> Tuple[torch.Tensor, torch.Tensor]:
    """Shifts that make ``image`` around ``points`` look like ``ref_image`` around ``ref_points``.

    Translation-only Lucas-Kanade (Gauss-Newton) on zero-mean, unit-variance patches with a
    Gaussian window, batched over the points. Raw images are read in crops around the points
    only (blurred and differentiated there: the cost grows with the points, not the image
    size); ``prepared=True`` takes whole :func:`prepare_image` outputs instead (cheaper when
    one small image is aligned against many others). Both give the same shifts.

    Args:
        ref_image: (H, W) or (1, 1, H, W) gray image, uint8 or float in [0, 1], the fixed side.
        image: (H', W') or (1, 1, H', W') gray image of the points to move.
        ref_points: (N, 2) COLMAP pixels in ``ref_image``.
        points: (N, 2) COLMAP pixels in ``image`` (start positions).
        radius: patch half-size (pixels); iterations: Gauss-Newton steps.
        blur_sigma: Gaussian smoothing of both images before alignment (0: none).
        max_shift_px: bound of each shift coordinate (applied at every iteration).
        min_ncc: aligned patches correlating less than this are rejected.
        prepared: both images are already :func:`prepare_image` outputs (``blur_sigma`` unused).
    Returns:
        ``(shift (N, 2), valid (N,) bool)``; rejected points have shift 0. Same dtype as
        ``points``.
    """
    if radius < 1 or iterations < 1:
        raise ValueError(f"align_patches: radius and iterations must be >= 1, got {radius}, {iterations}")
    ref_points = torch.as_tensor(ref_points)
    points = torch.as_tensor(points)
    if ref_points.shape != points.shape or points.ndim != 2 or points.shape[-1] != 2:
        raise ValueError(f"align_patches: expected two (N, 2) point arrays, got {tuple(ref_points.shape)} "
                         f"and {tuple(points.shape)}")
    N = points.shape[0]
    out_dtype = points.dtype if points.is_floating_point() else torch.float64
    if N == 0:
        return points.new_zeros(0, 2, dtype=out_dtype), torch.zeros(0, dtype=torch.bool)
    if prepared:
        if ref_image.ndim != 4 or ref_image.shape[1] != 3 or image.ndim != 4 or image.shape[1] != 3:
            raise ValueError("align_patches(prepared=True) expects two (1, 3, H, W) prepare_image outputs")
        dev = image.device

        def sample_ref(pts):
            return _sample(ref_image[:, :1], pts)[0]

        def sample(pts):
            return _sample(image, pts)
    else:
        ref_image, image = _as_image(ref_image), _as_image(image)
        dev = image.device
        # the samples stay within radius + max shift + 1 (bilinear) + 1 (central difference)
        # of the window centre, the blur reads blur radius more: the crop's border never counts
        half = int(radius) + int(math.ceil(max_shift_px)) + _blur_radius(blur_sigma) + 3
        ref_win, ref_o = _windows(ref_image, ref_points.to(ref_image.device), half, blur_sigma, False)
        ref_win, ref_o = ref_win.to(dev), ref_o.to(dev)
        win, o = _windows(image, points.to(dev), half, blur_sigma, True)

        def sample_ref(pts):
            return _sample_windows(ref_win, ref_o, pts)[0]

        def sample(pts):
            return _sample_windows(win, o, pts)
    r = torch.arange(-radius, radius + 1, dtype=torch.float32, device=dev)
    yy, xx = torch.meshgrid(r, r, indexing="ij")
    grid = torch.stack([xx.reshape(-1), yy.reshape(-1)], -1)  # (P, 2)
    w = torch.exp(-(grid ** 2).sum(-1) / (2 * (radius / 1.5) ** 2))
    T, _ = _normalise(sample_ref(ref_points.to(dev, torch.float32)[:, None] + grid))
    p0 = points.to(dev, torch.float32)[:, None] + grid  # (N, P, 2)
    d = torch.zeros(N, 1, 2, device=dev)
    for _ in range(int(iterations)):
        I, Ix, Iy = sample(p0 + d)
        In, sd = _normalise(I)
        res = In - T
        # d In / d shift: the gradient minus its patch mean over the patch's std (the std's own
        # derivative, small near the solution, is dropped); the 2x2 normal equations in closed form
        jx = (Ix - Ix.mean(-1, keepdim=True)) / sd
        jy = (Iy - Iy.mean(-1, keepdim=True)) / sd
        wx, wy = jx * w, jy * w
        a, b, c = (wx * jx).sum(-1) + 1e-3, (wx * jy).sum(-1), (wy * jy).sum(-1) + 1e-3
        gx, gy = (wx * res).sum(-1), (wy * res).sum(-1)
        det = a * c - b * b
        step = torch.stack([(c * gx - b * gy) / det, (a * gy - b * gx) / det], -1)
        d = (d - step[:, None]).clamp(-max_shift_px, max_shift_px)
    In, _ = _normalise(sample(p0 + d)[0])
    d = d[:, 0]
    ncc = (In * T).mean(-1) * (grid.shape[0] / max(grid.shape[0] - 1, 1))  # std is the unbiased one
    valid = torch.isfinite(d).all(-1) & (ncc >= min_ncc)
    d = torch.where(valid[:, None], d, torch.zeros_like(d))
    return d.to(points.device, out_dtype), valid.to(points.device)


def _to_float(img: torch.Tensor) -> torch.Tensor:
    """An 8-bit image as float32 in [0, 1]; a float one as float32."""
    return img.float() / 255.0 if img.dtype == torch.uint8 else img.float()


def _as_image(img) -> torch.Tensor:
    """(1, 1, H, W) gray tensor: uint8 kept as is, anything else as float32."""
    img = torch.as_tensor(img)
    if img.ndim == 2:
        img = img[None, None]
    if img.ndim != 4 or img.shape[:2] != (1, 1):
        raise ValueError(f"align_patches: expected an (H, W) or (1, 1, H, W) gray image, got {tuple(img.shape)}")
    return img if img.dtype == torch.uint8 else img.float()


def gray_image(image) -> torch.Tensor:
    """A (1, 1, H, W) gray tensor for alignment: an 8-bit gray (H, W) or (1, 1, H, W) array or
    tensor as is (only crops are converted), anything else (RGB, float) through
    :func:`~hloc_bpnp.io.image.image_to_gray_tensor` (which also rejects unsupported dtypes) as
    float32 in [0, 1]."""
    from ..io.image import image_to_gray_tensor

    gray = image.ndim == 2 or (image.ndim == 4 and tuple(image.shape[:2]) == (1, 1))
    if gray and image.dtype in (np.uint8, torch.uint8):
        return _as_image(np.ascontiguousarray(image) if isinstance(image, np.ndarray) else image)
    return image_to_gray_tensor(image).float()


class MapImages:
    """Map images by name, read on demand from a folder or a name -> array mapping and kept as
    raw (1, 1, H, W) gray tensors (uint8 where the source is 8-bit: a 3072 x 2048 image takes
    6 MB): the most recently used, at most ``capacity`` images and ``max_megabytes`` in all
    (the last one read is always kept). :func:`align_patches` crops, blurs and differentiates
    only around the points it aligns, so one cache serves every ``blur_sigma``."""

    def __init__(self, source: Union[str, Path, Mapping[str, np.ndarray]], capacity: int = 64,
                 max_megabytes: float = 512.0) -> None:
        self.source = source
        self.capacity = int(capacity)
        self.max_bytes = float(max_megabytes) * 2 ** 20
        self._cache: "OrderedDict[str, torch.Tensor]" = OrderedDict()

    @property
    def nbytes(self) -> int:
        """Bytes held by the cached images."""
        return sum(t.numel() * t.element_size() for t in self._cache.values())

    def __call__(self, name: str) -> torch.Tensor:
        """(1, 1, H, W) gray image (uint8 or float32 in [0, 1]) of map image ``name``."""
        hit = self._cache.get(name)
        if hit is not None:
            self._cache.move_to_end(name)
            return hit
        from ..io.image import read_image

        if isinstance(self.source, Mapping):
            if name not in self.source:
                raise KeyError(f"map image {name!r} is not among the map images given for patch alignment")
            img = gray_image(np.asarray(self.source[name]))
        else:
            img = gray_image(read_image(Path(self.source) / name, grayscale=True))
        self._cache[name] = img
        while len(self._cache) > 1 and (len(self._cache) > self.capacity or self.nbytes > self.max_bytes):
            self._cache.popitem(last=False)
        return img


def reference_observations(map, rows: np.ndarray, candidates,
                           center: np.ndarray) -> Tuple[np.ndarray, np.ndarray, List[str]]:
    """For each ``points3D`` row, the map image (among ``candidates``) observing it whose camera
    centre is nearest to ``center`` and the observation's keypoint position.

    Args:
        map: a :class:`~hloc_bpnp.mapping.Map`; rows: (M,) point rows; candidates: map image
            names to consider; center: (3,) the query's camera centre (world).
    Returns:
        ``(owner (M,), keypoints (M, 2), names)``: ``names`` the candidates sorted by distance,
        ``owner`` the index into ``names`` of each row's observing image (-1: none of them),
        ``keypoints`` that observation's position (COLMAP pixels; zeros where owner is -1).
    """
    names = sorted(candidates, key=lambda n: float(np.linalg.norm(map.pose(n).center.reshape(-1).cpu().numpy()
                                                                   - center)))
    rows = np.asarray(rows, np.int64)
    owner = np.full(rows.shape[0], -1, np.int64)
    kps = np.zeros((rows.shape[0], 2), np.float64)
    for j, n in enumerate(names):
        todo = np.flatnonzero(owner < 0)
        if todo.size == 0:
            break
        k2p = np.asarray(map.kp_to_point[n])
        kp_idx = np.flatnonzero(k2p >= 0)
        if kp_idx.size == 0:
            continue
        order = np.argsort(k2p[kp_idx], kind="stable")
        srt = k2p[kp_idx][order]
        pos = np.clip(np.searchsorted(srt, rows[todo]), 0, srt.size - 1)
        hit = srt[pos] == rows[todo]
        sel = todo[hit]
        owner[sel] = j
        kps[sel] = np.asarray(map.features[n]["keypoints"], np.float64)[kp_idx[order[pos[hit]]]]
    return owner, kps, names


def align_to_map(query_image: torch.Tensor, points2D: np.ndarray, rows: np.ndarray, map,
                 map_images: Callable[[str], torch.Tensor], candidates, center: np.ndarray,
                 conf: Dict) -> Tuple[np.ndarray, Dict]:
    """Query keypoints ``points2D`` (M, 2) of 3D points ``rows`` (M,) aligned to their map
    observations (see :func:`reference_observations`).

    Args:
        query_image: (1, 1, H, W) gray query image (uint8, or float in [0, 1]).
        map_images: name -> (1, 1, H, W) gray map image (a :class:`MapImages`).
    Returns:
        ((M, 2) aligned positions, info {"n_aligned", "n_points", "median_shift_px"}).
    """
    owner, ref_kp, names = reference_observations(map, rows, candidates, center)
    query = _as_image(query_image)
    out = np.asarray(points2D, np.float64).copy()
    shifts = []
    n_ok = 0
    for j in np.unique(owner[owner >= 0]).tolist():
        s = np.flatnonzero(owner == j)
        ref = map_images(names[j])
        cam = map.camera(names[j])
        if (int(cam.width), int(cam.height)) != (ref.shape[-1], ref.shape[-2]):
            raise ValueError(f"patch alignment: map image {names[j]!r} is {ref.shape[-1]}x{ref.shape[-2]} px "
                             f"but its camera is {int(cam.width)}x{int(cam.height)} (wrong map image folder?)")
        d, ok = align_patches(ref, query, torch.from_numpy(ref_kp[s]), torch.from_numpy(out[s]),
                              int(conf["radius"]), int(conf["iterations"]), float(conf["blur_sigma"]),
                              float(conf["max_shift_px"]), float(conf["min_ncc"]))
        out[s] += d.cpu().numpy()
        n_ok += int(ok.sum())
        shifts.append(d[ok].norm(dim=-1).cpu().numpy())
    sh = np.concatenate(shifts) if shifts else np.zeros(0)
    return out, {"n_aligned": n_ok, "n_points": int(rows.shape[0]),
                 "median_shift_px": float(np.median(sh)) if sh.size else 0.0}
