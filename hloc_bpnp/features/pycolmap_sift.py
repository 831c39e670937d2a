"""SIFT / RootSIFT from COLMAP's C++ CPU extractor (``pycolmap.FeatureExtractor``), the
``sift_pycolmap`` preset: faster than kornia's SIFT on this CPU, as accurate in Strecha and
Middlebury leave-one-out with COLMAP's upsampled first octave, less accurate on 640x480
7-Scenes frames (README, "pycolmap SIFT preset"; kornia's stays the default).

pycolmap's keypoints are already in COLMAP's pixel convention (centre of the top-left pixel
at (0.5, 0.5)); they are handed to the base class in kornia's frame (minus 0.5), which
converts back with ``(k + 0.5) * s``: the resize is undone exactly once, no half-pixel shift.
COLMAP stores descriptors as uint8 (its L1-root normalisation x 512); they are returned as
float32 with unit L2 norm, as the NN matchers and the other SIFT extractor give them.
"""
from __future__ import annotations

import math
from typing import Any, Dict, List

import numpy as np
import torch

from .base import Extractor, Features, register_extractor


@register_extractor("sift_pycolmap")
class PycolmapSIFT(Extractor):
    """COLMAP's DoG keypoints + (Root)SIFT descriptors, 128-D, L2-normalised.

    Config:
        max_keypoints: at most this many keypoints, the largest scales (COLMAP's own ranking,
            applied again after orientation assignment, which can duplicate keypoints).
        rootsift: L1-root normalisation (RootSIFT, COLMAP's default) or plain L2.
        upright: no orientation assignment.
        peak_threshold, edge_threshold: COLMAP's DoG detection thresholds (peak 0.01 as hloc's
            DoG; COLMAP's default is 0.0067).
        first_octave: -1 upsamples the image once (COLMAP's default); 0 starts at full size
            (as hloc's DoG: faster, but fewer keypoints on small images, and measurably less
            accurate on the 640x480 Middlebury temple, see the README).
        max_num_orientations: orientations per keypoint (COLMAP default 2: a keypoint with two
            dominant gradients is returned twice).
        num_threads: threads of the C++ extractor (-1: all cores; one image uses one thread).
    Outputs ``scores`` (COLMAP's keypoint scale, its own ranking), ``scales`` (LAF scale =
    6 x COLMAP scale, original pixels) and ``oris`` (kornia LAF orientation = minus COLMAP's,
    radians), as :class:`~hloc_bpnp.features.sift.SIFT` does.
    """

    default_conf: Dict[str, Any] = {
        "max_keypoints": 4096,
        "rootsift": True,
        "upright": False,
        "peak_threshold": 0.01,
        "edge_threshold": 10.0,
        "first_octave": -1,
        "max_num_orientations": 2,
        "num_threads": 1,
    }
    supports_batch = False

    def _init(self, conf: Dict[str, Any]) -> None:
        import pycolmap

        if not conf["grayscale"]:
            raise ValueError(f"{conf['preset']}: SIFT works on grayscale images; set grayscale: true")
        if int(conf["max_keypoints"]) <= 0:
            raise ValueError(f"{conf['preset']}: max_keypoints must be positive, got {conf['max_keypoints']}")
        if str(conf["device"]) != "cpu":
            raise ValueError(f"{conf['preset']}: pycolmap's SIFT runs on the CPU (device: cpu), got {conf['device']!r}")
        opts = pycolmap.FeatureExtractionOptions()
        opts.type = pycolmap.FeatureExtractorType.SIFT
        opts.num_threads = int(conf["num_threads"])
        opts.use_gpu = False
        s = opts.sift
        s.max_num_features = int(conf["max_keypoints"])
        s.upright = bool(conf["upright"])
        s.peak_threshold = float(conf["peak_threshold"])
        s.edge_threshold = float(conf["edge_threshold"])
        s.first_octave = int(conf["first_octave"])
        s.max_num_orientations = int(conf["max_num_orientations"])
        s.normalization = (pycolmap.Normalization.L1_ROOT if conf["rootsift"] else pycolmap.Normalization.L2)
        self._extractor = pycolmap.FeatureExtractor.create(opts, device=pycolmap.Device.cpu)

    def _extract(self, images: torch.Tensor) -> List[Features]:
        out = []
        for b in range(images.shape[0]):
            img = images[b, 0].detach().cpu().numpy().astype(np.float32, copy=False)
            kps, desc = self._extractor.extract_from_float32_array(np.ascontiguousarray(np.clip(img, 0.0, 1.0)))
            n = len(kps)
            shape = np.array([(k.x, k.y, k.a11, k.a12, k.a21, k.a22) for k in kps], np.float64).reshape(n, 6)
            d = np.asarray(desc.data, np.float32).reshape(n, -1)
            xy = shape[:, :2] - 0.5  # COLMAP pixels -> kornia's frame (the base class adds 0.5 back)
            scale = np.sqrt(np.abs(shape[:, 2] * shape[:, 5] - shape[:, 3] * shape[:, 4]))
            ori = np.arctan2(shape[:, 4], shape[:, 2])  # COLMAP's orientation (image angle of the x-axis)
            keep = np.argsort(-scale, kind="stable")[: int(self.conf["max_keypoints"])]
            xy, scale, ori, d = xy[keep], scale[keep], ori[keep], d[keep]
            d /= np.maximum(np.linalg.norm(d, axis=1, keepdims=True), 1e-12)
            oris = -ori
            oris = np.where(oris <= -math.pi, oris + 2 * math.pi, oris)
            out.append({
                "keypoints": torch.from_numpy(xy.astype(np.float32)),
                "descriptors": torch.from_numpy(d),
                "scores": torch.from_numpy(scale.astype(np.float32)),
                "scales": torch.from_numpy((6.0 * scale).astype(np.float32)),
                "oris": torch.from_numpy(oris.astype(np.float32)),
            })
        return out
