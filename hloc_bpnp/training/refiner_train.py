"""Training the keypoint refiner on cached data (:mod:`hloc_bpnp.training.refiner_data`).

Only the small patch network trains (the detector is frozen), over precomputed patches and
match sets, so thousands of steps take minutes on a CPU. Losses (switches in ``losses``):

``sampson``
    Truncated symmetric Sampson error of each verified match under the known poses, in network
    pixels, with both keypoints refined: ``min(e, tau)`` (``sampson.truncation`` = tau). With
    ``sampson.uncertainty`` the per-match NLL ``0.5 min(e, tau)^2 / v + 0.5 log v``,
    ``v = exp(s_a) + exp(s_b)``, with ``e`` detached, also trains the log-variances (a 1/v
    factor on the position gradients made training oscillate once the BPnP term moved v).
``nll``
    The negative log-likelihood of the known pose under BPnP's Gauss-Newton posterior, per
    query (2D-3D from a map WITHOUT the query): BPnP (``hloc_bpnp.bpnp.solve_pnp``, implicit
    backward) solves the pose from the refined query keypoints with weights
    ``w_i = 1 / (exp(s_i) scale_i^2)`` (inverse variances in original pixels); with
    ``A = sum_i w_i J_i^T J_i`` at the solution and ``d`` the tangent error of the known pose,
    ``0.5 d^T A d - 0.5 log det A`` (the Laplace posterior, sigma^2 = 1). Gradients reach the
    offsets through the solver and the log-variances through the solver and ``A``.
``reproj``
    The reprojection error of each query keypoint that has a 2D-3D correspondence (the pose
    problems: 3D points triangulated WITHOUT the query) at the query's known pose, in network
    pixels, truncated at ``reproj.truncation``: the target is ``project(R X + t)``, a constant
    per keypoint, so the term supervises both components of the offset (Sampson sees only the
    one across the epipolar line: along it a refiner is free to drift). With
    ``reproj.uncertainty`` the 2D NLL ``0.5 min(e, tau)^2 / v + log v`` (``v = exp(s)``, ``e``
    detached) also trains the log-variance. Works in undistorted normalized coordinates through
    the cached Jacobians, like the Sampson term.
``homography``
    The transfer error of matches between two random homographic warps of one unposed image
    (:mod:`hloc_bpnp.training.homography_data`), in network pixels, truncated at
    ``homography.truncation``: ``|H(p_a + o_a) - (p_b + o_b)|``. It supervises both offset
    components from any image, with no pose: the data that lets the refiner see more than the
    few posed scenes.
``pose``
    The pose error of that BPnP solve (rotation in degrees + translation / scene scale in
    percent of the map extent, unweighted): a pose-only loss as the original pipeline had.

``bpnp.offsets_grad: false`` stops the BPnP terms' gradients at the keypoint offsets: they then
train the correspondence weights (log-variances) only, through the solver and ``A``, while the
Sampson term trains the positions.

Validation: median Sampson error (original pixels) of the validation matches with refined
keypoints and, with the ``reproj`` term, the median reprojection error (original pixels) of the
validation images' 2D-3D correspondences; ``select`` picks the score of the best state
(``sampson``, ``reproj``, or ``both``: the geometric mean of the two ratios to their start
values); the best state is kept (early stopping after ``patience`` evaluations without gain).
"""
from __future__ import annotations

import copy
import logging
import math
import time
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence

import torch

from ..config import merge
from ..features.refiner import KeypointRefiner
from .homography_data import HomographyPairs, transfer_errors
from .refiner_data import PoseProblem, RefinerScene, sampson_normalized

logger = logging.getLogger(__name__)

DEFAULT_CONF: Dict[str, Any] = {
    "seed": 0,
    "refiner": dict(KeypointRefiner.default_conf),
    "steps": 2000,
    "batch_matches": 2048,
    "lr": 1e-3,
    "weight_decay": 0.0,
    "clip_grad_norm": None,  # max global gradient norm (None: no clipping)
    "augment": False,  # Sampson term on patches under random symmetries of the square grid
    "eval_every": 100,
    "eval_matches": 20000,
    "patience": 6,
    "losses": {"sampson": True, "nll": False, "pose": False, "reproj": False, "homography": False},
    "weights": {"sampson": 1.0, "nll": 0.02, "pose": 0.1, "reproj": 1.0, "homography": 1.0},
    "sampson": {"truncation": 1.5, "uncertainty": True},
    "reproj": {"truncation": 1.5, "uncertainty": False, "batch": 2048},
    "homography": {"truncation": 1.5, "batch": 2048},
    "select": "sampson",  # validation score of the kept state: sampson | reproj | both
    "bpnp": {"problems_per_step": 4, "subset_size": 100, "offsets_grad": True},
}


#: ``select`` names -> the validation metrics whose ratios to their start values are averaged
#: (geometric mean) into the score of a state
SELECT = {"sampson": ("sampson",), "reproj": ("reproj",), "both": ("sampson", "reproj"),
          "homography": ("homography",), "all": ("sampson", "reproj", "homography")}



#: feature extractors (``model`` of a features preset) that take a :class:`KeypointRefiner`
REFINABLE_MODELS = ("xfeat", "aliked")


def refiner_preset(features: str, suffix: str = "") -> str:
    """The refiner training preset (``configs/finetune``) of a detector preset:
    ``refiner_<features><suffix>`` where one exists, else XFeat's (the presets set losses,
    steps and data scales, nothing specific to the detector)."""
    from ..config import list_configs

    name = f"refiner_{features}{suffix}"
    if name in list_configs("finetune"):
        return name
    logger.info("no finetune preset %s: using refiner_xfeat%s (the presets are detector-agnostic)", name, suffix)
    return f"refiner_xfeat{suffix}"


def uses_homographies(conf: Dict) -> bool:
    """Whether a training config (merged or partial) needs homography pairs (its loss or ``select``)."""
    return bool(conf.get("losses", {}).get("homography")
                or "homography" in SELECT.get(conf.get("select", "sampson"), ()))


def needs_pose_problems(conf: Dict) -> bool:
    """Whether a training config (merged or partial) needs the scenes' 2D-3D pose problems."""
    losses = conf.get("losses", {})
    return bool(losses.get("nll") or losses.get("pose") or losses.get("reproj")
                or "reproj" in SELECT.get(conf.get("select", "sampson"), ()))


def refiner_outputs(refiner: KeypointRefiner, scene: RefinerScene, kp: torch.Tensor,
                    augment: Optional[torch.Generator] = None):
    """Offsets (n, 2) and log-variances (n,) for global keypoint indices ``kp``; with
    ``augment`` (a generator) each patch goes through a random symmetry of the square grid
    and its offset is mapped back (training-time augmentation)."""
    from ..features.refiner import dihedral_offsets_back, dihedral_patches

    p = scene.patches[kp]
    if augment is None:
        out = refiner(p)
        return out["offset"].to(torch.float64), out["log_var"].to(torch.float64)
    k = torch.randint(0, 8, (p.shape[0],), generator=augment)
    out = refiner(dihedral_patches(p, k))
    return dihedral_offsets_back(out["offset"], k).to(torch.float64), out["log_var"].to(torch.float64)


def match_errors(scene: RefinerScene, sel: torch.Tensor, off: Dict[int, torch.Tensor]):
    """Sampson errors in ORIGINAL pixels of matches ``sel`` given per-side offsets (network px)."""
    m = scene.matches[sel]
    a, b = m[:, 0], m[:, 1]
    na = scene.norm0[a] + torch.einsum("mij,mj->mi", scene.jac[a], off[0] * scene.scale[a])
    nb = scene.norm0[b] + torch.einsum("mij,mj->mi", scene.jac[b], off[1] * scene.scale[b])
    pair = scene.match_pair[sel]
    return sampson_normalized(scene.E[pair], na, nb) * scene.focal[pair]


def _side_outputs(refiner, scene, sel, augment=None):
    m = scene.matches[sel]
    kp, inv = torch.unique(m.reshape(-1), return_inverse=True)
    o, lv = refiner_outputs(refiner, scene, kp, augment)
    inv = inv.reshape(-1, 2)
    return (o[inv[:, 0]], o[inv[:, 1]]), (lv[inv[:, 0]], lv[inv[:, 1]])


def refined_match_errors(refiner, scene: RefinerScene, sel: torch.Tensor) -> torch.Tensor:
    """Sampson errors (original px) of matches ``sel`` with ``refiner``'s keypoints (None: the
    unrefined ones)."""
    if refiner is None:
        z = torch.zeros(sel.numel(), 2, dtype=torch.float64)
        return match_errors(scene, sel, {0: z, 1: z})
    off, _ = _side_outputs(refiner, scene, sel)
    return match_errors(scene, sel, {0: off[0], 1: off[1]})


def sampson_loss(refiner, scene: RefinerScene, sel: torch.Tensor, conf: Dict,
                 augment: Optional[torch.Generator] = None) -> torch.Tensor:
    off, lv = _side_outputs(refiner, scene, sel, augment)
    m = scene.matches[sel]
    s = torch.sqrt(scene.scale[m[:, 0]].mean(-1) * scene.scale[m[:, 1]].mean(-1))
    e = match_errors(scene, sel, {0: off[0], 1: off[1]}) / s  # network pixels
    tau = float(conf["truncation"])
    et = e.clamp(max=tau)
    if conf["uncertainty"]:  # the variances fit the errors; the positions get the plain loss
        v = lv[0].exp() + lv[1].exp()
        ed = et.detach()
        return et.mean() + (0.5 * ed * ed / v + 0.5 * v.log()).mean()
    return et.mean()


def homography_loss(refiner, pairs: HomographyPairs, sel: torch.Tensor, conf: Dict,
                    augment: Optional[torch.Generator] = None) -> torch.Tensor:
    """Mean truncated transfer error (network px) of homography matches ``sel``, both sides refined."""
    off, _ = _side_outputs(refiner, pairs, sel, augment)
    return transfer_errors(pairs, sel, off[0], off[1]).clamp(max=float(conf["truncation"])).mean()


def _median_over_matches(sets: Sequence, errors, chunk: int, max_matches: Optional[int]) -> float:
    """Median of ``errors(set, rows)`` over the matches of ``sets`` (chunks of ``chunk`` rows);
    ``max_matches``: an evenly spaced subset of at most that many per set (deterministic)."""
    errs = []
    for sc in sets:
        M = sc.matches.shape[0]
        rows = torch.arange(M)
        if max_matches and M > max_matches:
            rows = torch.linspace(0, M - 1, max_matches).round().long()
        for i in range(0, rows.numel(), chunk):
            errs.append(errors(sc, rows[i:i + chunk]))
    return float(torch.cat(errs).median()) if errs else math.nan


@torch.no_grad()
def median_transfer(refiner: Optional[KeypointRefiner], sets: Sequence[HomographyPairs], chunk: int = 16384,
                    max_matches: Optional[int] = None) -> float:
    """Median homography transfer error (network px) over the matches of ``sets`` (``None``:
    unrefined keypoints); ``max_matches``: an evenly spaced subset per set."""
    def errors(hp, r):
        if refiner is None:
            z = torch.zeros(r.numel(), 2, dtype=torch.float64)
            return transfer_errors(hp, r, z, z)
        off, _ = _side_outputs(refiner, hp, r)
        return transfer_errors(hp, r, off[0], off[1])

    return _median_over_matches(sets, errors, chunk, max_matches)


@torch.no_grad()
def median_sampson(refiner: Optional[KeypointRefiner], scenes: Sequence[RefinerScene], chunk: int = 16384,
                   max_matches: Optional[int] = None) -> float:
    """Median Sampson error (original px) over the matches of ``scenes`` (``None``: unrefined);
    ``max_matches``: an evenly spaced subset of at most that many per scene (deterministic)."""
    return _median_over_matches(scenes, lambda sc, r: refined_match_errors(refiner, sc, r), chunk, max_matches)


@dataclass
class ReprojectionTargets:
    """Every 2D-3D correspondence of a scene's pose problems, flattened: the keypoint and where
    its 3D point projects at the known pose (undistorted normalized coordinates)."""

    kp: torch.Tensor      # (n,) long global keypoint indices
    target: torch.Tensor  # (n, 2) float64 normalized projection of the 3D point at the known pose
    focal: torch.Tensor   # (n, 2) float64 (fx, fy): normalized -> original pixels

    @classmethod
    def of(cls, scene: RefinerScene) -> "ReprojectionTargets":
        from ..geometry.pose import so3_exp

        kp, tg, fo = [], [], []
        for pp in scene.poses:
            R = so3_exp(pp.pose[None, :3].to(torch.float64))[0]
            Xc = pp.points3d.to(torch.float64) @ R.T + pp.pose[3:].to(torch.float64)
            kp.append(pp.kp)
            tg.append(Xc[:, :2] / Xc[:, 2:].clamp_min(1e-12))
            fo.append(torch.stack([pp.K[0, 0], pp.K[1, 1]]).to(torch.float64).expand(pp.kp.numel(), 2))
        if not kp:
            z = torch.zeros(0, 2, dtype=torch.float64)
            return cls(torch.zeros(0, dtype=torch.long), z, z.clone())
        return cls(torch.cat(kp), torch.cat(tg), torch.cat(fo))

    def __len__(self) -> int:
        return int(self.kp.numel())


def reprojection_residuals(scene: RefinerScene, tg: ReprojectionTargets, rows: torch.Tensor,
                           offsets: torch.Tensor) -> torch.Tensor:
    """(n, 2) residuals in ORIGINAL pixels of correspondences ``rows`` of ``tg`` with keypoint
    offsets (n, 2) in network pixels: refined keypoint minus projected 3D point."""
    kp = tg.kp[rows]
    n = scene.norm0[kp] + torch.einsum("nij,nj->ni", scene.jac[kp], offsets * scene.scale[kp])
    return (n - tg.target[rows]) * tg.focal[rows]


def reprojection_loss(refiner, scene: RefinerScene, tg: ReprojectionTargets, rows: torch.Tensor, conf: Dict,
                      augment: Optional[torch.Generator] = None) -> torch.Tensor:
    kp = tg.kp[rows]
    o, lv = refiner_outputs(refiner, scene, kp, augment)
    e = reprojection_residuals(scene, tg, rows, o).norm(dim=-1) / scene.scale[kp].mean(-1)  # network px
    et = e.clamp(max=float(conf["truncation"]))
    if conf["uncertainty"]:
        ed = et.detach()
        return et.mean() + (0.5 * ed * ed / lv.exp() + lv).mean()
    return et.mean()


@torch.no_grad()
def median_reprojection(refiner: Optional[KeypointRefiner], scenes: Sequence[RefinerScene],
                        targets: Optional[Sequence[ReprojectionTargets]] = None, chunk: int = 16384) -> float:
    """Median reprojection error (original px) of the 2D-3D correspondences of ``scenes``'
    pose problems at the known poses (``None``: unrefined keypoints); nan without any."""
    errs = []
    for i, sc in enumerate(scenes):
        tg = targets[i] if targets is not None else ReprojectionTargets.of(sc)
        for j in range(0, len(tg), chunk):
            rows = torch.arange(j, min(j + chunk, len(tg)))
            o = (torch.zeros(rows.numel(), 2, dtype=torch.float64) if refiner is None
                 else refiner_outputs(refiner, sc, tg.kp[rows])[0])
            errs.append(reprojection_residuals(sc, tg, rows, o).norm(dim=-1))
    return float(torch.cat(errs).median()) if errs else math.nan


def _tangent_error(pose_est: torch.Tensor, pose_gt: torch.Tensor) -> torch.Tensor:
    """(B, 6) [d_w, d_t] with R_gt = exp(d_w) R_est, t_gt = t_est + d_t (BPnP's tangent)."""
    from ..geometry.pose import so3_exp, so3_log

    R_e, R_g = so3_exp(pose_est[:, :3]), so3_exp(pose_gt[:, :3])
    dw = so3_log(R_g @ R_e.transpose(-1, -2))
    return torch.cat([dw, pose_gt[:, 3:] - pose_est[:, 3:]], -1)


def pose_losses(refiner, scene: RefinerScene, problems: Sequence[PoseProblem], subset: int,
                gen: torch.Generator, offsets_grad: bool = True) -> Dict[str, torch.Tensor]:
    """BPnP solves of ``problems`` (each on a random subset of ``subset`` correspondences) from
    refined keypoints with learned weights -> mean posterior NLL and mean pose error.
    ``offsets_grad`` False: the keypoints are fixed inputs (the losses train the weights only)."""
    from ..bpnp import solve_pnp
    from ..bpnp.implicit import make_projector
    from ..bpnp.residuals import residuals_and_jacobian
    from ..geometry.pose import so3_exp

    nll, perr = [], []
    for pp in problems:
        n = pp.kp.numel()
        idx = torch.randperm(n, generator=gen)[:subset]
        kp = pp.kp[idx]
        X = pp.points3d[idx]
        o, lv = refiner_outputs(refiner, scene, kp)
        if not offsets_grad:
            o = o.detach()
        s = scene.scale[kp]
        x = scene.base[kp] + o * s
        w = torch.exp(-lv) / (s * s).mean(-1)
        res = solve_pnp(x, X, pp.K, weights=w, pose_init=pp.pose, loss="l2")
        if not bool(res.valid):
            continue
        est = res.pose.reshape(1, 6)
        d = _tangent_error(est, pp.pose[None])
        with torch.no_grad():
            R = so3_exp(est[:, :3].detach())
            _, J, _ = residuals_and_jacobian(R, est[:, 3:].detach(), X[None], x.detach()[None],
                                             make_projector("K", None, pp.K[None]))
        A = torch.einsum("n,nki,nkj->ij", w, J[0], J[0])
        nll.append(0.5 * d[0] @ A @ d[0] - 0.5 * torch.logdet(A))
        extent = X.std(0).norm().clamp_min(1e-9)
        perr.append(torch.rad2deg(d[0, :3].norm()) + 100.0 * d[0, 3:].norm() / extent)
    if not nll:
        z = torch.zeros((), dtype=torch.float64, requires_grad=True)
        return {"nll": z, "pose": z}
    return {"nll": torch.stack(nll).mean(), "pose": torch.stack(perr).mean()}


def train_refiner(train: Sequence[RefinerScene], val: Sequence[RefinerScene], conf: Optional[Dict] = None,
                  progress: bool = True, homographies: Sequence[HomographyPairs] = (),
                  val_homographies: Sequence[HomographyPairs] = (),
                  init: Optional[KeypointRefiner] = None) -> Dict[str, Any]:
    """Train a refiner from zero initialisation, or from ``init``.

    ``homographies`` / ``val_homographies``: unposed warp pairs for the ``homography`` loss and
    its validation (:mod:`hloc_bpnp.training.homography_data`).
    ``init``: a trained refiner to start from (e.g. the shipped cross-scene one, adapted to a
    user's map); its architecture must be the config's ``refiner``. The selection scores are then
    relative to it (score 1 = ``init``), and it is kept if no step beats it.

    Returns:
        ``refiner`` (best validation state, eval mode), ``history`` (rows of step, losses,
        train/val median Sampson px and, with ``reproj`` or a ``select`` that uses it,
        reprojection px; with homographies train/val median transfer px; ``score``: the
        selection score, 1 at the start), ``best_step``, ``seconds``, ``conf``.
    Raises:
        ValueError: no training matches, a BPnP / reprojection loss without pose problems, a
            homography loss without homography data, or an unknown ``select``.
    """
    from tqdm import tqdm

    conf = merge(DEFAULT_CONF, conf or {})
    train = [s for s in train if s.matches.shape[0]]
    if not train:
        raise ValueError("train_refiner: no training matches")
    use_pose = conf["losses"]["nll"] or conf["losses"]["pose"]
    use_reproj = bool(conf["losses"].get("reproj"))
    problems = [(s, p) for s in train for p in s.poses]
    if (use_pose or use_reproj) and not problems:
        raise ValueError("train_refiner: the nll/pose/reproj losses need pose problems (build the data with "
                         "pose_problems)")
    select = str(conf["select"])
    if select not in SELECT:
        raise ValueError(f"train_refiner: select must be one of {sorted(SELECT)}, not {select!r}")
    use_homog = bool(conf["losses"].get("homography"))
    homographies = [h for h in homographies if h.matches.shape[0]]
    if use_homog and not homographies:
        raise ValueError("train_refiner: the homography loss needs homography pairs (homography_data)")
    track_homog = bool(homographies)
    if "homography" in SELECT[select] and not (val_homographies or homographies):
        raise ValueError(f"train_refiner: select={select!r} needs homography pairs")
    track_reproj = use_reproj or "reproj" in SELECT[select]
    tg_train = [ReprojectionTargets.of(s) for s in train] if track_reproj else []
    tg_val = [ReprojectionTargets.of(s) for s in val] if track_reproj else []
    if "reproj" in SELECT[select] and not sum(len(t) for t in (tg_val if val else tg_train)):
        raise ValueError(f"train_refiner: select={select!r} needs 2D-3D correspondences in the validation scenes")
    torch.manual_seed(int(conf["seed"]))
    gen = torch.Generator().manual_seed(int(conf["seed"]))
    ref = KeypointRefiner(conf["refiner"])
    if init is not None:
        if dict(init.conf) != dict(ref.conf):
            raise ValueError(f"train_refiner: the init refiner's architecture {dict(init.conf)} is not the config's "
                             f"refiner {dict(ref.conf)}")
        ref.load_state_dict(init.state_dict())
    opt = torch.optim.Adam(ref.parameters(), lr=float(conf["lr"]), weight_decay=float(conf["weight_decay"]))
    counts = torch.tensor([s.matches.shape[0] for s in train], dtype=torch.float64)
    hist: List[Dict[str, float]] = []
    em = int(conf["eval_matches"]) or None

    def evaluate(model) -> Dict[str, float]:
        r = {"train_sampson_px": median_sampson(model, train, max_matches=em),
             "val_sampson_px": median_sampson(model, val, max_matches=em) if val else math.nan}
        if track_reproj:
            r["train_reproj_px"] = median_reprojection(model, train, tg_train)
            r["val_reproj_px"] = median_reprojection(model, val, tg_val) if val else math.nan
        if track_homog:
            r["train_homography_px"] = median_transfer(model, homographies, max_matches=em)
            r["val_homography_px"] = (median_transfer(model, val_homographies, max_matches=em) if val_homographies
                                      else math.nan)
        return r

    start = evaluate(None if init is None else ref.eval())
    hist.append({"step": 0, **start})
    part = "val" if val else "train"

    hpart = "val" if val_homographies else "train"

    def score(r: Dict[str, float]) -> float:
        ratios = [r[f"{hpart if m == 'homography' else part}_{m}_px"]
                  / start[f"{hpart if m == 'homography' else part}_{m}_px"] for m in SELECT[select]]
        return math.exp(sum(math.log(x) for x in ratios) / len(ratios))

    best, best_state, best_step, bad = 1.0, copy.deepcopy(ref.state_dict()), 0, 0
    tg_counts = torch.tensor([len(t) for t in tg_train], dtype=torch.float64) if use_reproj else None
    t0 = time.time()
    W = conf["weights"]
    bar = tqdm(range(1, int(conf["steps"]) + 1), desc="refiner", disable=not progress)
    for step in bar:
        ref.train()
        loss = torch.zeros((), dtype=torch.float64)
        row: Dict[str, float] = {"step": step}
        if conf["losses"]["sampson"]:
            per = (counts / counts.sum() * int(conf["batch_matches"])).round().long().clamp_min(1)
            ls = []
            for sc, k in zip(train, per.tolist()):
                sel = torch.randint(0, sc.matches.shape[0], (k,), generator=gen)
                ls.append(sampson_loss(ref, sc, sel, conf["sampson"], gen if conf["augment"] else None)
                          * (k / float(per.sum())))
            l_s = torch.stack(ls).sum()
            loss = loss + float(W["sampson"]) * l_s
            row["sampson"] = float(l_s.detach())
        if use_reproj:
            rc = conf["reproj"]
            per = (tg_counts / tg_counts.sum() * int(rc["batch"])).round().long()
            lr_ = []
            for sc, tg, k in zip(train, tg_train, per.tolist()):
                if k and len(tg):
                    rows = torch.randint(0, len(tg), (k,), generator=gen)
                    lr_.append(reprojection_loss(ref, sc, tg, rows, rc, gen if conf["augment"] else None)
                               * (k / float(per.sum())))
            l_r = torch.stack(lr_).sum()
            loss = loss + float(W["reproj"]) * l_r
            row["reproj"] = float(l_r.detach())
        if use_homog:
            hc = conf["homography"]
            hcounts = torch.tensor([h.matches.shape[0] for h in homographies], dtype=torch.float64)
            per = (hcounts / hcounts.sum() * int(hc["batch"])).round().long().clamp_min(1)
            lh = []
            for hp, k in zip(homographies, per.tolist()):
                sel = torch.randint(0, hp.matches.shape[0], (k,), generator=gen)
                lh.append(homography_loss(ref, hp, sel, hc, gen if conf["augment"] else None) * (k / float(per.sum())))
            l_h = torch.stack(lh).sum()
            loss = loss + float(W["homography"]) * l_h
            row["homography"] = float(l_h.detach())
        if use_pose:
            pick = torch.randperm(len(problems), generator=gen)[:int(conf["bpnp"]["problems_per_step"])]
            by_scene: Dict[int, List] = {}
            for i in pick.tolist():
                by_scene.setdefault(id(problems[i][0]), []).append(problems[i])
            nl, pe = [], []
            for items in by_scene.values():
                out = pose_losses(ref, items[0][0], [p for _, p in items], int(conf["bpnp"]["subset_size"]), gen,
                                  bool(conf["bpnp"]["offsets_grad"]))
                nl.append(out["nll"])
                pe.append(out["pose"])
            if conf["losses"]["nll"]:
                loss = loss + float(W["nll"]) * torch.stack(nl).mean()
                row["nll"] = float(torch.stack(nl).mean().detach())
            if conf["losses"]["pose"]:
                loss = loss + float(W["pose"]) * torch.stack(pe).mean()
                row["pose"] = float(torch.stack(pe).mean().detach())
        opt.zero_grad()
        loss.backward()
        if conf["clip_grad_norm"]:
            row["grad_norm"] = float(torch.nn.utils.clip_grad_norm_(ref.parameters(), float(conf["clip_grad_norm"])))
        opt.step()
        if step % int(conf["eval_every"]) == 0 or step == int(conf["steps"]):
            ref.eval()
            row.update(evaluate(ref))
            sc_ = score(row)
            row["score"] = sc_
            if sc_ < best:
                best, best_state, best_step, bad = sc_, copy.deepcopy(ref.state_dict()), step, 0
            else:
                bad += 1
            bar.set_postfix(train=f"{row['train_sampson_px']:.3f}", val=f"{row['val_sampson_px']:.3f}",
                            score=f"{sc_:.3f}")
            logger.info("refiner step %d: Sampson train %.4f px, val %.4f px (start %.4f / %.4f)%s; score %.4f",
                        step, row["train_sampson_px"], row["val_sampson_px"], start["train_sampson_px"],
                        start["val_sampson_px"],
                        (f"; reprojection train {row['train_reproj_px']:.4f}, val {row['val_reproj_px']:.4f} px"
                         if track_reproj else "")
                        + (f"; transfer train {row['train_homography_px']:.4f}, val {row['val_homography_px']:.4f} px"
                           if track_homog else ""), sc_)
            hist.append(row)
            if bad >= int(conf["patience"]):
                logger.info("refiner: early stop at step %d (best %d)", step, best_step)
                break
    ref.load_state_dict(best_state)
    return {"refiner": ref.eval(), "history": hist, "best_step": best_step, "seconds": time.time() - t0,
            "conf": conf}


def save_refiner(refiner: KeypointRefiner, path) -> None:
    """Write the refiner's state dict (plain tensors, loadable with ``weights_only=True``), atomically."""
    from pathlib import Path

    from ..io.atomic import atomic_path

    path = Path(path)
    with atomic_path(path) as tmp:
        torch.save({k: v.detach().cpu().clone().contiguous() for k, v in refiner.state_dict().items()}, tmp)
