"""The differentiable localization path: query features + map -> soft 2D-3D -> weighted BPnP -> pose.

Per (query, reference view) pair, as in hloc's pairwise matching:

1. similarities ``S = q m^T / T`` (``T = exp(log_temperature)``, learnable);
2. dual-softmax ``P = softmax_rows(S) * softmax_cols(S)`` (soft correspondences);
3. for each query keypoint its ``top_k`` candidates in the reference view, each a 2D-3D
   correspondence (query keypoint, the reference keypoint's 3D point) with confidence
   ``P_ij`` times the query keypoint's detection score.

All pairs' candidates are pooled. The hard mutual nearest neighbours feed pycolmap's LO-RANSAC
(non-differentiable), which gives a well-posed start and an inlier gate; the gated candidates
(reprojection error under the RANSAC pose below ``gate_px``; the gate itself is not
differentiated) go to the weighted, robust BPnP solve — one solve on all of them, or (``subsets``
= S > 0) S batched solves on random subsets. With one solve on hundreds of matches, the pose
gradient constrains only 6 of the ~2K keypoint coordinates and, measured, did not improve keypoint
accuracy; S subsets of ~12 give S x 6 constraints and reduced the held-out keypoint error. Gradients reach the keypoint positions
(``points2d``), the descriptors and the temperature (``weights`` via ``P``) and the score head.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Dict, List, Optional

import torch

from ..geometry import Camera

logger = logging.getLogger(__name__)

default_conf = {
    "top_k": 1,  # candidates per query keypoint and reference view
    "mutual_min_prob": 0.0,  # dual-softmax probability a hard mutual match needs for RANSAC
    "ransac_max_error_px": 4.0,
    "ransac_min_inliers": 12,
    "ransac_seed": 0,
    "gate_px": 4.0,  # candidates kept for BPnP: reprojection error under the RANSAC pose
    "bpnp_loss": "cauchy",
    "bpnp_loss_scale_px": 2.0,
    "use_scores": True,  # multiply the weights by the query detection scores
    # BPnP solves per query: 0 = one solve on all gated candidates (the pose gradient then
    # constrains only 6 directions of the ~2K keypoint coordinates); S > 0 = S solves on random
    # subsets of ``subset_size`` gated candidates (S x 6 constraints: far more signal per
    # keypoint, the pose loss averages over the subsets' poses)
    "subsets": 0,
    "subset_size": 12,
    "weights_grad": True,  # False: the pose loss trains keypoint positions only (weights detached)
}


@dataclass
class MapView:
    """Features of one reference view, with 3D points.

    Attributes:
        keypoints: (M, 2) COLMAP pixels; descriptors: (M, D); points3d: (M, 3) float64 world.
        Only keypoints with a 3D point are kept.
    """

    name: str
    keypoints: torch.Tensor
    descriptors: torch.Tensor
    points3d: torch.Tensor
    image_size: Optional[torch.Tensor] = None  # (2,) (W, H): needed by a learned matcher (LightGlue)

    def to(self, device) -> "MapView":
        """The same view with every tensor on ``device``."""
        return MapView(self.name, self.keypoints.to(device), self.descriptors.to(device), self.points3d.to(device),
                       None if self.image_size is None else self.image_size.to(device))


@dataclass
class PairMatches:
    """Dual-softmax output of one (query, reference) pair: P (N, M), the reference view."""

    P: torch.Tensor
    ref: MapView


def dual_softmax(desc0: torch.Tensor, desc1: torch.Tensor, log_temperature: torch.Tensor) -> torch.Tensor:
    """Dual-softmax match probabilities.

    Args:
        desc0: (N, D), desc1: (M, D) unit descriptors; log_temperature: scalar tensor.
    Returns:
        (N, M) ``softmax_rows(S) * softmax_cols(S)``, ``S = desc0 desc1^T / exp(log_temperature)``.
    """
    if desc0.ndim != 2 or desc1.ndim != 2 or desc0.shape[1] != desc1.shape[1]:
        raise ValueError(f"descriptors must be (N, D) and (M, D), got {tuple(desc0.shape)} and {tuple(desc1.shape)}")
    S = desc0 @ desc1.t() / log_temperature.exp()
    return torch.softmax(S, 1) * torch.softmax(S, 0)


def match_pairs(q_desc: torch.Tensor, refs: List[MapView], log_temperature: torch.Tensor) -> List[PairMatches]:
    """Dual-softmax against every reference view (skipping views without keypoints)."""
    return [PairMatches(dual_softmax(q_desc, r.descriptors.to(q_desc.dtype), log_temperature), r)
            for r in refs if r.keypoints.shape[0] > 0]


def lightglue_pairs(lightglue, q_kpts: torch.Tensor, q_desc: torch.Tensor, q_size: torch.Tensor,
                    refs: List[MapView]) -> List[PairMatches]:
    """Soft correspondences from a (trainable) kornia LightGlue: ``P = exp(log_assignment)``
    without the dustbin row/column, per reference view (differentiable w.r.t. the matcher,
    the descriptors and the keypoint positions).

    Args:
        lightglue: ``kornia.feature.LightGlue`` with ``depth_confidence`` / ``width_confidence``
            disabled (-1): pruning would drop rows of the assignment.
        q_kpts: (N, 2) COLMAP pixels; q_desc: (N, D); q_size: (2,) query (W, H).
        refs: map views with ``image_size`` set.
    """
    out = []
    for r in refs:
        if r.keypoints.shape[0] == 0:
            continue
        if r.image_size is None:
            raise ValueError(f"map view {r.name!r} has no image_size: a learned matcher needs it")
        data = {"image0": {"keypoints": q_kpts.float()[None], "descriptors": q_desc.float()[None],
                           "image_size": q_size.float().reshape(1, 2)},
                "image1": {"keypoints": r.keypoints.float()[None], "descriptors": r.descriptors.float()[None],
                           "image_size": r.image_size.float().reshape(1, 2)}}
        la = lightglue(data)["log_assignment"][0]  # (N + 1, M + 1) log probabilities
        out.append(PairMatches(la[:-1, :-1].exp(), r))
    return out


def mutual_matches(P: torch.Tensor, min_prob: float = 0.0) -> torch.Tensor:
    """(K, 2) index pairs (i, j) that are mutual nearest neighbours in P (N, M) with P > min_prob."""
    if P.numel() == 0:
        return torch.zeros(0, 2, dtype=torch.long, device=P.device)
    Pd = P.detach()
    j = Pd.argmax(1)
    i_back = Pd.argmax(0)
    i = torch.arange(P.shape[0], device=P.device)
    ok = (i_back[j] == i) & (Pd[i, j] > min_prob)
    return torch.stack([i[ok], j[ok]], -1)


def hard_correspondences(q_kpts: torch.Tensor, pairs: List[PairMatches], min_prob: float = 0.0):
    """Pooled hard mutual matches: (points2d (K, 2), points3d (K, 3), query indices (K,))."""
    p2, p3, qi = [], [], []
    for pm in pairs:
        ij = mutual_matches(pm.P, min_prob)
        p2.append(q_kpts.detach()[ij[:, 0]].double())
        p3.append(pm.ref.points3d[ij[:, 1]].double())
        qi.append(ij[:, 0])
    if not p2:
        dev = q_kpts.device
        return (torch.zeros(0, 2, dtype=torch.float64, device=dev), torch.zeros(0, 3, dtype=torch.float64, device=dev),
                torch.zeros(0, dtype=torch.long, device=dev))
    return torch.cat(p2), torch.cat(p3), torch.cat(qi)


def soft_correspondences(q_kpts: torch.Tensor, q_scores: Optional[torch.Tensor], pairs: List[PairMatches],
                         top_k: int = 1):
    """Pooled top-k candidates: (points2d (K, 2) differentiable, points3d (K, 3), weights (K,)
    differentiable, query indices (K,))."""
    p2, p3, w, qi = [], [], [], []
    for pm in pairs:
        k = min(top_k, pm.P.shape[1])
        prob, j = pm.P.topk(k, dim=1)  # (N, k)
        i = torch.arange(pm.P.shape[0], device=j.device)[:, None].expand_as(j).reshape(-1)
        j = j.reshape(-1)
        wt = prob.reshape(-1)
        if q_scores is not None:
            wt = wt * q_scores[i]
        p2.append(q_kpts[i])
        p3.append(pm.ref.points3d[j])
        w.append(wt)
        qi.append(i)
    return torch.cat(p2), torch.cat(p3), torch.cat(w), torch.cat(qi)


@dataclass
class LocalizationOutput:
    """Result of :func:`localize_differentiable` for one query.

    Attributes:
        pose: (6,) [axis-angle, t] cam_from_world (differentiable), or (S, 6) with
            ``conf["subsets"] = S`` (one pose per subset; failed subsets dropped), or None.
        pose_init: (6,) RANSAC pose (detached) or None.
        points3d: (K, 3) gated 3D points used by BPnP (for a reprojection loss).
        num_inliers: RANSAC inliers; failure: '' or a reason.
    """

    pose: Optional[torch.Tensor]
    pose_init: Optional[torch.Tensor]
    points3d: Optional[torch.Tensor]
    num_inliers: int
    failure: str = ""


def localize_differentiable(q_kpts: torch.Tensor, q_desc: torch.Tensor, q_scores: Optional[torch.Tensor],
                            camera: Camera, refs: List[MapView], log_temperature: torch.Tensor,
                            conf: Optional[Dict] = None, pairs: Optional[List[PairMatches]] = None) -> LocalizationOutput:
    """Query -> pose through soft matching, RANSAC start and weighted BPnP.

    Args:
        q_kpts: (N, 2) COLMAP pixels (differentiable); q_desc: (N, D); q_scores: (N,) or None.
        camera: unbatched query Camera; refs: reference views with 3D points.
        log_temperature: scalar tensor (learnable).
        conf: overrides of ``default_conf``; pairs: precomputed :func:`match_pairs` output.
    """
    from ..bpnp import pycolmap_ransac, solve_pnp
    from ..config import merge

    conf = merge(default_conf, conf or {}, strict=True)
    if pairs is None:
        pairs = match_pairs(q_desc, refs, log_temperature)
    h2, h3, _ = hard_correspondences(q_kpts, pairs, conf["mutual_min_prob"])
    if h2.shape[0] < conf["ransac_min_inliers"]:
        return LocalizationOutput(None, None, None, 0, "too few mutual matches")
    cam64 = camera.to(torch.float64)
    pose0, inl = pycolmap_ransac(h2, h3, cam64, max_error=conf["ransac_max_error_px"], seed=conf["ransac_seed"])
    n_in = int(inl.sum())
    if pose0 is None or n_in < conf["ransac_min_inliers"]:
        return LocalizationOutput(None, pose0, None, n_in, "RANSAC failed")
    p2, p3, w, _ = soft_correspondences(q_kpts, q_scores if conf["use_scores"] else None, pairs, conf["top_k"])
    with torch.no_grad():
        from ..geometry import Pose

        P0 = Pose.from_aa(pose0)
        pc = P0.transform(p3.double())
        x = cam64.project(pc)
        err = (x - p2.detach().double()).norm(dim=-1)
        gate = (pc[:, 2] > 0) & (err < conf["gate_px"]) & (w.detach() > 0)
    if int(gate.sum()) < conf["ransac_min_inliers"]:
        return LocalizationOutput(None, pose0, None, n_in, "too few gated candidates")
    dt = torch.float64  # the solve runs in float64 anyway; gradients flow through the casts
    x2 = p2[gate].to(dt)
    X3 = p3[gate].to(dt)
    wg = w[gate].to(dt)
    if not conf["weights_grad"]:
        wg = wg.detach()
    S = int(conf["subsets"])
    if S > 0:
        idx = subset_indices(x2.shape[0], S, int(conf["subset_size"]), int(conf["ransac_seed"]))
        x2b, X3b, wb = x2[idx], X3[idx], wg[idx]  # (S, n, .)
    else:
        x2b, X3b, wb = x2[None], X3[None], wg[None]
    res = solve_pnp(x2b, X3b, camera.to(dt), weights=wb, pose_init=pose0.to(dt).expand(x2b.shape[0], 6),
                    loss=conf["bpnp_loss"], loss_scale=float(conf["bpnp_loss_scale_px"]))
    if not bool(res.valid.any()):
        return LocalizationOutput(None, pose0, None, n_in, f"BPnP: {res.failure[0]}")
    pose = res.pose[res.valid] if S > 0 else res.pose[0]
    return LocalizationOutput(pose, pose0, p3[gate].detach(), n_in)


def subset_indices(n: int, num_subsets: int, size: int, seed: int = 0) -> torch.Tensor:
    """(S, min(size, n)) indices of ``num_subsets`` random subsets (no repeats inside one)
    of ``range(n)``; deterministic in ``(seed, n)``."""
    if n < 1 or num_subsets < 1 or size < 1:
        raise ValueError(f"subset_indices needs n, num_subsets, size >= 1, got {n}, {num_subsets}, {size}")
    g = torch.Generator().manual_seed(int(seed) * 1_000_003 + int(n))
    return torch.rand(num_subsets, n, generator=g).argsort(dim=1)[:, :min(size, n)]
