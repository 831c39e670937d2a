"""XFeat (Potje et al., CVPR 2024) as a trainable network with differentiable sub-pixel keypoints.

XFeat's keypoint head gives, per 8x8 cell, 65 logits (64 pixels + a "no keypoint" bin); their
softmax, unfolded to full resolution, is a heatmap whose 5x5 NMS maxima are the keypoints, on
the INTEGER pixel grid of the network input. That grid is where its pose accuracy goes (a
quantization step of ``original / resized`` pixels). Here a keypoint's position is the
soft-argmax of the heatmap in the ``(2r+1)^2`` window around the NMS maximum::

    w_i = softmax_i(log(heat_i) / T),    p = p_max + sum_i w_i * offset_i

so positions are a differentiable function of the keypoint head (the in-cell logits), which
the pose loss trains. ``subpixel: false`` gives XFeat's own integer keypoints (checked equal to
the reference implementation in the tests).

Cell borders: the heatmap is 64 separate softmaxes (one per 8x8 cell); values of neighbouring
cells have different normalisers, so a window that crosses a cell border (44% of maxima with
r = 1) mixes numbers of two softmaxes. ``subpixel_in_cell`` gives the window entries outside
the maximum's cell zero weight (every soft-argmax reads one softmax). It is off by default,
because measured it is worse: XFeat's maxima pile up on the cell borders (on the Middlebury
temple 3x as many in the last column of a cell as in an inner one), and a one-sided window
pulls each of them into its cell (mean -0.25 px in the last column, +0.22 px in the first).
The median Sampson error of verified matches under the known poses is 3-7% higher with it
(temple 0.592 against 0.574 px, fountain-P11 0.731 / 0.688, Herz-Jesu-P8 0.706 / 0.661).

An optional :class:`~hloc_bpnp.features.refiner.KeypointRefiner` (``self.refiner``) adds a
learned sub-pixel offset per keypoint from patches of the input image and the heatmap around
the integer maximum, and a log-variance (``log_var``); zero-initialised it changes nothing.

Descriptors: the 64-D map (1/8 resolution), L2-normalised, sampled bicubically at the
keypoints with XFeat's own sampling convention (``InterpolateSparse2d``), then L2-normalised.
Scores: heatmap value at the NMS maximum times the bilinear reliability, as in XFeat.

The image frame is kornia's (centre of the top-left pixel at (0, 0)); H, W multiples of 32.
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional

import kornia.feature as KF
import torch
import torch.nn.functional as F
from torch import nn

from ..config import merge
from .inference import InferenceCache
from .refiner import apply_refiner


def _xfeat_grid(pos: torch.Tensor, H: int, W: int) -> torch.Tensor:
    """XFeat's sampling grid: ``2 p / (W - 1, H - 1) - 1`` (read with ``align_corners=False``)."""
    return 2.0 * pos / pos.new_tensor([W - 1, H - 1]) - 1.0


def sample_map(x: torch.Tensor, pos: torch.Tensor, H: int, W: int, mode: str) -> torch.Tensor:
    """Sample ``x`` (B, C, h, w) at ``pos`` (B, N, 2) pixels of an (H, W) image -> (B, N, C)."""
    grid = _xfeat_grid(pos, H, W)[:, :, None].to(x.dtype)
    return F.grid_sample(x, grid, mode=mode, align_corners=False)[..., 0].transpose(1, 2)


def window_max(x: torch.Tensor, kernel: int) -> torch.Tensor:
    """``F.max_pool2d(x, kernel, stride=1, padding=kernel // 2)`` for an odd ``kernel``, as two
    separable passes of elementwise maxima over shifted views (equal values; on the CPU about
    20x faster at 640x480 than max_pool2d, whose indices kernel took a third of XFeat's time)."""
    if kernel % 2 == 0:
        return F.max_pool2d(x, kernel, stride=1, padding=kernel // 2)
    r = kernel // 2
    H, W = x.shape[-2:]
    p = F.pad(x, (r, r, 0, 0), value=float("-inf"))
    m = p[..., 0:W]
    for i in range(1, kernel):
        m = torch.maximum(m, p[..., i:i + W])
    p = F.pad(m, (0, 0, r, r), value=float("-inf"))
    m = p[..., 0:H, :]
    for i in range(1, kernel):
        m = torch.maximum(m, p[..., i:i + H, :])
    return m


class XFeatNet(nn.Module):
    """XFeat backbone + detection with differentiable sub-pixel keypoints.

    Config:
        max_keypoints: top-k by score after NMS and threshold.
        detection_threshold: heatmap value a maximum must exceed (XFeat: 0.05).
        nms_kernel: NMS window (XFeat: 5).
        subpixel: soft-argmax refinement (else XFeat's integer keypoints).
        subpixel_radius: r of the (2r+1)^2 soft-argmax window.
        subpixel_temperature: T of the soft-argmax over log-heatmap values.
        subpixel_in_cell: the soft-argmax window only reads the maximum's own 8x8 cell (off by
            default: measured worse, see the module docstring).
        detach_descriptor_keypoints: sample descriptors at detached positions (then only the
            geometry, i.e. the pose loss, moves keypoints).
        fused_inference: without gradients in eval mode, run a copy of the backbone with its
            batch norms folded into the convolutions, channels last
            (:func:`~hloc_bpnp.features.inference.fused_inference_copy`: same outputs within
            float rounding, ~25% faster on a CPU), rebuilt when the weights change.
    """

    size_multiple = 32
    in_channels = 1
    default_conf: Dict[str, Any] = {
        "max_keypoints": 4096,
        "detection_threshold": 0.05,
        "nms_kernel": 5,
        "subpixel": True,
        "subpixel_radius": 1,
        "subpixel_temperature": 1.0,
        "subpixel_in_cell": False,
        "detach_descriptor_keypoints": False,
        "fused_inference": True,
    }

    def __init__(self, conf: Optional[Dict[str, Any]] = None) -> None:
        super().__init__()
        self.conf = merge(self.default_conf, conf or {}, strict=True)
        self.net = KF.XFeatModel()
        r = int(self.conf["subpixel_radius"])
        ij = torch.arange(-r, r + 1, dtype=torch.float32)
        yy, xx = torch.meshgrid(ij, ij, indexing="ij")
        self.register_buffer("window", torch.stack([xx.reshape(-1), yy.reshape(-1)], -1), persistent=False)
        #: optional learned sub-pixel refiner (not part of :meth:`weights_module`)
        self.refiner = None
        self._fused = InferenceCache()

    def weights_module(self) -> nn.Module:
        """The module whose state dict is a weights file (XFeatModel, the layout of ``xfeat.pt``)."""
        return self.net

    # -- groups for freezing -----------------------------------------------------------------
    def parameter_groups(self) -> Dict[str, List[nn.Parameter]]:
        """``detector`` (keypoint head: positions), ``reliability`` (heatmap head: scores),
        ``descriptor`` (backbone and fusion: the descriptor map)."""
        det = list(self.net.keypoint_head.parameters())
        rel = list(self.net.heatmap_head.parameters())
        ids = {id(p) for p in det + rel}
        return {"detector": det, "reliability": rel,
                "descriptor": [p for p in self.net.parameters() if id(p) not in ids]}

    @staticmethod
    def heatmap(logits: torch.Tensor) -> torch.Tensor:
        """(B, 65, h, w) keypoint logits -> (B, 1, 8h, 8w) heatmap (softmax, dustbin dropped)."""
        p = F.softmax(logits, 1)[:, :64]
        B, _, h, w = p.shape
        return p.permute(0, 2, 3, 1).reshape(B, h, w, 8, 8).permute(0, 1, 3, 2, 4).reshape(B, 1, h * 8, w * 8)

    def backbone(self, image: torch.Tensor):
        """XFeatModel's ``(feats, keypoint logits, reliability)`` of ``image``; without gradients
        in eval mode (and ``fused_inference``) from the fused copy, as contiguous tensors."""
        if self.training or torch.is_grad_enabled() or not self.conf["fused_inference"]:
            return self.net(image)
        out = self._fused.get(self.net)(image.contiguous(memory_format=torch.channels_last))
        return tuple(t.contiguous() for t in out)

    def forward(self, image: torch.Tensor, max_keypoints: Optional[int] = None,
                return_maps: bool = False) -> Dict[str, torch.Tensor]:
        """Detect and describe.

        Args:
            image: (B, C, H, W) in [0, 1] (C = 1 or 3; XFeat averages channels), H, W multiples of 32.
            max_keypoints: overrides ``conf["max_keypoints"]``.
        Returns:
            ``keypoints`` (B, K, 2) kornia frame (differentiable), ``scores`` (B, K),
            ``descriptors`` (B, K, 64) unit, ``valid`` (B, K) bool (padding False), sorted by score;
            ``centers`` (B, K, 2) long: the integer maxima; with a refiner ``log_var`` (B, K);
            with ``return_maps`` also ``heatmap`` (B, 1, H, W) and ``gray`` (B, 1, H, W) (the
            refiner's inputs).
        """
        if image.ndim != 4:
            raise ValueError(f"image must be (B, C, H, W), got {tuple(image.shape)}")
        B, _, H, W = image.shape
        if H % 32 or W % 32:
            raise ValueError(f"XFeat needs H and W multiples of 32, got {H}x{W}")
        feats, logits, rel = self.backbone(image)
        dense = F.normalize(feats, dim=1)
        heat = self.heatmap(logits)  # (B, 1, H, W)
        k = min(int(max_keypoints or self.conf["max_keypoints"]), H * W)
        with torch.no_grad():
            hd = heat.detach()
            kn = int(self.conf["nms_kernel"])  # XFeat's NMS: equal to the window maximum
            is_max = (hd == window_max(hd, kn)) & (
                hd > float(self.conf["detection_threshold"]))
            # XFeat's ranking: heatmap at the maximum times the reliability sampled there
            idx = torch.zeros(B, k, dtype=torch.long, device=image.device)
            valid = torch.zeros(B, k, dtype=torch.bool, device=image.device)
            n_max = 0
            for b in range(B):
                lin = is_max[b, 0].reshape(-1).nonzero()[:, 0]
                pos = torch.stack([lin % W, torch.div(lin, W, rounding_mode="floor")], -1).to(hd.dtype)
                sc = hd[b, 0].reshape(-1)[lin] * sample_map(rel[b:b + 1].detach(), pos[None], H, W, "bilinear")[0, :, 0]
                order = torch.argsort(-sc, stable=True)[:k]
                idx[b, :order.numel()] = lin[order]
                valid[b, :order.numel()] = True
                n_max = max(n_max, order.numel())
            idx, valid = idx[:, :n_max], valid[:, :n_max]
        xy = torch.stack([idx % W, torch.div(idx, W, rounding_mode="floor")], -1).to(heat.dtype)  # (B, K, 2)
        if self.conf["subpixel"]:
            r = int(self.conf["subpixel_radius"])
            # the (2r+1)^2 window around each maximum, gathered from the zero-padded heatmap
            # (as F.unfold's patches at idx, without unfolding the whole map)
            Wp = W + 2 * r
            padded = F.pad(heat, (r, r, r, r), value=0.0).reshape(B, 1, -1)
            win = self.window.to(idx.device).long()  # (win, 2) offsets (dx, dy), row-major
            at = (torch.div(idx, W, rounding_mode="floor") + r)[:, None] * Wp + (idx % W + r)[:, None] \
                + (win[:, 1] * Wp + win[:, 0])[None, :, None]  # (B, win, K)
            p = padded.expand(-1, win.shape[0], -1).gather(2, at)  # (B, win, K)
            logp = torch.log(p.clamp_min(1e-12)) / float(self.conf["subpixel_temperature"])
            if self.conf["subpixel_in_cell"]:
                cx, cy = idx % W, torch.div(idx, W, rounding_mode="floor")  # (B, K)
                same_x = torch.div(cx[:, None] + win[None, :, 0, None], 8, rounding_mode="floor") == \
                    torch.div(cx, 8, rounding_mode="floor")[:, None]
                same_y = torch.div(cy[:, None] + win[None, :, 1, None], 8, rounding_mode="floor") == \
                    torch.div(cy, 8, rounding_mode="floor")[:, None]
                logp = logp.masked_fill(~(same_x & same_y), float("-inf"))
            wts = torch.softmax(logp, dim=1)
            xy = xy + torch.einsum("bwk,wd->bkd", wts, self.window.to(heat.dtype))
        heat_at = heat.reshape(B, -1).gather(1, idx)
        rel_at = sample_map(rel, xy.detach(), H, W, "bilinear")[..., 0]
        scores = heat_at * rel_at
        at = xy.detach() if self.conf["detach_descriptor_keypoints"] else xy
        desc = F.normalize(sample_map(dense, at, H, W, "bicubic"), dim=-1)
        # the refiner moves positions only: scores, order and descriptors stay the detector's
        centers = torch.stack([idx % W, torch.div(idx, W, rounding_mode="floor")], -1)
        return {"scores": scores, "descriptors": desc, "valid": valid,
                **apply_refiner(self.refiner, image, heat, xy, centers, return_maps)}
