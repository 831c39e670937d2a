"""Keypoint precision on real images: median Sampson error of inlier matches against the
ground-truth epipolar geometry (no 3D needed).

For pairs of posed images (default: consecutive images in name order), features from an
extractor config are matched by mutual nearest neighbours; the matches with a Sampson error
below ``max_error`` pixels (the inliers) are kept, and the median of their errors, in
full-resolution pixels, measures how precisely the detector places keypoints (SIFT ~0.14 px,
pretrained XFeat ~0.67 px on Strecha fountain at 1600 px, see ../shared/PITFALLS.md).
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch

from ..io.scene import Scene


def sampson_precision(scene: Scene, features: Union[str, Dict], pairs: Optional[Sequence[Tuple[str, str]]] = None,
                      max_pairs: int = 4, max_error: float = 4.0, matcher: Union[str, Dict] = "mnn") -> Dict[str, float]:
    """Median Sampson error (px) of inlier matches over ``pairs`` of ``scene``.

    Args:
        scene: posed images with cameras (``scene.image_dir`` holds them).
        features: extractor preset name or config dict.
        pairs: image-name pairs (default: the first ``max_pairs`` consecutive pairs by name).
        max_error: inlier threshold in pixels.
    Returns:
        ``median_px``, ``mean_px``, ``n_inliers``, ``n_pairs``.
    """
    from ..features import build_extractor
    from ..io.image import read_image
    from ..mapping.verification import sampson_errors
    from ..matching import build_matcher

    names = sorted(scene.names)
    if pairs is None:
        pairs = list(zip(names[:-1], names[1:]))[:max_pairs]
    if not pairs:
        raise ValueError("sampson_precision needs at least one pair of images")
    ext = build_extractor(features)
    m = build_matcher(matcher)
    feats = {}
    for n in sorted({n for p in pairs for n in p}):
        feats[n] = ext.extract(read_image(Path(scene.image_dir) / n, grayscale=False))
    errs: List[torch.Tensor] = []
    for a, b in pairs:
        mm = m.match(feats[a], feats[b])["matches0"]
        ok = mm >= 0
        if not bool(ok.any()):
            continue
        e = sampson_errors(scene[a].camera, scene[b].camera, scene[a].pose, scene[b].pose,
                           feats[a]["keypoints"][ok], feats[b]["keypoints"][mm[ok]])
        errs.append(e[e < max_error])
    e = torch.cat(errs) if errs else torch.zeros(0)
    if e.numel() == 0:
        return {"median_px": math.nan, "mean_px": math.nan, "n_inliers": 0, "n_pairs": len(pairs)}
    return {"median_px": float(e.median()), "mean_px": float(e.mean()), "n_inliers": int(e.numel()),
            "n_pairs": len(pairs)}
