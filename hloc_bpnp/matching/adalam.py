"""AdaLAM (Cavalli et al. 2020) outlier filtering on top of NN matching, via kornia.

AdaLAM needs local affine frames. They come from the features' ``lafs`` when present (KeyNet
family), else from ``keypoints`` + ``scales`` + ``oris`` (SIFT), else unit-scale upright
frames (DISK, ALIKED, ...: AdaLAM then cannot use scale/orientation consistency, so set
``orientation_difference_threshold``/``scale_rate_threshold`` to null for such features).
"""
from __future__ import annotations

from typing import Any, Dict

import kornia.feature as KF
import torch

from .base import Features, Matcher, Matches, empty_matches, register_matcher


def features_to_lafs(feats: Features) -> torch.Tensor:
    """Local affine frames (1, N, 2, 3) in KORNIA's pixel frame (top-left pixel centre at 0).

    Uses ``lafs`` if present, else ``keypoints``/``scales``/``oris`` (radians), else scale 1 and
    orientation 0.
    """
    kpts = feats["keypoints"].float()
    if "lafs" in feats:
        lafs = feats["lafs"].float().clone()
        lafs[..., :, 2] = kpts - 0.5
        return lafs[None]
    n = kpts.shape[0]
    scales = feats.get("scales")
    oris = feats.get("oris")
    scales = scales.float() if scales is not None else torch.ones(n, device=kpts.device)
    oris = oris.float() if oris is not None else torch.zeros(n, device=kpts.device)
    return KF.laf_from_center_scale_ori((kpts - 0.5)[None], scales.reshape(1, n, 1, 1),
                                        torch.rad2deg(oris).reshape(1, n, 1))


@register_matcher("adalam")
class AdaLAM(Matcher):
    """kornia's ``match_adalam``; ``matching_scores0`` = 1 - (squared-distance ratio of the NN)."""

    default_conf: Dict[str, Any] = {
        "area_ratio": 100,
        "search_expansion": 4,
        "ransac_iters": 128,
        "min_inliers": 6,
        "min_confidence": 200,
        "orientation_difference_threshold": 30,
        "scale_rate_threshold": 1.5,
        "detected_scale_rate_threshold": 5,
        "refit": True,
        "force_seed_mnn": True,
        "normalize": True,
    }

    def _match_pair(self, feats0: Features, feats1: Features) -> Matches:
        n0, n1 = feats0["descriptors"].shape[0], feats1["descriptors"].shape[0]
        if n0 < 2 or n1 < 2:
            return empty_matches(n0)
        dev = self.device
        d0 = feats0["descriptors"].to(dev, torch.float32)
        d1 = feats1["descriptors"].to(dev, torch.float32)
        if self.conf["normalize"]:
            d0 = torch.nn.functional.normalize(d0, dim=-1)
            d1 = torch.nn.functional.normalize(d1, dim=-1)
        lafs0 = features_to_lafs({k: v.to(dev) for k, v in feats0.items()})
        lafs1 = features_to_lafs({k: v.to(dev) for k, v in feats1.items()})
        config = {k: v for k, v in self.conf.items() if k not in ("preset", "device", "normalize")}
        config["device"] = dev

        def hw(f: Features) -> tuple:
            if "image_size" in f:
                w, h = (int(x) for x in f["image_size"])
                return h, w
            k = f["keypoints"]
            return int(k[:, 1].max()) + 1, int(k[:, 0].max()) + 1

        dists, idxs = KF.match_adalam(d0, d1, lafs0, lafs1, config=config, hw1=hw(feats0), hw2=hw(feats1))
        out = empty_matches(n0)
        if idxs.numel():
            i0, i1 = idxs[:, 0].cpu(), idxs[:, 1].cpu()
            out["matches0"][i0] = i1
            out["matching_scores0"][i0] = (1.0 - dists.reshape(-1).cpu().float()).clamp(0.0, 1.0)
        return out
