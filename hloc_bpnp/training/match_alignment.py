"""Positions per MATCH: one side of each verified match aligned to the other by photometric
Lucas-Kanade, scored by the Sampson error under the known poses.

A refiner inside the extractor gives each keypoint ONE position, shared by all its matches.
On the Middlebury temple that stops at about x0.73-0.75 of the pretrained keypoints' Sampson
error even when the refiner trains on the scene itself (README, fine-tuning, "the temple's
ceiling"): the two keypoints of a match often sit on slightly different surface points, and
which point depends on the partner view. The localizer's ``patch_alignment`` stage works past
that limit where one side is fixed: a query keypoint is aligned to the map's observation of its
3D point. This module measures the same operation on a scene's fixed match set
(:class:`~hloc_bpnp.training.refiner_data.RefinerScene`): side ``a`` of each match stays at its
variant position, side ``b`` moves to where its patch looks like ``a``'s, with the localizer's
Lucas-Kanade settings (:data:`hloc_bpnp.localization.patch_alignment.default_conf`). The
poses only score; the alignment never sees them.

Used by ``pipelines/finetune_real.py`` (``sampson_aligned_px``, each variant's Sampson error
with per-match positions) and ``benchmarks/bench_pair_alignment.py``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import torch

from ..features.patch_lk import align_patches
from ..localization.patch_alignment import default_conf as _alignment_defaults
from .refiner_data import RefinerScene
from .refiner_train import match_errors

#: the Lucas-Kanade settings of the localizer's query alignment
default_conf: Dict = {k: _alignment_defaults[k] for k in ("radius", "iterations", "blur_sigma", "max_shift_px",
                                                           "min_ncc")}


def scene_gray_images(scene: RefinerScene, image_dir) -> List[torch.Tensor]:
    """The scene's images, in ``scene.image_names`` order, as ``(1, 1, H, W)`` gray tensors.

    Raises:
        FileNotFoundError: an image of the scene is not in ``image_dir`` (the message names it).
    """
    from ..io.image import image_to_gray_tensor, read_image

    out = []
    for n in scene.image_names:
        path = Path(image_dir) / n
        if not path.is_file():
            raise FileNotFoundError(f"match alignment: image {n!r} of scene {scene.name!r} is not in {image_dir}")
        out.append(image_to_gray_tensor(read_image(path, grayscale=True)))
    return out


def align_match_sides(scene: RefinerScene, images: Sequence[torch.Tensor], positions: torch.Tensor,
                      conf: Optional[Dict] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """Shift of side ``b`` of each match that aligns its patch to side ``a``'s.

    Args:
        scene: the match set (``matches`` (M, 2) global keypoint indices, ``match_pair``, ``image``).
        images: one gray image per ``scene.image_names`` entry (:func:`scene_gray_images`).
        positions: (N_keypoints, 2) keypoint positions, original pixels (COLMAP convention).
        conf: Lucas-Kanade settings (defaults: :data:`default_conf`).
    Returns:
        ``shift`` (M, 2) float64 original pixels (0 where the fit was rejected) and ``valid`` (M,)
        bool.
    """
    if len(images) != len(scene.image_names):
        raise ValueError(f"match alignment: {len(images)} images for the {len(scene.image_names)} of scene "
                         f"{scene.name!r}")
    if positions.shape != scene.base.shape:
        raise ValueError(f"match alignment: positions {tuple(positions.shape)}, expected {tuple(scene.base.shape)}")
    c = dict(default_conf)
    if conf:
        unknown = set(conf) - set(default_conf)
        if unknown:
            raise ValueError(f"match alignment: unknown settings {sorted(unknown)}; known {sorted(default_conf)}")
        c.update(conf)
    m, pair = scene.matches, scene.match_pair
    shift = torch.zeros(m.shape[0], 2, dtype=torch.float64)
    valid = torch.zeros(m.shape[0], dtype=torch.bool)
    pos = positions.to(torch.float64)
    for p in torch.unique(pair).tolist():
        k = (pair == p).nonzero()[:, 0]
        a, b = m[k, 0], m[k, 1]
        ia, ib = images[int(scene.image[a[0]])], images[int(scene.image[b[0]])]
        shift[k], valid[k] = align_patches(ia, ib, pos[a], pos[b], radius=int(c["radius"]),
                                           iterations=int(c["iterations"]), blur_sigma=float(c["blur_sigma"]),
                                           max_shift_px=float(c["max_shift_px"]), min_ncc=float(c["min_ncc"]))
    return shift, valid


def aligned_match_errors(scene: RefinerScene, images: Sequence[torch.Tensor], offsets: torch.Tensor,
                         conf: Optional[Dict] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """Sampson errors (original px) of all of ``scene``'s matches with positions per match.

    Args:
        offsets: (N_keypoints, 2) a variant's keypoint offsets in NETWORK pixels (zeros: the
            detector's keypoints; a refiner's outputs, :func:`~hloc_bpnp.training.refiner_train.refiner_outputs`).
        conf: Lucas-Kanade settings (:data:`default_conf`).
    Returns:
        ``errors`` (M,) float64: side ``a`` at its variant position, side ``b`` at its variant
        position aligned to ``a``; ``valid`` (M,) bool, the matches whose alignment was accepted
        (the others keep the variant positions).
    """
    off = offsets.to(torch.float64)
    shift, valid = align_match_sides(scene, images, scene.base + off * scene.scale, conf)
    m = scene.matches
    sel = torch.arange(m.shape[0])
    e = match_errors(scene, sel, {0: off[m[:, 0]], 1: off[m[:, 1]] + shift / scene.scale[m[:, 1]]})
    return e, valid
