"""Training losses: descriptor/correspondence loss from GT correspondences, keypoint-score loss,
pose loss through BPnP, and their weighting (fixed or homoscedastic uncertainty).

* ``correspondence_targets``: GT matches between query keypoints and a reference view's
  keypoints — the reference keypoints' exact 3D points (from depth) are projected into the
  query with the GT pose, occlusion-checked with the query depth, and mutual nearest neighbours
  within ``pos_radius_px`` become positives.
* ``descriptor_loss``: negative log dual-softmax probability of the positives.
* ``score_loss``: binary cross-entropy of the detection score against "this keypoint has a GT
  match and its hard nearest neighbour is that match" (a reliability target, detached).
* ``pose_loss``: mean (capped) distance between the map points' projections under the
  estimated and the GT pose (the reprojection form the BPnP paper pairs with pose terms),
  plus optional rotation (degrees) and translation (scene units) terms.
* ``LossWeighting``: ``sum_k w_k L_k`` (fixed) or ``sum_k exp(-s_k) L_k + s_k`` with learned
  ``s_k = log sigma_k^2`` (Kendall, Gal & Cipolla, CVPR 2018).
"""
from __future__ import annotations

import math
from typing import Dict, Optional, Sequence

import torch
from torch import nn

from ..geometry import Camera, Pose
from .data import TrainView, visible_in
from .localization import MapView

default_conf = {
    "pos_radius_px": 4.0,
    "reproj_cap_px": 30.0,
    "rotation_weight": 0.0,  # per degree
    "translation_weight": 0.0,  # per scene unit
}


def correspondence_targets(q_kpts: torch.Tensor, query: TrainView, ref: MapView, radius: float) -> torch.Tensor:
    """GT positive pairs (K, 2) of (query keypoint index, reference keypoint index).

    Args:
        q_kpts: (N, 2) COLMAP pixels of the query keypoints (detached here).
        query: the query view with GT pose (and depth for the occlusion test).
        ref: reference features with exact 3D points.
        radius: maximum pixel distance between a query keypoint and a projected point.
    """
    if ref.points3d.shape[0] == 0 or q_kpts.shape[0] == 0:
        return torch.zeros(0, 2, dtype=torch.long, device=q_kpts.device)
    x, vis = visible_in(query, ref.points3d)
    d = torch.cdist(q_kpts.detach().double(), x)  # (N, M)
    d = torch.where(vis[None], d, torch.full_like(d, math.inf))
    j = d.argmin(1)
    i_back = d.argmin(0)
    i = torch.arange(d.shape[0], device=d.device)
    ok = (i_back[j] == i) & (d[i, j] <= radius)
    return torch.stack([i[ok], j[ok]], -1)


def descriptor_loss(P: torch.Tensor, positives: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Mean ``-log P_ij`` over positive pairs; P (N, M), positives (K, 2); 0 if K = 0."""
    if positives.shape[0] == 0:
        return P.sum() * 0.0
    return -(P[positives[:, 0], positives[:, 1]] + eps).log().mean()


def score_targets(P: torch.Tensor, positives: torch.Tensor, n: int) -> torch.Tensor:
    """(N,) {0, 1}: query keypoint has a positive whose index is its hard nearest neighbour."""
    t = torch.zeros(n, dtype=P.dtype, device=P.device)
    if positives.shape[0]:
        nn_j = P.detach().argmax(1)
        good = nn_j[positives[:, 0]] == positives[:, 1]
        t[positives[good, 0]] = 1.0
    return t


def score_loss(scores: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy of (N,) scores in (0, 1) against (N,) targets."""
    return nn.functional.binary_cross_entropy(scores.clamp(1e-6, 1 - 1e-6), targets.to(scores.dtype))


def pose_loss(pose: torch.Tensor, gt: Pose, points3d: torch.Tensor, camera: Camera,
              conf: Optional[Dict] = None) -> Dict[str, torch.Tensor]:
    """Pose loss of one estimate.

    Args:
        pose: (6,) [axis-angle, t] estimate (differentiable), or (S, 6) several estimates of
            the same query (e.g. BPnP on subsets): every term is averaged over them.
        gt: unbatched GT Pose; points3d: (K, 3) map points to reproject; camera: query Camera.
    Returns:
        dict with ``total``, ``reproj`` (pixels, the capped mean), ``rot_deg``, ``trans``
        (detached metrics except ``total``).

    The per-point reprojection distance ``d`` enters as ``cap * tanh(d / cap)``: ~d for small
    errors, at most ``cap`` pixels, so one bad estimate cannot dominate a batch.
    """
    if pose.shape[-1] != 6 or pose.ndim not in (1, 2):
        raise ValueError(f"pose must be (6,) or (S, 6), got {tuple(pose.shape)}")
    if points3d.ndim != 2 or points3d.shape[-1] != 3:
        raise ValueError(f"points3d must be (K, 3), got {tuple(points3d.shape)}")
    from ..config import merge
    from ..geometry import so3_log

    conf = merge(default_conf, conf or {}, strict=True)
    est = Pose.from_aa(pose.double().reshape(-1, 6))
    gt = gt.to(torch.float64)
    cam = camera.to(torch.float64)
    X = points3d.double()
    x_est = cam.project(est.transform(X.expand(est.R.shape[0], -1, -1)))  # (S, K, 2)
    x_gt = cam.project(gt.transform(X))
    d = (x_est - x_gt).norm(dim=-1)
    cap = float(conf["reproj_cap_px"])
    reproj = (cap * torch.tanh(d / cap)).mean()  # ~d for small errors, bounded for outliers
    dR = so3_log(est.R @ gt.R.transpose(-1, -2))
    rot_deg = ((dR.pow(2).sum(-1) + 1e-12).sqrt() * (180.0 / math.pi)).mean()
    trans = ((est.center - gt.center).pow(2).sum(-1) + 1e-12).sqrt().mean()
    total = reproj + conf["rotation_weight"] * rot_deg + conf["translation_weight"] * trans
    return {"total": total, "reproj": reproj.detach(), "rot_deg": rot_deg.detach(), "trans": trans.detach()}


class LossWeighting(nn.Module):
    """Combine named losses with fixed weights or learned homoscedastic uncertainties.

    Args:
        names: loss names, e.g. ``["descriptor", "score", "pose"]``.
        mode: ``"fixed"`` (``sum w_k L_k``) or ``"learned"`` (``sum exp(-s_k) L_k + s_k``,
            ``s_k`` initialised to ``-log w_k``).
        weights: initial/fixed weight per name (default 1).
    """

    def __init__(self, names: Sequence[str], mode: str = "fixed", weights: Optional[Dict[str, float]] = None):
        super().__init__()
        if mode not in ("fixed", "learned"):
            raise ValueError(f"loss weighting mode must be 'fixed' or 'learned', got {mode!r}")
        self.names = list(names)
        self.mode = mode
        w = {n: float((weights or {}).get(n, 1.0)) for n in self.names}
        if any(v <= 0 for v in w.values()):
            raise ValueError(f"loss weights must be > 0, got {w}")
        self.register_buffer("fixed", torch.tensor([w[n] for n in self.names], dtype=torch.float32))
        if mode == "learned":
            self.log_vars = nn.Parameter(-torch.log(self.fixed.clone()))

    def forward(self, losses: Dict[str, torch.Tensor]) -> torch.Tensor:
        """Weighted sum over the names present in ``losses`` (others are skipped)."""
        total = None
        for k, n in enumerate(self.names):
            if n not in losses:
                continue
            L = losses[n]
            if self.mode == "fixed":
                term = self.fixed[k].to(L.dtype) * L
            else:
                s = self.log_vars[k].to(L.dtype)
                term = torch.exp(-s) * L + s
            total = term if total is None else total + term
        if total is None:
            raise ValueError(f"no loss among {self.names} in {sorted(losses)}")
        return total

    def current_weights(self) -> Dict[str, float]:
        if self.mode == "fixed":
            return {n: float(w) for n, w in zip(self.names, self.fixed)}
        return {n: float(torch.exp(-s)) for n, s in zip(self.names, self.log_vars.detach())}
