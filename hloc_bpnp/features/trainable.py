"""The trainable feature network (``hloc_bpnp.features.trainable_net``) as an extractor preset.

``build_extractor("trainable", weights="outputs/finetune/weights.pt")`` loads a state dict
written by ``hloc-bpnp finetune`` (``weights.pt``, or a ``checkpoint_last.pt`` — its ``model``
entry holds the network under ``net.``); the architecture keys must match the training config.
Keypoints: soft-argmax positions inside 4x4 cells (sub-pixel), descriptors 64-D by default.
"""
from __future__ import annotations

from typing import Any, Dict, List

import torch

from .base import Extractor, Features, load_weights, register_extractor, unpad_batch


@register_extractor("trainable")
class TrainableExtractor(Extractor):
    """Wraps :class:`hloc_bpnp.features.trainable_net.TrainableFeatureNet` (local weights only)."""

    default_conf: Dict[str, Any] = {
        "weights": None,
        "max_keypoints": 1024,
        "channels": [16, 32, 64, 96],
        "head_dim": 64,
        "descriptor_dim": 64,
        "nms_radius": 1,
        "border_cells": 1,
        "loc_temperature": 1.0,
    }
    size_multiple = 8

    def _init(self, conf: Dict[str, Any]) -> None:
        # imported here: training/ sits below features/ in the package layering
        from .trainable_net import TrainableFeatureNet

        keys = ("channels", "head_dim", "descriptor_dim", "nms_radius", "border_cells", "loc_temperature")
        self.net = TrainableFeatureNet({k: conf[k] for k in keys} | {"max_keypoints": int(conf["max_keypoints"])})
        state = conf["weights"]
        if state is not None:
            from ..weights import read_state_dict

            # weights_only: a weights file is data, never code (a crafted pickle is refused)
            obj = read_state_dict(state, f"Feature preset {conf['preset']!r}") if str(state).endswith(".pt") else None
            if isinstance(obj, dict) and "model" in obj and "step" in obj:  # a training checkpoint
                net_state = {k[len("net."):]: v for k, v in obj["model"].items() if k.startswith("net.")}
                self.net.load_state_dict(net_state)
                return
        load_weights(self.net, state, conf["preset"], "weights")

    def _extract(self, images: torch.Tensor) -> List[Features]:
        return unpad_batch(self.net(images))
