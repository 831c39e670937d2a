"""ALIKED (Zhao et al., 2023) as a trainable network: kornia's architecture, batched padded output.

ALIKED's keypoints are already differentiable: its DKD head takes the NMS maxima of the score
map (detached) and refines each by a soft-argmax of the score map in a ``(2r+1)^2`` window
(temperature 0.1), so the pose loss reaches the score head through the positions. Descriptors
come from the SDDH head (deformable sampling around each keypoint) and depend on the positions.

Output frame: kornia's (centre of the top-left pixel at (0, 0)) of the network input.

An optional :class:`~hloc_bpnp.features.refiner.KeypointRefiner` (``self.refiner``, not part
of the checkpoint) moves each keypoint by a learned sub-pixel offset read from patches of the
grey image and of the score map around the keypoint's nearest pixel; scores, order and
descriptors stay ALIKED's (described at the unrefined positions), as for XFeat.
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional

import kornia.feature as KF
import torch
from torch import nn

from ..config import merge
from .refiner import apply_refiner


class ALIKEDNet(nn.Module):
    """Config: ``model_name`` (aliked-n16, -n16rot, -n32, -t16), ``max_keypoints``,
    ``detection_threshold`` (> 0: threshold mode with at most ``max_keypoints``; 0: top-k),
    ``nms_radius``."""

    size_multiple = 32
    in_channels = 3
    default_conf: Dict[str, Any] = {
        "model_name": "aliked-n16",
        "max_keypoints": 4096,
        "detection_threshold": 0.2,
        "nms_radius": 2,
    }

    def __init__(self, conf: Optional[Dict[str, Any]] = None) -> None:
        super().__init__()
        self.conf = merge(self.default_conf, conf or {}, strict=True)
        c = self.conf
        self.model = KF.ALIKED(model_name=c["model_name"], max_num_keypoints=int(c["max_keypoints"]),
                               detection_threshold=float(c["detection_threshold"]), nms_radius=int(c["nms_radius"]))
        self.model.dkd._non_persistent_buffers_set.add("hw_grid")  # computed, not in checkpoints
        #: optional learned sub-pixel refiner (not part of :meth:`weights_module`)
        self.refiner = None

    def weights_module(self) -> nn.Module:
        """The module whose state dict is a weights file (kornia's ALIKED, checkpoint layout)."""
        return self.model

    def parameter_groups(self) -> Dict[str, List[nn.Parameter]]:
        """``detector`` (score head: positions and scores), ``descriptor`` (SDDH head),
        ``backbone`` (the shared encoder)."""
        det = list(self.model.score_head.parameters())
        desc = list(self.model.desc_head.parameters())
        ids = {id(p) for p in det + desc}
        return {"detector": det, "descriptor": desc,
                "backbone": [p for p in self.model.parameters() if id(p) not in ids]}

    def _set_limit(self, k: int) -> None:
        d = self.model.dkd
        if d.top_k > 0:
            d.top_k = k
        else:
            d.n_limit = k

    def forward(self, image: torch.Tensor, max_keypoints: Optional[int] = None,
                return_maps: bool = False) -> Dict[str, torch.Tensor]:
        """Detect and describe.

        Args:
            image: (B, C, H, W) in [0, 1] (C = 1 is broadcast to RGB).
            return_maps: also return ``heatmap`` (B, 1, H, W), the score map, and ``gray``
                (B, 1, H, W), the refiner's inputs.
        Returns:
            ``keypoints`` (B, K, 2) kornia frame (differentiable), ``scores`` (B, K),
            ``descriptors`` (B, K, 128), ``valid`` (B, K) bool, each image sorted by score;
            ``centers`` (B, K, 2) long: each keypoint's nearest pixel (the refiner's patch
            centre); with a refiner ``log_var`` (B, K).
        """
        if image.ndim != 4:
            raise ValueError(f"image must be (B, C, H, W), got {tuple(image.shape)}")
        if image.shape[1] == 1:
            image = image.expand(-1, 3, -1, -1)
        k = int(max_keypoints or self.conf["max_keypoints"])
        self._set_limit(k)
        try:
            fmap, smap = self.model.extract_dense_map(image)
            kpts, kscores, _ = self.model.dkd(smap)
            descs, _ = self.model.desc_head(fmap, kpts)
        finally:
            self._set_limit(int(self.conf["max_keypoints"]))
        B, _, H, W = image.shape
        wh = image.new_tensor([W - 1, H - 1])
        n = max([x.shape[0] for x in kpts] + [1])
        D = descs[0].shape[-1] if descs else 128
        out_k = image.new_zeros(B, n, 2)
        out_s = image.new_zeros(B, n)
        out_d = image.new_zeros(B, n, D)
        valid = torch.zeros(B, n, dtype=torch.bool, device=image.device)
        ks, ss, ds = [], [], []
        for b in range(B):
            order = torch.argsort(kscores[b].detach(), descending=True, stable=True)[:k]
            m = order.numel()
            ks.append(torch.cat([(wh * (kpts[b][order] + 1) / 2), out_k[b, m:]]))
            ss.append(torch.cat([kscores[b][order], out_s[b, m:]]))
            ds.append(torch.cat([descs[b][order], out_d[b, m:]]))
            valid[b, :m] = True
        xy = torch.stack(ks)
        lim = torch.tensor([W - 1, H - 1], device=image.device)
        centers = torch.minimum(xy.detach().round().long().clamp_min(0), lim)
        # the refiner moves positions only: scores, order and descriptors stay ALIKED's
        return {"scores": torch.stack(ss), "descriptors": torch.stack(ds), "valid": valid,
                **apply_refiner(self.refiner, image, smap, xy, centers, return_maps)}
