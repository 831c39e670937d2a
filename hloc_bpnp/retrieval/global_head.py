"""A small trainable global descriptor: CNN backbone + GeM or NetVLAD pooling.

No torchvision (none for this CPU torch): the backbone is a few conv-BN-ReLU blocks.
Weights come from a local state-dict file (``weights:`` in the config); nothing is
downloaded. The ``nn.Module`` is public so the fine-tuning code can train it.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Dict, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..config import merge

logger = logging.getLogger(__name__)


class GeM(nn.Module):
    """Generalised-mean pooling (Radenović et al. 2018) with a learnable exponent p.

    (B, C, H, W) -> (B, C).
    """

    def __init__(self, p: float = 3.0, eps: float = 1e-6, learn_p: bool = True):
        super().__init__()
        self.p = nn.Parameter(torch.tensor(float(p)), requires_grad=learn_p)
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.clamp(min=self.eps).pow(self.p).mean(dim=(-2, -1)).pow(1.0 / self.p)


class NetVLADPool(nn.Module):
    """NetVLAD layer (Arandjelović et al. 2016): soft-assigned residual aggregation.

    (B, C, H, W) -> (B, K*C), intra-normalised and L2-normalised.
    """

    def __init__(self, dim: int, num_clusters: int = 32, alpha: float = 10.0):
        super().__init__()
        self.centroids = nn.Parameter(torch.randn(num_clusters, dim) * 0.1)
        self.assign = nn.Conv2d(dim, num_clusters, 1, bias=True)
        self.alpha = alpha

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.normalize(x, dim=1)
        a = self.assign(x).flatten(2).softmax(dim=1)                 # (B, K, HW)
        feats = x.flatten(2)                                          # (B, C, HW)
        v = torch.einsum("bkn,bcn->bkc", a, feats) - a.sum(-1)[..., None] * self.centroids[None]
        v = F.normalize(v, dim=-1)                                    # intra-normalisation
        return F.normalize(v.flatten(1), dim=-1)


class GlobalHead(nn.Module):
    """Image -> L2-normalised global descriptor.

    Args:
        conf: overrides of :attr:`default_conf`: ``channels`` of the conv blocks (each block
            halves the resolution), ``in_channels`` (1 gray or 3 RGB), ``pooling`` 'gem' or
            'netvlad', ``gem_p``, ``num_clusters`` (NetVLAD), ``dim`` (output dimension of a
            final linear projection; None = no projection), ``weights`` (state-dict path).

    Input: (B, in_channels, H, W) float in [0, 1]. Output: (B, dim) unit-norm.
    """

    default_conf = {
        "channels": [32, 64, 128, 256],
        "in_channels": 3,
        "pooling": "gem",
        "gem_p": 3.0,
        "num_clusters": 32,
        "dim": 256,
        "weights": None,
    }

    def __init__(self, conf: Optional[Dict] = None):
        super().__init__()
        conf = dict(conf or {})
        conf.pop("type", None)
        self.conf = conf = merge(self.default_conf, conf, strict=True)
        layers, c_in = [], int(conf["in_channels"])
        for c in conf["channels"]:
            layers += [nn.Conv2d(c_in, c, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(c),
                       nn.ReLU(inplace=True), nn.Conv2d(c, c, 3, padding=1, bias=False),
                       nn.BatchNorm2d(c), nn.ReLU(inplace=True)]
            c_in = c
        self.backbone = nn.Sequential(*layers)
        if conf["pooling"] == "gem":
            self.pool = GeM(conf["gem_p"])
            pooled = c_in
        elif conf["pooling"] == "netvlad":
            self.pool = NetVLADPool(c_in, int(conf["num_clusters"]))
            pooled = c_in * int(conf["num_clusters"])
        else:
            raise ValueError(f"pooling must be 'gem' or 'netvlad', got {conf['pooling']!r}")
        self.proj = nn.Linear(pooled, int(conf["dim"])) if conf["dim"] else None
        self.out_dim = int(conf["dim"]) if conf["dim"] else pooled

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        if image.ndim != 4 or image.shape[1] != self.conf["in_channels"]:
            raise ValueError(f"image must be (B, {self.conf['in_channels']}, H, W), got {tuple(image.shape)}")
        x = self.pool(self.backbone(image))
        if self.proj is not None:
            x = self.proj(x)
        return F.normalize(x, dim=-1)

    @torch.no_grad()
    def describe(self, image: torch.Tensor) -> torch.Tensor:
        """Inference helper: eval mode, no grad. (B, C, H, W) -> (B, dim)."""
        was = self.training
        self.eval()
        try:
            return self(image)
        finally:
            self.train(was)


def load_global_head(conf: Optional[Dict] = None, map_location="cpu") -> GlobalHead:
    """Build a :class:`GlobalHead` and load ``conf['weights']`` (a local state-dict file).

    With ``weights: null`` the network is randomly initialised (for training), with a warning.
    Raises ``FileNotFoundError`` when the weights path does not exist.
    """
    model = GlobalHead(conf)
    path = model.conf["weights"]
    if path is None:
        logger.warning("GlobalHead: no weights given, using random initialisation")
        return model
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"GlobalHead weights not found at {path} (set 'weights:' to a local file)")
    state = torch.load(path, map_location=map_location, weights_only=True)
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as err:  # shape mismatches
        raise ValueError(f"Weights {path} do not fit the GlobalHead config {model.conf}: {err}") from None
    if missing or unexpected:
        raise ValueError(f"Weights {path} do not fit the GlobalHead config: missing {missing[:5]}, "
                         f"unexpected {unexpected[:5]}")
    logger.info("GlobalHead weights loaded from %s", path)
    return model
