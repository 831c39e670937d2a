"""A compact trainable local feature network with differentiable keypoint positions.

Read top to bottom:

1. **Backbone** — a few 3x3 conv blocks down to 1/4 resolution (the "cell" grid, one cell =
   ``cell x cell`` pixels), plus one block at 1/8 that is upsampled back for context.
2. **Heads** on the 1/4 grid:
   * ``score``: one logit per cell (detection / reliability), ``sigmoid`` -> (0, 1);
   * ``loc``: ``cell*cell`` logits per cell, a softmax over the pixels of the cell whose
     expectation (a soft-argmax) is the keypoint position — so keypoint POSITIONS are a
     differentiable function of the weights;
   * ``desc``: a dense ``descriptor_dim`` map, L2-normalised.
3. **Detection**: cell-level non-maximum suppression and top-k on the (detached) scores select
   cells; the keypoint of a selected cell is its soft-argmax position, its descriptor is the
   dense map sampled bilinearly at that position (gradients reach the position too).

Keypoints come out in the network's pixel frame, kornia's (centre of the top-left pixel at
(0, 0)); callers convert to COLMAP pixels with ``+ 0.5`` (times the resize scale) at the edge.
No normalisation layer mixes batch items, so a batch gives the same result as its items one by
one (needed for exact data-parallel equivalence).
"""
from __future__ import annotations

from typing import Any, Dict, Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..config import merge


def _block(c_in: int, c_out: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride, 1), nn.ReLU(inplace=True),
                         nn.Conv2d(c_out, c_out, 3, 1, 1), nn.ReLU(inplace=True))


def sample_descriptors(dense: torch.Tensor, keypoints: torch.Tensor, image_hw) -> torch.Tensor:
    """Bilinearly sample a dense descriptor map at keypoints and L2-normalise.

    Args:
        dense: (B, D, h, w) descriptor map covering the image.
        keypoints: (B, N, 2) pixel positions (x, y), kornia frame of an (H, W) image.
        image_hw: (H, W) of the image the keypoints refer to.
    Returns:
        (B, N, D) unit descriptors (differentiable w.r.t. ``dense`` and ``keypoints``).
    """
    H, W = image_hw
    size = keypoints.new_tensor([W, H])
    grid = (keypoints + 0.5) / size * 2 - 1  # pixel edges at -1 / +1 (align_corners=False)
    desc = F.grid_sample(dense, grid[:, None], mode="bilinear", align_corners=False,
                         padding_mode="border")  # (B, D, 1, N)
    return F.normalize(desc[:, :, 0].transpose(1, 2), dim=-1)


class TrainableFeatureNet(nn.Module):
    """Keypoints (soft-argmax in cells), scores and descriptors from a grayscale image.

    Config (``default_conf``):
        channels: widths of the blocks at 1, 1/2, 1/4, 1/8 resolution.
        head_dim: width of the fused 1/4 feature map the heads read.
        descriptor_dim: D of the L2-normalised descriptors.
        max_keypoints: cells kept per image (top-k by score after NMS).
        nms_radius: cell-level NMS radius (0 disables).
        border_cells: cells at the image border that never yield keypoints.
        loc_temperature: divides the ``loc`` logits before the in-cell softmax.
        detach_descriptor_keypoints: sample descriptors at detached keypoint positions, so a
            descriptor loss cannot move keypoints (positions are then trained only through the
            geometry, i.e. the pose loss); outputs are identical, only gradients change.
    """

    cell = 4
    size_multiple = 8
    in_channels = 1
    default_conf: Dict[str, Any] = {
        "channels": [16, 32, 64, 96],
        "head_dim": 64,
        "descriptor_dim": 64,
        "max_keypoints": 512,
        "nms_radius": 1,
        "border_cells": 1,
        "loc_temperature": 1.0,
        "detach_descriptor_keypoints": False,
    }

    def __init__(self, conf: Optional[Dict[str, Any]] = None) -> None:
        super().__init__()
        self.conf = conf = merge(self.default_conf, conf or {}, strict=True)
        c1, c2, c3, c4 = conf["channels"]
        self.stem = nn.Sequential(nn.Conv2d(1, c1, 3, 1, 1), nn.ReLU(inplace=True))
        self.block2 = _block(c1, c2, 2)  # 1/2
        self.block4 = _block(c2, c3, 2)  # 1/4
        self.block8 = _block(c3, c4, 2)  # 1/8 context
        ch = conf["head_dim"]
        self.fuse = nn.Sequential(nn.Conv2d(c3 + c4, ch, 3, 1, 1), nn.ReLU(inplace=True))
        self.score_head = nn.Conv2d(ch, 1, 1)
        self.loc_head = nn.Conv2d(ch, self.cell * self.cell, 1)
        self.desc_head = nn.Sequential(nn.Conv2d(ch, ch, 3, 1, 1), nn.ReLU(inplace=True),
                                       nn.Conv2d(ch, conf["descriptor_dim"], 1))
        # in-cell pixel-centre offsets (x, y), row-major like the loc channels
        ij = torch.arange(self.cell, dtype=torch.float32)
        yy, xx = torch.meshgrid(ij, ij, indexing="ij")
        self.register_buffer("offsets", torch.stack([xx.reshape(-1), yy.reshape(-1)], -1), persistent=False)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
                nn.init.zeros_(m.bias)

    def weights_module(self) -> nn.Module:
        """The module saved as the ``trainable`` preset's weights file: the whole network."""
        return self

    def parameter_groups(self) -> Dict[str, list]:
        """``detector`` (score and in-cell offset heads), ``descriptor`` (its head), ``backbone``."""
        det = list(self.loc_head.parameters()) + list(self.score_head.parameters())
        desc = list(self.desc_head.parameters())
        ids = {id(p) for p in det + desc}
        return {"detector": det, "descriptor": desc, "backbone": [p for p in self.parameters() if id(p) not in ids]}

    # -- dense maps -----------------------------------------------------------------------
    def dense(self, image: torch.Tensor) -> Dict[str, torch.Tensor]:
        """Dense outputs on the cell grid.

        Args:
            image: (B, 1, H, W) in [0, 1], H and W multiples of ``size_multiple``.
        Returns:
            dict with ``score`` (B, h, w) logits, ``loc`` (B, cell^2, h, w) logits and
            ``desc`` (B, D, h, w) unit descriptors, h = H / cell, w = W / cell.
        """
        if image.ndim != 4 or image.shape[1] != 1:
            raise ValueError(f"image must be (B, 1, H, W), got {tuple(image.shape)}")
        H, W = image.shape[-2:]
        m = self.size_multiple
        if H % m or W % m:
            raise ValueError(f"image height and width must be multiples of {m}, got {H}x{W}")
        mean = image.mean((-2, -1), keepdim=True)
        std = image.std((-2, -1), keepdim=True).clamp_min(1e-3)
        x = self.stem((image - mean) / std)
        x4 = self.block4(self.block2(x))
        x8 = self.block8(x4)
        x = self.fuse(torch.cat([x4, F.interpolate(x8, size=x4.shape[-2:], mode="bilinear",
                                                   align_corners=False)], 1))
        return {
            "score": self.score_head(x)[:, 0],
            "loc": self.loc_head(x),
            "desc": F.normalize(self.desc_head(x), dim=1),
        }

    # -- detection -------------------------------------------------------------------------
    def forward(self, image: torch.Tensor, max_keypoints: Optional[int] = None) -> Dict[str, torch.Tensor]:
        """Detect and describe.

        Args:
            image: (B, 1, H, W) in [0, 1].
            max_keypoints: overrides ``conf["max_keypoints"]``.
        Returns:
            dict with ``keypoints`` (B, K, 2) (kornia pixel frame, differentiable),
            ``scores`` (B, K) in (0, 1) (differentiable), ``descriptors`` (B, K, D)
            (differentiable), ``valid`` (B, K) bool (False for padding when fewer than K cells
            survive NMS) and ``dense`` (the maps of :meth:`dense`).
        """
        out = self.dense(image)
        B, h, w = out["score"].shape
        c = self.cell
        k = min(int(max_keypoints or self.conf["max_keypoints"]), h * w)
        with torch.no_grad():
            s = out["score"].detach().clone()
            r = int(self.conf["nms_radius"])
            if r > 0:
                keep = s == F.max_pool2d(s[:, None], 2 * r + 1, 1, r)[:, 0]
                s = torch.where(keep, s, torch.full_like(s, -torch.inf))
            bc = int(self.conf["border_cells"])
            if bc > 0:
                s[:, :bc], s[:, -bc:], s[:, :, :bc], s[:, :, -bc:] = -torch.inf, -torch.inf, -torch.inf, -torch.inf
            top, idx = s.reshape(B, -1).topk(k, dim=-1)  # (B, K)
            valid = torch.isfinite(top)
        prob = torch.softmax(out["loc"] / self.conf["loc_temperature"], dim=1)  # (B, c*c, h, w)
        prob = prob.reshape(B, c * c, h * w).gather(2, idx[:, None].expand(-1, c * c, -1))  # (B, c*c, K)
        offset = torch.einsum("bpk,pd->bkd", prob, self.offsets)  # expected in-cell position
        cell_xy = torch.stack([idx % w, idx // w], -1).to(offset.dtype) * c
        keypoints = cell_xy + offset
        scores = torch.sigmoid(out["score"].reshape(B, -1).gather(1, idx))
        at = keypoints.detach() if self.conf["detach_descriptor_keypoints"] else keypoints
        desc = sample_descriptors(out["desc"], at, image.shape[-2:])
        return {"keypoints": keypoints, "scores": scores, "descriptors": desc, "valid": valid, "dense": out}
