"""Translation-only Lucas-Kanade alignment of image patches, batched over points, and a cache
of gray images read on demand.

The low-level step shared by query patch alignment (``localization.patch_alignment``: a
localized query's keypoints aligned to the map's observations) and the map's keypoint
adjustment (``mapping.keypoint_adjustment``: every observation of a 3D point aligned to one
reference observation). Raw images are read in crops around the points only.

All positions are COLMAP pixels (top-left pixel centre at (0.5, 0.5)).
"""
from __future__ import annotations

import functools
import math
from collections import OrderedDict
from pathlib import Path
from typing import Mapping, Optional, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F
from kornia.filters import gaussian_blur2d

__all__ = ["sample_points", "normalise_patches", "align_patches", "align_to_templates", "sample_patches",
           "structure_tensors", "prepare_image", "gray_image", "as_gray_image", "MapImages"]


def sample_points(img: torch.Tensor, pts: torch.Tensor) -> torch.Tensor:
    """Bilinear samples of (1, C, H, W) ``img`` at (N, P, 2) COLMAP pixels -> (C, N, P); points
    outside read the border."""
    H, W = img.shape[-2:]
    g = torch.stack([2 * pts[..., 0] / W - 1, 2 * pts[..., 1] / H - 1], -1).to(img.dtype)
    return F.grid_sample(img, g[None], mode="bilinear", align_corners=False, padding_mode="border")[0]


def normalise_patches(v: torch.Tensor, eps: float = 1e-4) -> Tuple[torch.Tensor, torch.Tensor]:
    """(..., P) patches -> (zero-mean, unit-variance patches, their standard deviations + ``eps``
    (..., 1))."""
    c = v - v.mean(-1, keepdim=True)
    # the unbiased std, from the centred values (torch.std is ~10x slower on (N, 121) patches)
    sd = (c.square().sum(-1, keepdim=True) / max(v.shape[-1] - 1, 1)).sqrt() + eps
    return c / sd, sd


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


@functools.lru_cache(maxsize=32)
def _blur_matrix(size: int, blur_sigma: float) -> torch.Tensor:
    """(size, size) matrix M with ``M @ v`` the Gaussian blur of a length-``size`` signal with
    replicated borders: the kernel of :func:`_blur` with its out-of-range taps folded onto the
    end samples."""
    r = _blur_radius(blur_sigma)
    k = torch.exp(-torch.arange(-r, r + 1, dtype=torch.float64) ** 2 / (2 * blur_sigma ** 2))
    k = k / k.sum()
    rows = torch.arange(size)[:, None]
    cols = (rows + torch.arange(-r, r + 1)[None]).clamp(0, size - 1)
    M = torch.zeros(size, size, dtype=torch.float64)
    M.index_put_((rows.expand_as(cols), cols), k.expand(size, -1), accumulate=True)
    return M.float()


def _windows(image: torch.Tensor, points: torch.Tensor, half: int, blur_sigma: float) -> Tuple[torch.Tensor, torch.Tensor]:
    """Square blurred windows of a raw (1, 1, H, W) gray image (uint8 or float in [0, 1]) around
    (N, 2) COLMAP pixels: ``(windows (N, S, S) float32, origin (N, 2))`` with S = 2 * half + 1
    and ``origin`` the pixel index of each window's top-left pixel. Pixels outside the image
    repeat its border (as :func:`prepare_image`'s replicate padding).

    Few points: the crop read is wider by the blur radius and only the window's own pixels are
    blurred (a rectangular blur matrix), so every returned value has all its taps inside the
    crop and no work goes into the crop's margin. Many points (crops covering more pixels than
    the image): the image is blurred once and cropped. Both equal :func:`prepare_image`'s blurred
    image at each pixel within float rounding."""
    H, W = image.shape[-2:]
    dev = image.device
    br = _blur_radius(blur_sigma)
    o = torch.floor(points.to(dev, torch.float32) - 0.5).long() - half  # (N, 2) x, y
    S = 2 * half + 1
    # blurring whole crops costs ~3 matrix multiply-adds per crop pixel and tap row; blurring the
    # image once is cheaper when the crops cover more pixels than the image has
    whole = br > 0 and points.shape[0] * (S + 2 * br) ** 2 > H * W
    src = _blur(_to_float(image), blur_sigma) if whole else image
    m = 0 if whole else br  # the margin read around each window
    n_in = S + 2 * m
    r = torch.arange(n_in, device=dev) - m
    xs = (o[:, :1] + r).clamp(0, W - 1)  # (N, n_in)
    ys = (o[:, 1:] + r).clamp(0, H - 1)
    lin = (ys[:, :, None] * W + xs[:, None, :]).reshape(-1)
    crop = _to_float(src.reshape(-1).index_select(0, lin)).view(-1, n_in, n_in)  # (N, n_in, n_in)
    if m:
        M = _blur_matrix(n_in, float(blur_sigma))[m:n_in - m].to(dev, crop.dtype)  # rows with all taps inside
        crop = M @ crop @ M.T  # (N, S, S)
    return crop, o.float()


def _window_patches(windows: torch.Tensor, origin: torch.Tensor, centers: torch.Tensor, radius: int,
                    gradients: bool = False) -> torch.Tensor:
    """Bilinear samples of (N, S, S) ``windows`` on the (2 radius + 1)^2 pixel grid around
    (N, 2) COLMAP pixels ``centers`` (:func:`_patch_grid`'s order) -> (1, N, P), or with
    ``gradients`` (3, N, P): the samples and the x / y central differences of the windows
    sampled there.

    Every sample of a patch shares its centre's sub-pixel fraction, so the bilinear weights are
    four per patch: one gather of a block per patch (a single ``index_select``) and four
    weighted slices. The same shared fraction makes the interpolation commute with the central
    differences, so the gradients are the differences of a patch one pixel wider, not reads of
    two more images. On a CPU ~3x faster than ``grid_sample`` at the P points, and ~3.5x faster
    again than advanced indexing of three-channel windows (same values within float rounding;
    positions outside a window read its border)."""
    N, S, _ = windows.shape
    g = 1 if gradients else 0
    rr = int(radius) + g  # the sampled patch's half size
    local = centers.to(windows.dtype) - 0.5 - origin  # pixel-index coordinates inside each window
    fl = torch.floor(local)
    frac = local - fl
    base = fl.long() - rr
    Q = 2 * rr + 2
    ar = torch.arange(Q, device=windows.device)
    iy = (base[:, 1:] + ar).clamp(0, S - 1)  # (N, Q)
    ix = (base[:, :1] + ar).clamp(0, S - 1)
    n = torch.arange(N, device=windows.device)[:, None, None] * (S * S)
    lin = (n + iy[:, :, None] * S + ix[:, None, :]).reshape(-1)
    blk = windows.reshape(-1).index_select(0, lin).view(N, Q, Q)
    fx, fy = frac[:, 0].view(N, 1, 1), frac[:, 1].view(N, 1, 1)
    top = torch.lerp(blk[:, :-1, :-1], blk[:, :-1, 1:], fx)
    bottom = torch.lerp(blk[:, 1:, :-1], blk[:, 1:, 1:], fx)
    p = torch.lerp(top, bottom, fy)  # (N, 2 rr + 1, 2 rr + 1)
    if not gradients:
        return p.reshape(1, N, -1)
    out = torch.empty(3, N, Q - 3, Q - 3, dtype=p.dtype, device=p.device)
    out[0] = p[:, 1:-1, 1:-1]
    torch.sub(p[:, 1:-1, 2:], p[:, 1:-1, :-2], out=out[1]).mul_(0.5)
    torch.sub(p[:, 2:, 1:-1], p[:, :-2, 1:-1], out=out[2]).mul_(0.5)
    return out.reshape(3, N, -1)


def prepare_image(image, blur_sigma: float = 1.0) -> torch.Tensor:
    """(H, W) or (1, 1, H, W) gray image -> (1, 3, H, W): the image blurred with ``blur_sigma``
    and its x / y central differences, what :func:`align_patches` samples. Prepare an image
    once when it is aligned against several others."""
    return _with_gradients(_blur(_to_float(as_gray_image(image)), blur_sigma))


def align_patches(ref_image: torch.Tensor, image: torch.Tensor, ref_points: torch.Tensor, points: torch.Tensor,
                  radius: int = 5, iterations: int = 10, blur_sigma: float = 1.0, max_shift_px: float = 3.0,
                  min_ncc: float = 0.5, prepared: bool = False, return_tensors: bool = False,
                  return_residuals: bool = False):
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
        return_tensors: also return the (N, 2, 2) float64 structure tensors of the moved
            patches at the returned positions (:func:`structure_tensors` with this radius and
            blur: the alignment's own Gauss-Newton matrices, no extra image reads).
        return_residuals: also return the (N,) float64 residual variance of each point's
            normalised patch against its template at the returned position (the Gaussian
            window's weighted mean of the squared difference; ~``2 (1 - NCC)``). With it the
            Lucas-Kanade covariance of a shift is ``variance * tensor^-1``.
    Returns:
        ``(shift (N, 2), valid (N,) bool[, tensors][, variances])``; rejected points have shift 0
        (their tensors and variances at the start position). Same dtype as ``points``.
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
        return _no_shifts(points, out_dtype, return_tensors, return_residuals)
    if prepared:
        if ref_image.ndim != 4 or ref_image.shape[1] != 3 or image.ndim != 4 or image.shape[1] != 3:
            raise ValueError("align_patches(prepared=True) expects two (1, 3, H, W) prepare_image outputs")
        dev = image.device
        grid, _ = _patch_grid(radius, dev)

        def sample_ref(centers):
            return sample_points(ref_image[:, :1], centers[:, None] + grid)[0]

        def sample(centers):
            return sample_points(image, centers[:, None] + grid)
    else:
        ref_image, image = as_gray_image(ref_image), as_gray_image(image)
        dev = image.device
        ref_sample = _crop_sampler(ref_image, ref_points, radius, max_shift_px, blur_sigma, False)
        sample = _crop_sampler(image, points, radius, max_shift_px, blur_sigma, True)

        def sample_ref(centers):
            return ref_sample(centers.to(ref_image.device))[0].to(dev)
    T, _ = normalise_patches(sample_ref(ref_points.to(dev, torch.float32)))
    out = _lucas_kanade(sample, T, points, radius, iterations, max_shift_px, min_ncc, out_dtype)
    return _returned(out, return_tensors, return_residuals)


def _returned(out, return_tensors: bool, return_residuals: bool):
    """``(shift, valid)`` of a ``(shift, valid, tensors, variances)`` result, plus what was asked for."""
    return out[:2] + ((out[2],) if return_tensors else ()) + ((out[3],) if return_residuals else ())


def _no_shifts(points: torch.Tensor, out_dtype, return_tensors: bool, return_residuals: bool = False):
    """The empty result of the alignment functions."""
    out = (points.new_zeros(0, 2, dtype=out_dtype), torch.zeros(0, dtype=torch.bool),
           torch.zeros(0, 2, 2, dtype=torch.float64), torch.zeros(0, dtype=torch.float64))
    return _returned(out, return_tensors, return_residuals)


def _normalised_gradients(Ix: torch.Tensor, Iy: torch.Tensor, sd: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """d In / d shift of a normalised patch (:func:`normalise_patches`, ``sd`` its std): the gradient
    minus its patch mean over the patch's std (the std's own derivative, small near the
    solution, is dropped). (N, P) each."""
    return (Ix - Ix.mean(-1, keepdim=True)) / sd, (Iy - Iy.mean(-1, keepdim=True)) / sd


def _patch_grid(radius: int, device) -> Tuple[torch.Tensor, torch.Tensor]:
    """(P, 2) pixel offsets of a (2 radius + 1)^2 patch and their (P,) Gaussian window weights."""
    r = torch.arange(-radius, radius + 1, dtype=torch.float32, device=device)
    yy, xx = torch.meshgrid(r, r, indexing="ij")
    grid = torch.stack([xx.reshape(-1), yy.reshape(-1)], -1)
    return grid, torch.exp(-(grid ** 2).sum(-1) / (2 * (radius / 1.5) ** 2))


def _gauss_newton_matrices(I: torch.Tensor, Ix: torch.Tensor, Iy: torch.Tensor, w: torch.Tensor):
    """(normalised patches (N, P), their x / y derivatives (N, P) each, and the windowed 2x2
    Gauss-Newton matrices ``(a, b, c)`` (N,) each) of raw (N, P) patches and gradients."""
    In, sd = normalise_patches(I)
    jx, jy = _normalised_gradients(Ix, Iy, sd)
    return In, jx, jy, ((w * jx * jx).sum(-1), (w * jx * jy).sum(-1), (w * jy * jy).sum(-1))


def _residual_variance(res: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """(N,) window-weighted mean of the squared (N, P) residuals of normalised patches."""
    return (w * res * res).sum(-1) / w.sum()


def _as_tensors(abc) -> torch.Tensor:
    """(a, b, c) (N,) each -> (N, 2, 2) float64 symmetric matrices on the CPU."""
    a, b, c = abc
    return torch.stack([torch.stack([a, b], -1), torch.stack([b, c], -1)], -2).double().cpu()


def _lucas_kanade(sample, T: torch.Tensor, points: torch.Tensor, radius: int, iterations: int, max_shift_px: float,
                  min_ncc: float, out_dtype) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Shifts of ``points`` (N, 2) whose patches, read by ``sample`` ((N, 2) patch centres ->
    (3, N, P) values and x / y derivatives on :func:`_patch_grid`), best match the normalised
    (N, P) templates ``T``: ``(shift, valid, (N, 2, 2) structure tensors at the returned
    positions, (N,) float64 windowed residual variances there)``."""
    N = points.shape[0]
    dev = T.device
    grid, w = _patch_grid(radius, dev)
    p0 = points.to(dev, torch.float32)  # (N, 2)
    d = torch.zeros(N, 2, device=dev)
    abc0 = var0 = None
    for _ in range(int(iterations)):
        In, jx, jy, (a, b, c) = _gauss_newton_matrices(*sample(p0 + d), w)
        res = In - T
        if abc0 is None:  # at the start: the tensors and residuals of a rejected point
            abc0, var0 = (a, b, c), _residual_variance(res, w)
        # the 2x2 normal equations in closed form
        a, c = a + 1e-3, c + 1e-3
        gx, gy = (w * jx * res).sum(-1), (w * jy * res).sum(-1)
        det = a * c - b * b
        step = torch.stack([(c * gx - b * gy) / det, (a * gy - b * gx) / det], -1)
        d = (d - step).clamp(-max_shift_px, max_shift_px)
    In, _, _, abc = _gauss_newton_matrices(*sample(p0 + d), w)
    ncc = (In * T).mean(-1) * (grid.shape[0] / max(grid.shape[0] - 1, 1))  # std is the unbiased one
    valid = torch.isfinite(d).all(-1) & (ncc >= min_ncc)
    var = _residual_variance(In - T, w)
    abc0, var0 = (abc, var) if abc0 is None else (abc0, var0)
    tensors = _as_tensors(tuple(torch.where(valid, x1, x0) for x1, x0 in zip(abc, abc0)))
    var = torch.where(valid, var, var0).double().cpu()
    d = torch.where(valid[:, None], d, torch.zeros_like(d))
    return d.to(points.device, out_dtype), valid.to(points.device), tensors, var


def _crop_sampler(image: torch.Tensor, points: torch.Tensor, radius: int, max_shift_px: float, blur_sigma: float,
                  gradients: bool):
    """A sampler of crops of a raw gray image around ``points`` wide enough for patches of
    ``radius`` moved by up to ``max_shift_px`` (blurred there): (N, 2) patch centres ->
    (1 or 3, N, P) (:func:`_window_patches`)."""
    # the samples stay within radius + max shift + 1 (bilinear) + 1 (central difference) of the
    # window centre (and the centre's floor): one pixel to spare
    half = int(radius) + int(math.ceil(max_shift_px)) + 3
    win, o = _windows(image, points.to(image.device), half, blur_sigma)
    return lambda centers: _window_patches(win, o, centers, radius, gradients)


def sample_patches(image, points: torch.Tensor, radius: int = 5, blur_sigma: float = 1.0,
                   affines: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Zero-mean, unit-variance (N, P) patches of a gray ``image`` (as :func:`align_patches`
    reads it) around (N, 2) COLMAP pixels ``points``; P = (2 radius + 1)^2, float32.

    ``affines`` (N, 2, 2), optional: each patch's grid warped, its sample at grid offset ``g``
    (pixels, :func:`_patch_grid`'s order) read at ``points + A g``: a template seen from another
    view (e.g. :func:`~hloc_bpnp.geometry.plane_induced_affine`). The blur stays that of
    ``image``'s pixels. The identity gives the unwarped patches (within float rounding)."""
    image = as_gray_image(image)
    points = torch.as_tensor(points)
    if points.shape[0] == 0:
        return torch.zeros(0, (2 * radius + 1) ** 2)
    if affines is None:
        sample = _crop_sampler(image, points, radius, 0.0, blur_sigma, False)
        return normalise_patches(sample(points.to(image.device, torch.float32))[0])[0]
    return normalise_patches(_warped_patches(image, points, torch.as_tensor(affines), radius, blur_sigma))[0]


def _warped_patches(image: torch.Tensor, points: torch.Tensor, affines: torch.Tensor, radius: int,
                    blur_sigma: float) -> torch.Tensor:
    """(N, P) raw (not normalised) samples of ``image`` blurred by ``blur_sigma`` at ``points +
    A g`` for the (2 radius + 1)^2 grid offsets ``g``: bilinear reads of windows wide enough for
    the largest warped grid."""
    N = points.shape[0]
    if affines.shape != (N, 2, 2):
        raise ValueError(f"sample_patches: affines must be (N, 2, 2) = ({N}, 2, 2), got {tuple(affines.shape)}")
    dev = image.device
    A = affines.to(dev, torch.float32)
    g = _patch_grid(radius, dev)[0]  # (P, 2) x, y offsets
    reach = float((A.abs().sum(-1).amax()) * radius) if N else 0.0  # the largest |offset| along x or y
    half = int(math.ceil(reach)) + 2
    win, o = _windows(image, points.to(dev), half, blur_sigma)  # (N, S, S)
    S = win.shape[-1]
    pts = points.to(dev, torch.float32)[:, None] + torch.einsum("nij,pj->npi", A, g)  # (N, P, 2)
    local = pts - 0.5 - o[:, None]  # pixel-index coordinates inside each window
    grid = (2 * local + 1) / S - 1
    return F.grid_sample(win[:, None], grid[:, None], mode="bilinear", align_corners=False,
                         padding_mode="border")[:, 0, 0]


def structure_tensors(image, points: torch.Tensor, radius: int = 5, blur_sigma: float = 1.0) -> torch.Tensor:
    """(N, 2, 2) structure tensors of a gray ``image`` around (N, 2) COLMAP pixels ``points``:
    ``sum_p w_p g_p g_p^T`` over a (2 radius + 1)^2 patch with :func:`align_patches`' Gaussian
    window, ``g`` the gradient of the zero-mean, unit-variance patch (as the alignment reads it,
    blurred by ``blur_sigma``). It is the Gauss-Newton matrix of the patch's translation, so its
    inverse is the position covariance up to the intensity noise: small across an edge, large
    along it, large everywhere in a flat patch. float64, units of 1 / px^2."""
    image = as_gray_image(image)
    points = torch.as_tensor(points)
    if points.shape[0] == 0:
        return torch.zeros(0, 2, 2, dtype=torch.float64)
    _, w = _patch_grid(radius, image.device)
    pts = points.to(image.device, torch.float32)
    return _as_tensors(_gauss_newton_matrices(*_crop_sampler(image, pts, radius, 0.0, blur_sigma, True)(pts), w)[3])


def align_to_templates(image, points: torch.Tensor, templates: torch.Tensor, radius: int = 5, iterations: int = 10,
                       blur_sigma: float = 1.0, max_shift_px: float = 3.0,
                       min_ncc: float = 0.5, return_tensors: bool = False, return_residuals: bool = False):
    """:func:`align_patches` against given templates: shifts that make ``image`` around
    ``points`` (N, 2) look like ``templates`` (N, P) (normalised patches, e.g. averages of
    :func:`sample_patches` over the views of a point). Returns ``(shift (N, 2), valid (N,))``,
    with ``return_tensors`` the (N, 2, 2) structure tensors at the returned positions and with
    ``return_residuals`` the (N,) residual variances there (see :func:`align_patches`)."""
    points = torch.as_tensor(points)
    out_dtype = points.dtype if points.is_floating_point() else torch.float64
    if points.shape[0] == 0:
        return _no_shifts(points, out_dtype, return_tensors, return_residuals)
    image = as_gray_image(image)
    if templates.shape != (points.shape[0], (2 * radius + 1) ** 2):
        raise ValueError(f"align_to_templates: templates must be (N, {(2 * radius + 1) ** 2}) for {points.shape[0]} "
                         f"points and radius {radius}, got {tuple(templates.shape)}")
    sample = _crop_sampler(image, points, radius, max_shift_px, blur_sigma, True)
    out = _lucas_kanade(sample, templates.to(image.device, torch.float32), points, radius, iterations, max_shift_px,
                        min_ncc, out_dtype)
    return _returned(out, return_tensors, return_residuals)


def _to_float(img: torch.Tensor) -> torch.Tensor:
    """An 8-bit image as float32 in [0, 1]; a float one as float32."""
    return img.float() / 255.0 if img.dtype == torch.uint8 else img.float()


def as_gray_image(img) -> torch.Tensor:
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
        return as_gray_image(np.ascontiguousarray(image) if isinstance(image, np.ndarray) else image)
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
