"""Nearest-neighbour descriptor matchers (MNN, ratio test, both, symmetric ratio), batched.

Distances are Euclidean (L2) between descriptors. The ratio test compares DISTANCES:
``d1 <= ratio_threshold * d2`` (implemented as ``d1^2 <= ratio_threshold^2 * d2^2``), as
Lowe and hloc's ``NN-ratio`` do. Scores are ``1 - d1^2 / 4`` clipped to [0, 1], which for
unit-norm descriptors is hloc's ``(1 + cos) / 2``.

One query against k references runs as one padded ``(k, N0, Nmax)`` distance computation
with masks (chunked to bound memory), so batched and one-by-one results are identical.
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch

from .base import Features, Matcher, Matches, check_features, empty_matches, register_matcher


def pad_descriptors(descs: Sequence[torch.Tensor]) -> Tuple[torch.Tensor, torch.Tensor]:
    """Stack descriptors of different counts.

    Args:
        descs: k tensors (N_i, D).

    Returns:
        padded (k, Nmax, D) (zeros in the padding) and mask (k, Nmax) bool, True for real entries.
    """
    k = len(descs)
    d = descs[0].shape[-1]
    nmax = max((x.shape[0] for x in descs), default=0)
    out = descs[0].new_zeros((k, nmax, d))
    mask = torch.zeros((k, nmax), dtype=torch.bool, device=descs[0].device)
    for i, x in enumerate(descs):
        out[i, : x.shape[0]] = x
        mask[i, : x.shape[0]] = True
    return out, mask


def _two_smallest(d2: torch.Tensor, dim: int, need_second: bool):
    """Smallest value, its index and (optionally) the second smallest value along ``dim``.

    Two ``min`` reductions instead of ``torch.topk(k=2)``, which is several times slower on
    CPU for (B, 4096, 4096) distance tensors. Ties: the second smallest equals the smallest
    when the minimum is attained twice (a ratio test then rejects, as with topk).
    """
    best, idx = d2.min(dim=dim)
    if not need_second:
        return best, idx, None
    masked = d2.scatter(dim, idx.unsqueeze(dim), float("inf"))
    return best, idx, masked.amin(dim=dim)


#: entries of the (B, rows, N1) similarity block computed at once by the unit-norm path: a block
#: that stays in the CPU's caches and is reused (one (B, N0, N1) tensor of ~70 MB, allocated per
#: query, spent more time in page faults than in the matrix product: 77 -> 30 ms for 4096 query
#: keypoints against 3 x 1500, benchmarks/bench_matching.py)
SIMILARITY_BLOCK = 1 << 20


def _nn_match_similarity(q, r, mask1, mutual, ratio_threshold, distance_threshold, symmetric_ratio):
    """``nn_match_batched`` for unit-norm descriptors, on similarity blocks of query rows.

    Row reductions (best, second best) are complete within a block; column reductions (a
    reference's best and second best, for the mutual and the symmetric ratio checks) are
    merged across blocks, so the result equals that of one (B, N0, N1) tensor.
    """
    b, n1, _ = r.shape
    n0 = q.shape[0]
    rt = r.transpose(1, 2)
    has_pad = not bool(mask1.all())
    use_ratio = ratio_threshold is not None and n1 >= 2
    use_ratio1 = symmetric_ratio and ratio_threshold is not None and n0 >= 2
    need_cols = mutual or symmetric_ratio
    rows = max(1, min(n0, SIMILARITY_BLOCK // max(b * n1, 1)))
    buf = q.new_empty((b, rows, n1))
    s_best = q.new_empty((b, n0))
    m0 = torch.empty((b, n0), dtype=torch.int64, device=q.device)
    s_second = q.new_full((b, n0), float("-inf"))
    neg_inf = q.new_full((), float("-inf"))
    col_best = q.new_full((b, n1), float("-inf")) if need_cols else None
    col_second = q.new_full((b, n1), float("-inf")) if use_ratio1 else None
    for i in range(0, n0, rows):
        j = min(i + rows, n0)
        sim = torch.bmm(q[i:j].expand(b, -1, -1), rt, out=buf[:, : j - i])  # (B, rows, N1)
        if has_pad:
            sim.masked_fill_(~mask1[:, None, :], float("-inf"))
        if need_cols:
            cb = sim.amax(dim=1)  # (B, N1)
            if use_ratio1:  # the column's second best: strictly below its best, as one tensor gives
                cs = sim.masked_fill(sim >= cb[:, None, :], float("-inf")).amax(dim=1)
                lower = torch.where(col_best != cb, torch.minimum(col_best, cb), neg_inf)
                col_second = torch.maximum(torch.maximum(col_second, cs), lower)
            col_best = torch.maximum(col_best, cb)
        best_i, m_i = sim.max(dim=-1)
        s_best[:, i:j], m0[:, i:j] = best_i, m_i
        if use_ratio:
            sim.scatter_(-1, m_i.unsqueeze(-1), float("-inf"))
            s_second[:, i:j] = sim.amax(dim=-1)
    to_d2 = lambda s_: (2.0 - 2.0 * s_).clamp(min=0.0)  # noqa: E731  (-inf -> +inf)
    best = to_d2(s_best)
    valid = torch.isfinite(best)
    if use_ratio:
        valid &= best <= (ratio_threshold ** 2) * to_d2(s_second)
    if distance_threshold is not None:
        valid &= best <= distance_threshold ** 2
    if mutual:
        # mutual = the query's best is also its reference's best (exact float ties, a
        # measure-zero event for real descriptors, would keep both tied queries)
        valid &= s_best >= torch.gather(col_best, 1, m0)
    if use_ratio1:
        ratio_ok = to_d2(col_best) <= (ratio_threshold ** 2) * to_d2(col_second)
        valid &= torch.gather(ratio_ok, 1, m0)
    scores = (1.0 - best / 4.0).clamp(0.0, 1.0)
    matches0 = torch.where(valid, m0, torch.full_like(m0, -1))
    scores0 = torch.where(valid, scores, torch.zeros_like(scores))
    return matches0, scores0.float()


def nn_match_batched(
    desc0: torch.Tensor,
    desc1: torch.Tensor,
    mask1: Optional[torch.Tensor] = None,
    mutual: bool = True,
    ratio_threshold: Optional[float] = None,
    distance_threshold: Optional[float] = None,
    symmetric_ratio: bool = False,
    normalized: bool = False,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Match one descriptor set against a padded batch.

    Args:
        desc0: (N0, D) query descriptors.
        desc1: (B, N1, D) reference descriptors (padded).
        mask1: (B, N1) bool, False for padding; None = all valid.
        mutual: keep only mutual nearest neighbours.
        ratio_threshold: Lowe ratio on distances, ``d1 <= r * d2`` (None: off).
        distance_threshold: ``d1 <= t`` (None: off).
        symmetric_ratio: also apply the ratio test from image 1 to image 0 (kornia's SMNN).
        normalized: descriptors are unit-norm: work on similarities (d^2 = 2 - 2 s), which
            needs fewer passes over the (B, N0, N1) tensor than distances. Same results.

    Returns:
        matches0 (B, N0) int64 (-1 unmatched) and scores0 (B, N0) float32.
    """
    if desc0.ndim != 2 or desc1.ndim != 3 or desc0.shape[-1] != desc1.shape[-1]:
        raise ValueError(f"desc0 must be (N0, D) and desc1 (B, N1, D) with equal D, got "
                         f"{tuple(desc0.shape)} and {tuple(desc1.shape)}")
    b, n1, _ = desc1.shape
    n0 = desc0.shape[0]
    if mask1 is None:
        mask1 = torch.ones((b, n1), dtype=torch.bool, device=desc1.device)
    if mask1.shape != (b, n1):
        raise ValueError(f"mask1 must be (B, N1) = {(b, n1)}, got {tuple(mask1.shape)}")
    if n0 == 0 or n1 == 0:
        return (torch.full((b, n0), -1, dtype=torch.int64, device=desc0.device),
                torch.zeros((b, n0), dtype=torch.float32, device=desc0.device))
    q = desc0.float()
    r = desc1.float()
    if normalized:
        return _nn_match_similarity(q, r, mask1, mutual, ratio_threshold, distance_threshold, symmetric_ratio)
    sq0 = (q * q).sum(-1)  # (N0,)
    sq1 = (r * r).sum(-1)  # (B, N1)
    # d2[b, i, j] = |q_i|^2 + |r_bj|^2 - 2 q_i . r_bj
    d2 = torch.baddbmm(sq1[:, None, :], q.expand(b, -1, -1), r.transpose(1, 2), alpha=-2.0)
    d2.add_(sq0[None, :, None]).clamp_(min=0.0)
    d2.masked_fill_(~mask1[:, None, :], float("inf"))

    use_ratio = ratio_threshold is not None and n1 >= 2
    best, m0, second = _two_smallest(d2, -1, use_ratio)  # (B, N0)
    valid = torch.isfinite(best)
    if use_ratio:
        valid &= best <= (ratio_threshold ** 2) * second
    if distance_threshold is not None:
        valid &= best <= distance_threshold ** 2
    if mutual or symmetric_ratio:
        use_ratio1 = symmetric_ratio and ratio_threshold is not None and n0 >= 2
        best1, m1, second1 = _two_smallest(d2, 1, use_ratio1)  # (B, N1)
        if mutual:
            back = torch.gather(m1, 1, m0)  # (B, N0)
            valid &= back == torch.arange(n0, device=d2.device)[None]
        if use_ratio1:
            ratio_ok = best1 <= (ratio_threshold ** 2) * second1  # (B, N1)
            valid &= torch.gather(ratio_ok, 1, m0)
    scores = (1.0 - best / 4.0).clamp(0.0, 1.0)
    matches0 = torch.where(valid, m0, torch.full_like(m0, -1))
    scores0 = torch.where(valid, scores, torch.zeros_like(scores))
    return matches0, scores0.float()


@register_matcher("nearest_neighbor")
class NearestNeighbor(Matcher):
    """Descriptor nearest-neighbour matcher.

    Config:
        mutual: mutual nearest-neighbour check.
        ratio_threshold: Lowe ratio on L2 distances (not squared), or null.
        distance_threshold: maximum L2 distance, or null.
        symmetric_ratio: apply the ratio test in both directions (SMNN).
        normalize: L2-normalise descriptors first (hloc normalises before NN matching).
        max_batch_elements: cap on k * N0 * Nmax distance entries computed at once.
    """

    default_conf: Dict[str, Any] = {
        "mutual": True,
        "ratio_threshold": None,
        "distance_threshold": None,
        "symmetric_ratio": False,
        "normalize": True,
        "max_batch_elements": 1 << 26,
    }

    def _init(self, conf: Dict[str, Any]) -> None:
        r = conf["ratio_threshold"]
        if r is not None and not (0.0 < float(r) <= 1.0):
            raise ValueError(f"{conf['preset']}: ratio_threshold must be in (0, 1], got {r}")
        if conf["symmetric_ratio"] and r is None:
            raise ValueError(f"{conf['preset']}: symmetric_ratio needs a ratio_threshold")

    def _prep(self, d: torch.Tensor) -> torch.Tensor:
        d = d.to(self.device, torch.float32)
        if self.conf["normalize"]:
            d = torch.nn.functional.normalize(d, dim=-1)
        return d

    @torch.inference_mode()
    def match_many(self, query: Features, refs: Sequence[Features]) -> List[Matches]:
        check_features(query, "query", ("descriptors",))
        for i, r in enumerate(refs):
            check_features(r, f"refs[{i}]", ("descriptors",))
            if r["descriptors"].shape[-1] != query["descriptors"].shape[-1]:
                raise ValueError(f"refs[{i}]: descriptor size {r['descriptors'].shape[-1]} != query's "
                                 f"{query['descriptors'].shape[-1]}")
        q = self._prep(query["descriptors"])
        n0 = q.shape[0]
        out: List[Matches] = []
        chunk: List[torch.Tensor] = []
        budget = int(self.conf["max_batch_elements"])

        def flush() -> None:
            if not chunk:
                return
            padded, mask = pad_descriptors(chunk)
            m, s = nn_match_batched(q, padded, mask, mutual=bool(self.conf["mutual"]),
                                    ratio_threshold=self.conf["ratio_threshold"],
                                    distance_threshold=self.conf["distance_threshold"],
                                    symmetric_ratio=bool(self.conf["symmetric_ratio"]),
                                    normalized=bool(self.conf["normalize"]))
            for i in range(len(chunk)):
                out.append({"matches0": m[i].cpu(), "matching_scores0": s[i].cpu()})
            chunk.clear()

        nmax = 0
        for r in refs:
            d = self._prep(r["descriptors"])
            new_nmax = max(nmax, d.shape[0])
            if chunk and (len(chunk) + 1) * n0 * new_nmax > budget:
                flush()
                new_nmax = d.shape[0]
            chunk.append(d)
            nmax = new_nmax
        flush()
        return out

    def _match_pair(self, feats0: Features, feats1: Features) -> Matches:
        return self.match_many(feats0, [feats1])[0]


__all__ = ["NearestNeighbor", "nn_match_batched", "pad_descriptors", "empty_matches"]
