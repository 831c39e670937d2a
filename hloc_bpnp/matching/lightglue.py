"""LightGlue (Lindenberger et al. 2023) via kornia, with weights from a local file.

The architecture is built with ``kornia.feature.LightGlue(None, **feature_conf)`` (which
downloads nothing), using kornia's per-feature configuration (input dim, scale/orientation
or LAF inputs, ...), then the state dict is loaded from ``weights``.

Inputs per feature type:
  * ``sift``: ``scales``/``oris`` converted to LightGlue's COLMAP-style training convention
    (DoG sigma, x-axis angle); SIFT descriptors must be in OpenCV layout (our SIFT default);
  * ``doghardnet``/``dog_affnet_hardnet``: LAF scale and orientation in [0, 2 pi);
  * ``keynet_affnet_hardnet``: the features' ``lafs``;
  * others (``disk``, ``aliked``, ``superpoint``, ``dedodeb``, ``xfeat``...): keypoints only.
Keypoints are passed in COLMAP pixels (0.5 px from kornia's frame: negligible once LightGlue
normalises them by half the image size).

``match_many`` runs the pairs one by one: kornia's LightGlue takes no padding masks and runs
pruned pairs one at a time anyway.
"""
from __future__ import annotations

import math
import re
from typing import Any, Dict

import kornia.feature as KF
import torch

from ..features.base import unwrap_state_dict
from ..features.sift import sift_lightglue_scale_ori
from .base import Features, Matcher, Matches, empty_matches, register_matcher

_LEGACY = re.compile(r"^(self_attn|cross_attn)\.(\d+)\.")


def _rename(state: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    out = {}
    for k, v in state.items():
        if k.startswith("matcher."):
            k = k[len("matcher."):]
        k = _LEGACY.sub(lambda m: f"transformers.{m.group(2)}.{m.group(1)}.", k)
        out[k] = v
    return out


@register_matcher("lightglue")
class LightGlue(Matcher):
    """Config: ``features`` (a kornia LightGlue feature type), ``weights`` (local path; null: the
    packaged pretrained file for ``aliked``, ``disk`` and ``xfeat`` (LighterGlue)), and the
    LightGlue options ``filter_threshold``, ``depth_confidence``, ``width_confidence``, ``flash``, ``mp``
    (null keeps the feature type's default)."""

    default_conf: Dict[str, Any] = {
        "features": "sift",
        "weights": None,
        "filter_threshold": None,
        "depth_confidence": None,
        "width_confidence": None,
        "flash": None,
        "mp": None,
    }

    def _init(self, conf: Dict[str, Any]) -> None:
        ftype = conf["features"]
        if ftype not in KF.LightGlue.features:
            raise ValueError(f"{conf['preset']}: unknown LightGlue feature type {ftype!r}; "
                             f"kornia knows {sorted(KF.LightGlue.features)}")
        fconf = {k: v for k, v in KF.LightGlue.features[ftype].items() if k != "weights"}
        for k in ("filter_threshold", "depth_confidence", "width_confidence", "flash", "mp"):
            if conf[k] is not None:
                fconf[k] = conf[k]
        self.ftype = ftype
        self.net = KF.LightGlue(None, **fconf)
        self._load(conf["weights"], conf["preset"])

    #: pretrained files shipped by the weight packages (hloc_bpnp.weights), per feature type
    PACKAGED = {"aliked": "aliked_lightglue", "disk": "disk_lightglue", "xfeat": "xfeat_lighterglue"}

    def _load(self, path: Any, preset: str) -> None:
        from ..weights import load_state_strict, mark_non_persistent, read_state_dict, resolve_weights

        p = resolve_weights(path, self.PACKAGED.get(self.ftype), preset)
        source = f"Matcher preset {preset!r}: weights {p} (LightGlue '{self.ftype}')"
        raw = unwrap_state_dict(read_state_dict(p, source))
        if any(k.startswith("matcher.") for k in raw):  # a checkpoint of extractor + matcher (LighterGlue)
            raw = {k: v for k, v in raw.items() if k.startswith("matcher.")}
        state = _rename(raw)
        mark_non_persistent(self.net, ["confidence_thresholds"])  # computed from the config
        load_state_strict(self.net, state, source)
        self.net.eval()

    def _inputs(self, f: Features, which: str) -> Dict[str, torch.Tensor]:
        if "image_size" not in f:
            raise KeyError(f"{which}: LightGlue needs 'image_size' (W, H) in the features")
        dev = self.device
        data = {
            "keypoints": f["keypoints"].to(dev, torch.float32)[None],
            "descriptors": f["descriptors"].to(dev, torch.float32)[None],
            "image_size": f["image_size"].to(dev).reshape(1, 2).float(),
        }
        c = self.net.conf
        if c.add_scale_ori:
            if "scales" not in f or "oris" not in f:
                raise KeyError(f"{which}: LightGlue '{self.ftype}' needs 'scales' and 'oris' in the features")
            s, o = f["scales"].to(dev).float(), f["oris"].to(dev).float()
            if self.ftype == "sift":
                s, o = sift_lightglue_scale_ori(s, o)
            else:
                o = torch.remainder(o, 2 * math.pi)
            data["scales"], data["oris"] = s[None], o[None]
        elif c.add_laf:
            from .adalam import features_to_lafs

            if "lafs" not in f:
                raise KeyError(f"{which}: LightGlue '{self.ftype}' needs 'lafs' in the features")
            data["lafs"] = features_to_lafs({k: v.to(dev) for k, v in f.items()})
        return data

    def _match_pair(self, feats0: Features, feats1: Features) -> Matches:
        n0, n1 = feats0["descriptors"].shape[0], feats1["descriptors"].shape[0]
        if n0 == 0 or n1 == 0:
            return empty_matches(n0)
        d = self.net.conf.input_dim
        for which, f in (("feats0", feats0), ("feats1", feats1)):
            if f["descriptors"].shape[-1] != d:
                raise ValueError(f"{which}: LightGlue '{self.ftype}' expects {d}-D descriptors, "
                                 f"got {f['descriptors'].shape[-1]}")
        pred = self.net({"image0": self._inputs(feats0, "feats0"), "image1": self._inputs(feats1, "feats1")})
        m = pred["matches0"][0].long().cpu()
        s = pred["matching_scores0"][0].float().cpu()
        return {"matches0": m, "matching_scores0": torch.where(m >= 0, s, torch.zeros_like(s))}
