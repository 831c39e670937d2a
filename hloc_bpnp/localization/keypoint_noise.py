"""Anisotropic keypoint noise for the BPnP refinement (``refinement.keypoint_covariance``).

A keypoint on an edge is located well across the edge and poorly along it, whatever put it
there (a detector, or the patch alignment's Lucas-Kanade, whose Gauss-Newton matrix is exactly
the patch's structure tensor). With ``method: structure_tensor`` each query keypoint i gets
the covariance

    C_i = floor^2 I + H_i^-1 / m,        m = median_i(trace(H_i^-1) / 2)

from the structure tensor ``H_i`` of the query image around it
(:func:`hloc_bpnp.features.patch_lk.structure_tensors`), and BPnP minimises
``sum_i rho(r_i^T W_i r_i)`` with ``W_i = C_i^-1`` divided by the median of ``trace(W_i) / 2``
(so that a typical keypoint keeps weight 1 per pixel^2 and the robust loss scale keeps its
meaning in pixels). ``floor`` (relative to the median keypoint's standard deviation) bounds how
sharp a direction can be. Measured: README, "Anisotropic keypoint noise".
"""
from __future__ import annotations

from typing import Dict

import numpy as np
import torch

from ..features.patch_lk import structure_tensors

__all__ = ["default_conf", "METHODS", "check_conf", "enabled", "structure_tensor_sqrt_info", "sqrt_info_from_tensors",
           "keypoint_sqrt_info"]

METHODS = ("none", "structure_tensor")

default_conf = {
    "method": "none",  # none | structure_tensor
    "radius": 7,  # patch half-size (px) of the structure tensor
    "blur_sigma": 0.5,  # Gaussian blur (px) before the gradients
    "floor": 0.05,  # isotropic std added to every keypoint, relative to the median keypoint's
}


def check_conf(conf: Dict) -> Dict:
    """``conf`` (a ``refinement.keypoint_covariance`` dict) checked; returns it."""
    unknown = sorted(set(conf) - set(default_conf))
    if unknown:
        raise ValueError(f"refinement.keypoint_covariance: unknown keys {unknown} (known: {sorted(default_conf)})")
    if conf["method"] not in METHODS:
        raise ValueError(f"refinement.keypoint_covariance.method must be one of {METHODS}, got {conf['method']!r}")
    if int(conf["radius"]) < 1 or float(conf["blur_sigma"]) < 0 or not float(conf["floor"]) >= 0:
        raise ValueError("refinement.keypoint_covariance: radius must be >= 1, blur_sigma and floor >= 0, got "
                         f"{conf['radius']!r}, {conf['blur_sigma']!r}, {conf['floor']!r}")
    return conf


def enabled(conf: Dict) -> bool:
    """True where a localization conf asks for anisotropic keypoint noise and refines with
    BPnP (the only refinement that uses it; ``pycolmap`` and ``none`` ablations ignore it)."""
    on = check_conf(conf["refinement"]["keypoint_covariance"])["method"] != "none"
    return on and conf["refinement"]["method"] == "bpnp"


def structure_tensor_sqrt_info(image, points: np.ndarray, radius: int = 7, blur_sigma: float = 0.5,
                               floor: float = 0.05) -> torch.Tensor:
    """(N, 2, 2) float64 ``L_i`` with ``L_i^T L_i = W_i`` (module docstring) for (N, 2) COLMAP
    pixels ``points`` of a gray ``image`` ((H, W) or (1, 1, H, W), uint8 or float in [0, 1]):
    the ``sqrt_info`` of :func:`hloc_bpnp.bpnp.solve_pnp`."""
    pts = torch.as_tensor(np.asarray(points, np.float64).reshape(-1, 2))
    if pts.shape[0] == 0:
        return torch.zeros(0, 2, 2, dtype=torch.float64)
    return sqrt_info_from_tensors(structure_tensors(image, pts, int(radius), float(blur_sigma)), floor)


def sqrt_info_from_tensors(H: torch.Tensor, floor: float = 0.05) -> torch.Tensor:
    """(N, 2, 2) ``L_i`` (module docstring) from given (N, 2, 2) structure tensors ``H_i`` (e.g.
    the patch alignment's own Gauss-Newton matrices at the aligned positions)."""
    H = torch.as_tensor(H, dtype=torch.float64)
    if H.shape[0] == 0:
        return torch.zeros(0, 2, 2, dtype=torch.float64)
    eye = torch.eye(2, dtype=torch.float64)
    # a flat patch (H ~ 0) gets a huge covariance, i.e. almost no weight, not a NaN
    Hinv = torch.linalg.inv(H + 1e-6 * eye)
    C = Hinv / Hinv.diagonal(dim1=-2, dim2=-1).sum(-1).div(2).median() + float(floor) ** 2 * eye
    W = torch.linalg.inv(C)
    W = W / W.diagonal(dim1=-2, dim2=-1).sum(-1).div(2).median()
    W = 0.5 * (W + W.transpose(-1, -2))
    return torch.linalg.cholesky(W).transpose(-1, -2)


def keypoint_sqrt_info(image, points: np.ndarray, conf: Dict, name: str = "query") -> torch.Tensor:
    """:func:`structure_tensor_sqrt_info` with a ``refinement.keypoint_covariance`` conf;
    ``image`` None is an error naming the query (the option needs its pixels)."""
    conf = check_conf(conf)
    if image is None:
        raise ValueError(f"query {name!r}: refinement.keypoint_covariance.method is {conf['method']!r} and needs "
                         f"the query image (Localizer.localize, or localize_features(..., image=))")
    return structure_tensor_sqrt_info(image, points, conf["radius"], conf["blur_sigma"], conf["floor"])
