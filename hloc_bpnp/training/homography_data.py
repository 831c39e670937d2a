"""Refiner training data from unposed images: pairs of random homographic warps of one image.

A keypoint detector should put a keypoint on the same physical point whatever the view. Two
warps ``A = warp(I, H1)`` and ``B = warp(I, H2)`` of one image ``I`` relate exactly by
``H = H2 H1^-1``, so a detection ``p_a`` in A and its match ``p_b`` in B should satisfy
``H(p_a) = p_b``: the transfer error is a per-keypoint, two-component supervision signal that
needs no pose, no intrinsics and no 3D, from any image (a user's own frames, video, photo
collections). Measured on the Middlebury temple (``pipelines/finetune_real.py --help``, README):
XFeat's keypoints transfer with a median error of 0.92 px under such warps, kornia SIFT's with
0.15 px, and the refiner trained on posed Strecha scenes lowers XFeat's to 0.58 px: the error
sees what the refiner changes, and there is headroom.

Each side gets its own photometric change (gain, gamma, noise) so the two sides never share
pixel values. Images are first shrunk to at most ``resize_max`` pixels (the network then sees
them unscaled: the refiner works in network pixels).

``build_homography_pairs`` computes the data once (frozen detector, no refiner);
``cached_homography_pairs`` stores it like :func:`~hloc_bpnp.training.refiner_data.cached_refiner_scene`.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Union

import numpy as np
import torch

from ..config import merge
from ..io.atomic import atomic_path

logger = logging.getLogger(__name__)

DATA_VERSION = 2

DEFAULT_CONF: Dict[str, Any] = {
    "pairs_per_image": 2,
    "resize_max": 640,       # longest side of the source image before warping
    "max_rotation_deg": 25.0,
    "max_log_scale": 0.25,   # scale in [exp(-x), exp(x)]
    "max_shift_px": 20.0,
    "max_perspective": 6e-4,  # projective row entries, 1/px
    "max_tilt": 1.0,         # anisotropic scale (foreshortening) t in [1/x, x] along a random direction
    "max_gain": 0.2,         # photometric: gain in [1-x, 1+x], gamma in [1-x, 1+x]
    "noise": 2.0,            # Gaussian noise sigma, 8-bit levels
    "max_error": 3.0,        # inlier threshold of the unrefined transfer error, network px
    "min_matches": 30,
    "seed": 0,
}


@dataclass
class HomographyPairs:
    """Cached homography training data (all tensors CPU): the matched keypoints of all warped
    images concatenated, as in :class:`~hloc_bpnp.training.refiner_data.RefinerScene`."""

    name: str
    sources: List[str]
    patches: torch.Tensor     # (N, 2, S, S) float32 [image, heatmap] patches
    base: torch.Tensor        # (N, 2) float64 detector keypoints, pixels of the warped image (COLMAP convention)
    scale: torch.Tensor       # (N, 2) float64 warped-image pixels per network pixel
    matches: torch.Tensor     # (M, 2) long global keypoint indices (side a, side b)
    match_pair: torch.Tensor  # (M,) long pair index
    H: torch.Tensor           # (P, 3, 3) float64: side-a pixels -> side-b pixels (COLMAP convention)

    def to_dict(self) -> Dict:
        d = {k: getattr(self, k) for k in ("patches", "base", "scale", "matches", "match_pair", "H")}
        d["meta"] = {"name": self.name, "sources": self.sources, "version": DATA_VERSION}
        return d

    @classmethod
    def from_dict(cls, d: Mapping) -> "HomographyPairs":
        m = d["meta"]
        return cls(m["name"], list(m["sources"]), *(d[k] for k in ("patches", "base", "scale", "matches",
                                                                    "match_pair", "H")))

    def subset_pairs(self, keep: torch.Tensor) -> "HomographyPairs":
        """Only the matches of pairs where ``keep`` (P,) bool is true (keypoint arrays shared)."""
        ok = keep[self.match_pair]
        return HomographyPairs(f"{self.name}[{int(keep.sum())}]", self.sources, self.patches, self.base, self.scale,
                               self.matches[ok], self.match_pair[ok], self.H)


def random_homography(w: int, h: int, gen: torch.Generator, conf: Mapping) -> torch.Tensor:
    """(3, 3) float64 random homography of a ``w`` x ``h`` image about its centre, in pixel-INDEX
    coordinates (pixel centres at integers, as ``kornia.geometry.warp_perspective``): a rotation,
    an isotropic scale, a tilt (anisotropic scale along a random direction, as a plane seen
    obliquely), a shift and a projective part, each uniform in its ``max_*`` range (the scale
    and tilt in log)."""
    def u() -> float:
        return float(torch.rand((), generator=gen, dtype=torch.float64)) * 2 - 1

    a = math.radians(u() * float(conf["max_rotation_deg"]))
    s = math.exp(u() * float(conf["max_log_scale"]))
    c, si = s * math.cos(a), s * math.sin(a)
    A = torch.tensor([[c, -si, 0.0], [si, c, 0.0], [0.0, 0.0, 1.0]], dtype=torch.float64)
    tilt = math.exp(u() * math.log(max(1.0, float(conf["max_tilt"]))))
    if tilt != 1.0:
        phi = math.pi * u()
        cp, sp = math.cos(phi), math.sin(phi)
        Rp = torch.tensor([[cp, -sp, 0.0], [sp, cp, 0.0], [0.0, 0.0, 1.0]], dtype=torch.float64)
        A = Rp @ torch.diag(torch.tensor([tilt, 1 / tilt, 1.0], dtype=torch.float64)) @ Rp.T @ A
    A[0, 2], A[1, 2] = u() * float(conf["max_shift_px"]), u() * float(conf["max_shift_px"])
    P = torch.eye(3, dtype=torch.float64)
    P[2, 0], P[2, 1] = u() * float(conf["max_perspective"]), u() * float(conf["max_perspective"])
    T = torch.eye(3, dtype=torch.float64)
    T[0, 2], T[1, 2] = -(w - 1) / 2, -(h - 1) / 2
    return torch.linalg.inv(T) @ P @ A @ T


def warp_image(image: np.ndarray, H: torch.Tensor) -> np.ndarray:
    """(H, W, 3) uint8 image warped by ``H`` (pixel-index coordinates, output -> input is H^-1),
    bilinear, same size, zeros outside."""
    from kornia.geometry.transform import warp_perspective

    t = torch.from_numpy(np.array(image, copy=True)).permute(2, 0, 1)[None].float()
    o = warp_perspective(t, H[None].float(), tuple(image.shape[:2]), mode="bilinear", align_corners=True)
    return o[0].permute(1, 2, 0).round().clamp(0, 255).to(torch.uint8).cpu().numpy()


def photometric(image: np.ndarray, gen: torch.Generator, conf: Mapping) -> np.ndarray:
    """Random gain, gamma and Gaussian noise (uint8 in, uint8 out)."""
    g = float(conf["max_gain"])
    r = torch.rand(2, generator=gen, dtype=torch.float64) * 2 - 1
    x = torch.from_numpy(image).double() / 255.0
    x = (x.clamp_min(0) ** (1 + g * float(r[1]))) * (1 + g * float(r[0]))
    x = x * 255.0 + float(conf["noise"]) * torch.randn(x.shape, generator=gen, dtype=torch.float64)
    return x.round().clamp(0, 255).to(torch.uint8).cpu().numpy()


def apply_homography(H: torch.Tensor, pts: torch.Tensor) -> torch.Tensor:
    """Map points (..., 2) by homographies (..., 3, 3) (broadcast), both in the same pixel convention."""
    q = torch.einsum("...ij,...j->...i", H, torch.cat([pts, torch.ones_like(pts[..., :1])], -1))
    return q[..., :2] / q[..., 2:]


def colmap_homography(H_index: torch.Tensor) -> torch.Tensor:
    """A homography in pixel-index coordinates -> the same map in COLMAP pixels (centres at +0.5)."""
    S = torch.eye(3, dtype=H_index.dtype)
    S[0, 2] = S[1, 2] = 0.5
    return S @ H_index @ torch.linalg.inv(S)


def shrink_image(image: np.ndarray, resize_max: int) -> np.ndarray:
    """(H, W[, C]) uint8 image shrunk (Lanczos) so its longest side is at most ``resize_max``."""
    h, w = image.shape[:2]
    s = resize_max / max(h, w)
    if s >= 1:
        return image
    from PIL import Image

    return np.asarray(Image.fromarray(image).resize((max(1, round(w * s)), max(1, round(h * s))), Image.LANCZOS))


def build_homography_pairs(images: Sequence[Union[str, Path]], features: Union[str, Dict], patch_size: int,
                           conf: Optional[Mapping] = None, name: str = "homographies",
                           progress: bool = False) -> HomographyPairs:
    """Extract (frozen detector, no refiner) two random warps of every image, match them by
    mutual nearest neighbours and keep matches that the pair's homography maps within
    ``max_error`` network pixels.

    Args:
        images: image files (any format :func:`~hloc_bpnp.io.image.read_image` reads).
        features: feature preset / config of a refinable extractor (XFeat); its ``resize_max``
            is raised to at least ``conf.resize_max`` so that the network sees the shrunk
            source unscaled.
        patch_size: the refiner's patch side.
        conf: :data:`DEFAULT_CONF` overrides.
    Raises:
        ValueError: no image, an extractor without refiner support, or no pair with
            ``min_matches`` matches (names the data set).
    """
    from tqdm import tqdm

    from ..config import load_config
    from ..features import build_extractor
    from ..io.image import read_image
    from .refiner_data import mutual_nn

    conf = merge(DEFAULT_CONF, dict(conf or {}), strict=True)
    images = [Path(p) for p in images]
    if not images:
        raise ValueError(f"homography data {name!r}: no image given")
    fconf = load_config("features", features) if isinstance(features, str) else dict(features)
    rm = int(conf["resize_max"])
    fconf = merge(fconf, {"refiner": None, "resize_max": max(int(fconf.get("resize_max") or rm), rm)})
    ext = build_extractor(fconf)
    if not hasattr(ext, "extract_with_patches"):
        raise ValueError(f"features {fconf.get('model')!r} have no refiner support (XFeat has)")
    gen = torch.Generator().manual_seed(int(conf["seed"]))
    parts: Dict[str, List[torch.Tensor]] = {k: [] for k in ("patches", "base", "scale", "matches", "pair", "H")}
    n_kp = 0
    for path in tqdm(images, desc=f"{name}: warps", disable=not progress):
        src = shrink_image(read_image(path), rm)
        h, w = src.shape[:2]
        for _ in range(int(conf["pairs_per_image"])):
            H1, H2 = random_homography(w, h, gen, conf), random_homography(w, h, gen, conf)
            fa = ext.extract_with_patches(photometric(warp_image(src, H1), gen, conf), patch_size)
            fb = ext.extract_with_patches(photometric(warp_image(src, H2), gen, conf), patch_size)
            Hab = colmap_homography(H2 @ torch.linalg.inv(H1))
            mm = mutual_nn(fa["descriptors"], fb["descriptors"])
            if mm.shape[0] == 0:
                continue
            sb = float(fb["scale"].double().mean())
            err = (apply_homography(Hab, fa["keypoints"][mm[:, 0]].double())
                   - fb["keypoints"][mm[:, 1]].double()).norm(dim=-1) / sb
            mm = mm[err < float(conf["max_error"])]
            if mm.shape[0] < int(conf["min_matches"]):
                continue
            m = mm.shape[0]  # only matched keypoints are kept: a at rows 0..m-1, b at m..2m-1
            for f, idx in ((fa, mm[:, 0]), (fb, mm[:, 1])):
                parts["patches"].append(f["patches"][idx])
                parts["base"].append(f["keypoints"][idx].double())
                parts["scale"].append(f["scale"].double().expand(m, 2))
            ar = torch.arange(m) + n_kp
            parts["matches"].append(torch.stack([ar, ar + m], -1))
            parts["pair"].append(torch.full((m,), len(parts["H"]), dtype=torch.long))
            parts["H"].append(Hab)
            n_kp += 2 * m
    if not parts["H"]:
        raise ValueError(f"homography data {name!r}: no warped pair has {conf['min_matches']} verified matches "
                         f"(images too small or textureless?)")
    hp = HomographyPairs(name, [str(p) for p in images], torch.cat(parts["patches"]), torch.cat(parts["base"]),
                         torch.cat(parts["scale"]), torch.cat(parts["matches"]), torch.cat(parts["pair"]),
                         torch.stack(parts["H"]))
    logger.info("homography data %s: %d images, %d pairs, %d keypoints, %d matches", name, len(images),
                hp.H.shape[0], hp.base.shape[0], hp.matches.shape[0])
    return hp


def cached_homography_pairs(images: Sequence[Union[str, Path]], features: Union[str, Dict], patch_size: int,
                            conf: Optional[Mapping] = None, cache_dir: Optional[Union[str, Path]] = None,
                            name: str = "homographies", progress: bool = False) -> HomographyPairs:
    """:func:`build_homography_pairs`, cached under ``cache_dir`` (default: the refiner data
    cache) by image list, feature config and options."""
    from ..config import load_config
    from .refiner_data import default_cache_dir

    fconf = load_config("features", features) if isinstance(features, str) else dict(features)
    fconf = {k: v for k, v in fconf.items() if k not in ("refiner", "refiner_conf", "preset")}
    conf = merge(DEFAULT_CONF, dict(conf or {}), strict=True)
    key = hashlib.sha1(json.dumps({"images": [str(Path(p).resolve()) for p in images], "features": fconf,
                                   "conf": conf, "patch_size": patch_size, "version": DATA_VERSION},
                                  sort_keys=True, default=str).encode()).hexdigest()[:16]
    path = (Path(cache_dir) if cache_dir else default_cache_dir()) / f"homographies_{name}_{key}.pt"
    if path.is_file():
        logger.info("homography data %s: cached %s", name, path)
        return HomographyPairs.from_dict(torch.load(path, map_location="cpu", weights_only=True))
    hp = build_homography_pairs(images, fconf, patch_size, conf, name, progress)
    with atomic_path(path) as tmp:
        torch.save(hp.to_dict(), tmp)
    return hp


def transfer_errors(pairs: HomographyPairs, sel: torch.Tensor, off_a: torch.Tensor,
                    off_b: torch.Tensor) -> torch.Tensor:
    """(m,) transfer errors in NETWORK pixels of side b of matches ``sel`` with per-side keypoint
    offsets (m, 2) in network pixels: ``|H(p_a + s_a o_a) - (p_b + s_b o_b)| / s_b``."""
    m = pairs.matches[sel]
    a, b = m[:, 0], m[:, 1]
    pa = pairs.base[a] + off_a * pairs.scale[a]
    pb = pairs.base[b] + off_b * pairs.scale[b]
    return (apply_homography(pairs.H[pairs.match_pair[sel]], pa) - pb).norm(dim=-1) / pairs.scale[b].mean(-1)


def image_list(sources: Sequence[Union[str, Path]], every: int = 1,
               exts: Sequence[str] = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".tif", ".tiff"),
               exclude: Sequence[str] = (".depth.",)) -> List[Path]:
    """Image files of ``sources`` (files, or folders searched recursively, sorted), every
    ``every``-th of each folder; names containing one of ``exclude`` are skipped (7-Scenes'
    ``.depth.png`` maps).

    Raises:
        FileNotFoundError: a source that does not exist or a folder without images.
    """
    out: List[Path] = []
    for s in sources:
        s = Path(s)
        if s.is_file():
            out.append(s)
            continue
        if not s.is_dir():
            raise FileNotFoundError(f"homography images: {s} does not exist")
        found = sorted(p for p in s.rglob("*") if p.suffix.lower() in exts and p.is_file()
                       and not any(x in p.name for x in exclude))
        if not found:
            raise FileNotFoundError(f"homography images: no image in {s}")
        out += found[::max(1, int(every))]
    return out


def pop_homography_conf(dconf: Dict) -> Optional[Dict]:
    """Pop the ``homography`` entry of a training preset's ``data`` section (``None``: absent):
    :data:`DEFAULT_CONF` overrides plus ``val_every``."""
    h = dconf.pop("homography", None)
    return dict(h) if h is not None else None


def homography_training_sets(images: Sequence[Union[str, Path]], features: Union[str, Dict], patch_size: int,
                             conf: Optional[Mapping] = None, cache_dir: Optional[Union[str, Path]] = None,
                             name: str = "homographies", progress: bool = False):
    """(train, val) lists of :class:`HomographyPairs` of ``images``: every ``conf.val_every``-th
    image (default 5th) validates, the others train (val is empty with fewer than
    ``val_every`` images). Both cached (:func:`cached_homography_pairs`).

    Raises:
        ValueError: no image.
    """
    conf = dict(conf or {})
    ve = int(conf.pop("val_every", 5))
    images = [Path(p) for p in images]
    if not images:
        raise ValueError(f"homography data {name!r}: no image given")
    val = images[ve - 1::ve] if ve > 0 else []
    train = [p for p in images if p not in set(val)]
    tr = [cached_homography_pairs(train, features, patch_size, conf, cache_dir, f"{name}_train", progress)]
    va = ([cached_homography_pairs(val, features, patch_size, {**conf, "seed": int(conf.get("seed", 0)) + 1},
                                   cache_dir, f"{name}_val", progress)] if val else [])
    return tr, va
