"""SIFT / RootSIFT with kornia's accurate scale-space detector (the default extractor).

kornia 0.9's default ``SIFTFeature`` has no sub-pixel refinement and a scale-dependent
keypoint bias (see PITFALLS.md); ``SIFTFeatureScaleSpace(descriptor_backend="pyramid")``
refines position and scale in the DoG scale space and is both accurate (< 0.1 px on
synthetic blobs) and the fastest accurate option, so it is what this extractor runs.
"""
from __future__ import annotations

import math
from typing import Any, Dict, List

import kornia.feature as KF
import torch

from .base import Extractor, Features, register_extractor


@register_extractor("sift")
class SIFT(Extractor):
    """DoG keypoints + (Root)SIFT descriptors, 128-D, L2-normalised.

    Config:
        max_keypoints: number of strongest (|DoG|) detections kept.
        rootsift: L1-normalise then square-root the descriptors (RootSIFT); unit L2 norm either way.
        upright: no orientation assignment (all ``oris`` = 0).
        backend: ``"pyramid"`` (accurate, fast) or ``"patch"`` (accurate, ~3x slower).
        descriptor_layout: ``"opencv"`` (the layout LightGlue's SIFT weights expect; NN matchers
            do not care) or ``"kornia"``.
        score_threshold: drop detections whose |DoG| response is below it.
    Outputs ``scales`` (LAF scale = 6 x DoG sigma, original pixels) and ``oris`` (radians,
    kornia's LAF orientation) besides the common keys.
    """

    default_conf: Dict[str, Any] = {
        "max_keypoints": 4096,
        "rootsift": True,
        "upright": False,
        "backend": "pyramid",
        "descriptor_layout": "opencv",
        "score_threshold": 0.0,
    }

    def _init(self, conf: Dict[str, Any]) -> None:
        if conf["backend"] not in ("pyramid", "patch"):
            raise ValueError(f"{conf['preset']}: backend must be 'pyramid' or 'patch', got {conf['backend']!r}")
        if not conf["grayscale"]:
            raise ValueError(f"{conf['preset']}: SIFT works on grayscale images; set grayscale: true")
        if int(conf["max_keypoints"]) <= 0:
            raise ValueError(f"{conf['preset']}: max_keypoints must be positive, got {conf['max_keypoints']}")
        self.model = KF.SIFTFeatureScaleSpace(
            num_features=int(conf["max_keypoints"]),
            upright=bool(conf["upright"]),
            rootsift=bool(conf["rootsift"]),
            descriptor_backend=conf["backend"],
            descriptor_layout=conf["descriptor_layout"],
        )

    def _extract(self, images: torch.Tensor) -> List[Features]:
        lafs, responses, descs = self.model(images)
        out = []
        for b in range(images.shape[0]):
            keep = KF.laf_is_filled(lafs[b:b + 1])[0]
            resp = responses[b]
            if self.conf["score_threshold"] > 0:
                keep = keep & (resp.abs() >= self.conf["score_threshold"])
            laf = lafs[b][keep]
            out.append({
                "keypoints": KF.get_laf_center(laf[None])[0],
                "descriptors": descs[b][keep],
                "scores": resp[keep].abs(),
                "scales": KF.get_laf_scale(laf[None])[0].reshape(-1),
                "oris": torch.deg2rad(KF.get_laf_orientation(laf[None])[0].reshape(-1)),
            })
        return out


def sift_lightglue_scale_ori(scales: torch.Tensor, oris: torch.Tensor) -> tuple:
    """Convert our SIFT ``scales``/``oris`` (kornia LAF) to LightGlue's SIFT training convention.

    LightGlue's ``sift`` weights take COLMAP keypoint scale (DoG sigma = LAF scale / 6) and the
    image angle of the frame's x-axis (= minus the LAF orientation) in (-pi, pi].
    """
    o = -oris
    o = torch.where(o <= -math.pi, o + 2 * math.pi, o)
    o = torch.where(o > math.pi, o - 2 * math.pi, o)
    return scales / 6.0, o
