"""Fine-tuning loop: descriptor/score losses and the pose loss through BPnP.

One step: a global batch of queries is drawn deterministically from ``(seed, step)`` (each
process takes its slice); the network detects and describes the queries WITH gradients; the
reference views' features (the "map": keypoints with exact 3D points) come from a frozen copy
of the network that is refreshed every ``map_refresh_every`` steps (at steps 0, N, 2N, ...;
refreshing costs one forward pass per map view used afterwards, computed lazily); then
:func:`~hloc_bpnp.training.localization.localize_differentiable` and the losses run per query,
the local mean loss is back-propagated, gradients are averaged over processes, checked for
NaN/inf (the step is skipped on every rank and logged), clipped, and Adam steps.

Determinism: parameters are initialised from ``seed``; batches depend only on ``(seed, step)``;
RANSAC has a fixed seed; a checkpoint stores the model, optimizer, map-network weights and
step, so training 2 + 2 steps with a resume equals training 4 steps bit for bit.
Outputs in ``output_dir``: ``log.csv``, ``checkpoint_last.pt``, ``weights.pt`` (network state
dict, loadable by the ``trainable`` extractor preset), ``config.yaml``.
"""
from __future__ import annotations

import copy
import csv
import logging
import math
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import yaml
from torch import nn
from tqdm import tqdm

from ..config import merge
from ..io.atomic import atomic_open, atomic_path
from . import distributed as D
from .data import TrainScene, TrainView, points_from_depth
from .localization import MapView, lightglue_pairs, localize_differentiable, match_pairs
from .localization import default_conf as loc_default_conf
from .losses import LossWeighting, correspondence_targets, pose_loss, score_loss, score_targets
from .losses import default_conf as loss_default_conf
from ..features.networks import build_network, save_weights

logger = logging.getLogger(__name__)

default_conf = {
    "seed": 0,
    "data": {  # used by build_scenes (training/datasets in the CLI / pipelines)
        "source": "synthetic",
        "preset": "small",
        "seeds": [101, 102, 103],
        "num_refs": 3,
        "resize_max": None,
        "overrides": None,  # dict merged over the synthetic preset
        "scenes": None,  # source real: Strecha-layout / Middlebury scene folders
        "synthetic": None,  # source real: extra synthetic scenes {preset, seeds, overrides} (exact depth)
    },
    # the network: {"name": trainable | xfeat | aliked, **its options} (hloc_bpnp.features.networks);
    # null = the small ``trainable`` network with its defaults
    "model": None,
    # local weights file for the network (its extractor preset's layout); None: random init for
    # ``trainable``, the packaged pretrained weights for ``xfeat`` / ``aliked``
    "init_weights": None,
    # parameter groups that train (network.parameter_groups(): e.g. detector, descriptor,
    # backbone; plus ``matcher`` with a learned matcher); null = all. The rest is frozen.
    "train_groups": None,
    # learned matcher trained with the network: a LightGlue matcher preset (e.g.
    # xfeat_lighterglue) whose assignment probabilities replace the dual-softmax as soft
    # correspondences (descriptor loss = NLL of the GT matches, BPnP weights); null = dual-softmax
    "matcher": None,
    "init_temperature": 0.1,
    "localization": dict(loc_default_conf),
    "losses": {
        "descriptor": True,
        "score": True,
        "pose": True,
        "weighting": "fixed",  # fixed | learned (homoscedastic uncertainty)
        "weights": {"descriptor": 1.0, "score": 0.5, "pose": 0.05},
        "pose_conf": dict(loss_default_conf),
    },
    # loc_lr_scale multiplies the learning rate of the keypoint-offset head (``loc_head``, small
    # network); group_lr_scale: {parameter group: factor} for any network (e.g. detector: 10)
    "optim": {"lr": 1e-3, "weight_decay": 0.0, "clip_grad_norm": 1.0, "loc_lr_scale": 1.0, "group_lr_scale": None},
    "steps": 100,
    "batch_size": 2,  # global batch (split over processes)
    "map_refresh_every": 20,
    "checkpoint_every": 50,
    "log_every": 1,
    "tensorboard": False,
    "device": "cpu",
}

LOG_FIELDS = ["step", "loss", "descriptor", "score", "pose", "reproj_px", "rot_deg", "trans",
              "num_pose", "num_positives", "temperature", "grad_norm", "skipped", "seconds"]


class FinetuneModel(nn.Module):
    """Everything that is trained: the feature network, the matching temperature, the loss weights."""

    def __init__(self, conf: Dict):
        super().__init__()
        self.net = build_network(conf["model"], pretrained=not conf["init_weights"])
        self.log_temperature = nn.Parameter(torch.tensor(math.log(conf["init_temperature"])))
        lc = conf["losses"]
        names = [n for n in ("descriptor", "score", "pose") if lc[n]]
        if not names:
            raise ValueError("losses: enable at least one of descriptor, score, pose")
        self.weighting = LossWeighting(names, lc["weighting"], lc["weights"])
        self.matcher = None
        if conf.get("matcher"):
            from ..matching import build_matcher

            m = build_matcher(conf["matcher"], depth_confidence=-1, width_confidence=-1)  # full assignment
            if not hasattr(m, "net") or not hasattr(m.net, "log_assignment"):
                raise ValueError(f"matcher {conf['matcher']!r}: only LightGlue matchers can be trained")
            self.matcher = m.net.train()

    def parameter_groups(self) -> Dict[str, List[nn.Parameter]]:
        """The network's groups, plus ``matcher`` (the learned matcher's parameters) if any."""
        groups = dict(self.net.parameter_groups())
        if self.matcher is not None:
            groups["matcher"] = list(self.matcher.parameters())
        return groups


def map_view_features(net: nn.Module, view: TrainView) -> MapView:
    """Reference-view features with exact 3D points (keypoints without depth are dropped)."""
    with torch.no_grad():
        out = net(view.image[None])
        valid = out["valid"][0]
        kpts = out["keypoints"][0][valid] + 0.5  # kornia -> COLMAP pixels
        desc = out["descriptors"][0][valid]
        X, ok = points_from_depth(kpts, view)
    H, W = view.image.shape[-2:]
    return MapView(view.name, kpts[ok], desc[ok], X[ok], torch.tensor([W, H], device=kpts.device))


def query_losses(model: FinetuneModel, kpts: torch.Tensor, desc: torch.Tensor, scores: torch.Tensor,
                 view: TrainView, refs: List[MapView], conf: Dict) -> Tuple[Dict[str, torch.Tensor], Dict[str, float]]:
    """Losses of one query (kpts (N, 2) COLMAP pixels, desc (N, D), scores (N,)); returns
    (named losses, metrics)."""
    lc = conf["losses"]
    if model.matcher is not None:
        H, W = view.image.shape[-2:]
        pairs = lightglue_pairs(model.matcher, kpts, desc, torch.tensor([W, H], device=kpts.device), refs)
    else:
        pairs = match_pairs(desc, refs, model.log_temperature)
    losses: Dict[str, torch.Tensor] = {}
    metrics: Dict[str, float] = {}
    need_pos = lc["descriptor"] or lc["score"]
    if need_pos:
        nll, targets, n_pos = [], torch.zeros(kpts.shape[0], device=kpts.device), 0
        for pm in pairs:
            pos = correspondence_targets(kpts, view, pm.ref, lc["pose_conf"]["pos_radius_px"])
            n_pos += int(pos.shape[0])
            if pos.shape[0]:
                nll.append(-(pm.P[pos[:, 0], pos[:, 1]] + 1e-6).log())
                targets = torch.maximum(targets, score_targets(pm.P, pos, kpts.shape[0]))
        metrics["num_positives"] = n_pos
        if lc["descriptor"]:
            losses["descriptor"] = torch.cat(nll).mean() if nll else desc.sum() * 0.0
        if lc["score"]:
            losses["score"] = score_loss(scores, targets)
    if lc["pose"]:
        try:
            loc = localize_differentiable(kpts, desc, scores, view.camera, refs, model.log_temperature,
                                          conf["localization"], pairs=pairs)
        except ValueError as e:  # e.g. degenerate solve; the query contributes no pose loss
            logger.warning("query %s: localization failed: %s", view.name, e)
            loc = None
        if loc is not None and loc.pose is not None:
            pl = pose_loss(loc.pose, view.pose, loc.points3d, view.camera, lc["pose_conf"])
            losses["pose"] = pl["total"].float()
            metrics.update(reproj_px=float(pl["reproj"]), rot_deg=float(pl["rot_deg"]),
                           trans=float(pl["trans"]), num_pose=1)
        else:
            metrics["num_pose"] = 0
    return losses, metrics


class Trainer:
    """Fine-tune a trainable feature network (:mod:`hloc_bpnp.features.networks`) on scenes with
    known poses.

    Args:
        conf: merged over ``default_conf``.
        scenes: training scenes; views with depth give exact map points, scenes without depth get
            their map points by triangulation with the known poses (:mod:`.real`), refreshed with
            the frozen map network.
        output_dir: where logs/checkpoints go (None: nothing written).
    """

    def __init__(self, conf: Optional[Dict], scenes: Sequence[TrainScene], output_dir: Optional[Path] = None):
        self.conf = merge(default_conf, conf or {}, strict=True)
        if not scenes:
            raise ValueError("Trainer needs at least one training scene")
        # everything trains on conf["device"]: the networks, the matcher, every view (images,
        # cameras, poses, depth) and the map features; numpy conversions go through .cpu()
        self.device = torch.device(self.conf["device"])
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"device {self.conf['device']!r} requested but CUDA is not available")
        self.scenes = [s.to(self.device) for s in scenes]
        self.items = [(si, q) for si, s in enumerate(self.scenes) for q in s.query_names]
        if not self.items:
            raise ValueError("the training scenes have no query views")
        self.output_dir = Path(output_dir) if output_dir is not None else None
        self.rank, self.world = D.world_info()
        bs = int(self.conf["batch_size"])
        if bs % self.world:
            raise ValueError(f"batch_size {bs} must be divisible by the number of processes {self.world}")
        torch.manual_seed(int(self.conf["seed"]))
        self.model = FinetuneModel(self.conf)
        if self.conf["init_weights"]:
            from ..features.base import load_weights

            load_weights(self.model.net.weights_module(), self.conf["init_weights"], "finetune", key="init_weights")
        self.model.to(self.device)
        self.map_net = copy.deepcopy(self.model.net).eval()
        for p in self.map_net.parameters():
            p.requires_grad_(False)
        self.trained_groups = self._freeze(self.conf["train_groups"])
        oc = self.conf["optim"]
        scales = dict(oc["group_lr_scale"] or {})
        available = self.model.parameter_groups()
        unknown = sorted(set(scales) - set(available))
        if unknown:
            raise ValueError(f"optim.group_lr_scale: unknown groups {unknown}; the network has {sorted(available)}")
        if oc["loc_lr_scale"] != 1.0 and hasattr(self.model.net, "loc_head"):
            available = dict(available, _loc=list(self.model.net.loc_head.parameters()))
            scales["_loc"] = oc["loc_lr_scale"]
        groups, seen = [], set()
        for g, scale in scales.items():
            ps = [p for p in available[g] if p.requires_grad and id(p) not in seen]
            seen.update(id(p) for p in ps)
            if ps:
                groups.append({"params": ps, "lr": oc["lr"] * float(scale)})
        rest = [p for p in self.model.parameters() if p.requires_grad and id(p) not in seen]
        groups.insert(0, {"params": rest})
        self.optimizer = torch.optim.Adam(groups, lr=oc["lr"], weight_decay=oc["weight_decay"])
        self.step = 0
        self.skipped = 0
        self._cache: Dict[Tuple[int, str], MapView] = {}
        self._tb = None

    def _freeze(self, groups) -> List[str]:
        """Freeze every network parameter outside ``groups`` (None: train all); returns the trained groups."""
        available = self.model.parameter_groups()
        if groups is None:
            return sorted(available)
        unknown = sorted(set(groups) - set(available))
        if unknown:
            raise ValueError(f"train_groups {unknown} unknown for this network; it has {sorted(available)}")
        keep = {id(p) for g in groups for p in available[g]}
        for ps in available.values():
            for p in ps:
                p.requires_grad_(id(p) in keep)
        logger.info("training groups %s; frozen %s", sorted(groups), sorted(set(available) - set(groups)))
        return sorted(groups)

    # -- map ---------------------------------------------------------------------------
    def refresh_map(self) -> None:
        """Copy the current network into the map network and drop cached map features."""
        self.map_net.load_state_dict(self.model.net.state_dict())
        self._cache.clear()

    def map_views(self, scene_index: int, names: Sequence[str]) -> List[MapView]:
        scene = self.scenes[scene_index]
        if any(scene.views[n].depth is None for n in names):  # real scene: triangulate its whole map once
            if (scene_index, None) not in self._cache:
                from .real import triangulated_map_views

                self._cache[(scene_index, None)] = True
                for n, mv in triangulated_map_views(self.map_net, scene).items():
                    self._cache[(scene_index, n)] = mv.to(self.device)
            return [self._cache[(scene_index, n)] for n in names]
        out = []
        for n in names:
            key = (scene_index, n)
            if key not in self._cache:
                self._cache[key] = map_view_features(self.map_net, scene.views[n])
            out.append(self._cache[key])
        return out

    # -- batches -----------------------------------------------------------------------
    def batch_items(self, step: int) -> List[Tuple[int, str]]:
        """This process's slice of the global batch of ``step`` (depends only on seed, step)."""
        rng = np.random.default_rng([int(self.conf["seed"]), int(step)])
        bs = int(self.conf["batch_size"])
        idx = rng.choice(len(self.items), size=bs, replace=len(self.items) < bs)
        local = bs // self.world
        return [self.items[i] for i in idx[self.rank * local:(self.rank + 1) * local]]

    def batch_loss(self, items: Sequence[Tuple[int, str]]) -> Tuple[torch.Tensor, Dict[str, float]]:
        """Mean loss over the given queries and averaged metrics."""
        self.model.train()
        views = [self.scenes[si].views[q] for si, q in items]
        shapes = {tuple(v.image.shape) for v in views}
        if len(shapes) == 1:
            outs = self.model.net(torch.stack([v.image for v in views]))
            per = [{k: outs[k][b] for k in ("keypoints", "descriptors", "scores", "valid")} for b in range(len(views))]
        else:
            per = []
            for v in views:
                o = self.model.net(v.image[None])
                per.append({k: o[k][0] for k in ("keypoints", "descriptors", "scores", "valid")})
        totals, sums, counts = [], {}, {}
        for (si, q), v, o in zip(items, views, per):
            val = o["valid"]
            refs = self.map_views(si, self.scenes[si].refs[q])
            losses, metrics = query_losses(self.model, o["keypoints"][val] + 0.5, o["descriptors"][val],
                                           o["scores"][val], v, refs, self.conf)
            if losses:  # a query whose only loss is the pose loss and whose localization failed adds nothing
                totals.append(self.model.weighting(losses))
            for k, x in list(losses.items()) + list(metrics.items()):
                sums[k] = sums.get(k, 0.0) + float(x.detach() if torch.is_tensor(x) else x)
                counts[k] = counts.get(k, 0) + 1
        if totals:
            loss = torch.stack(totals).mean()
        else:  # no query gave a loss: a zero that still reaches every parameter (zero gradients)
            loss = sum(p.sum() * 0.0 for p in self.model.parameters())
        m = {k: sums[k] / counts[k] for k in sums}
        for k in ("num_pose", "num_positives"):
            if k in sums:
                m[k] = sums[k]
        return loss, m

    # -- one optimisation step -----------------------------------------------------------
    def train_step(self) -> Dict[str, float]:
        t0 = time.time()
        if self.step % int(self.conf["map_refresh_every"]) == 0:
            self.refresh_map()
        self.optimizer.zero_grad(set_to_none=False)
        loss, metrics = self.batch_loss(self.batch_items(self.step))
        finite_loss = bool(torch.isfinite(loss))
        if finite_loss:
            loss.backward()
        params = [p for p in self.model.parameters() if p.requires_grad]
        for p in params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            if not finite_loss:
                p.grad.fill_(math.nan)
        D.average_gradients(params)
        grads_ok = all(bool(torch.isfinite(p.grad).all()) for p in params)
        grad_norm = float("nan")
        if grads_ok:
            clip = self.conf["optim"]["clip_grad_norm"]
            if clip:
                grad_norm = float(torch.nn.utils.clip_grad_norm_(params, float(clip)))
            else:
                grad_norm = float(torch.sqrt(sum((p.grad ** 2).sum() for p in params)))
            self.optimizer.step()
            skipped = 0
        else:
            self.skipped += 1
            skipped = 1
            logger.warning("step %d: non-finite loss or gradients, step skipped (%d skipped so far)",
                           self.step, self.skipped)
        self.optimizer.zero_grad(set_to_none=True)
        # every process joins this all-reduce, whatever its loss: one that skipped it would leave
        # the others waiting in the collective forever (a NaN anywhere makes the logged mean NaN)
        loss_mean = D.all_reduce_mean(loss.detach() if finite_loss else torch.full_like(loss.detach(), math.nan))
        row = {"step": self.step, "loss": float(loss_mean),
               "temperature": float(self.model.log_temperature.detach().exp()), "grad_norm": grad_norm,
               "skipped": skipped, "seconds": time.time() - t0}
        row.update({k: v for k, v in metrics.items() if k in LOG_FIELDS})
        self.step += 1
        return row

    # -- checkpoints ---------------------------------------------------------------------
    def state_dict(self) -> Dict:
        return {
            "step": self.step,
            "skipped": self.skipped,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "map_net": self.map_net.state_dict(),
            "conf": self.conf,
            "torch_rng": torch.get_rng_state(),
        }

    def load_state_dict(self, state: Dict) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.map_net.load_state_dict(state["map_net"])
        self._cache.clear()
        self.step = int(state["step"])
        self.skipped = int(state.get("skipped", 0))
        torch.set_rng_state(state["torch_rng"])

    def save_checkpoint(self, path: Optional[Path] = None) -> Optional[Path]:
        if self.rank != 0 or (path is None and self.output_dir is None):
            return None
        path = Path(path) if path is not None else self.output_dir / "checkpoint_last.pt"
        with atomic_path(path) as tmp:
            torch.save(self.state_dict(), tmp)
        save_weights(self.model.net, path.parent / "weights.pt")  # the extractor preset's layout
        if self.model.matcher is not None:  # the matcher preset's layout (weights: DIR/matcher.pt)
            with atomic_path(path.parent / "matcher.pt") as tmp:
                torch.save({k: v.detach().cpu() for k, v in self.model.matcher.state_dict().items()}, tmp)
        return path

    def load_checkpoint(self, path: Path) -> None:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"checkpoint not found: {path}")
        from ..weights import read_state_dict

        self.load_state_dict(read_state_dict(path, "finetune checkpoint"))  # weights_only: data, never code
        logger.info("resumed from %s at step %d", path, self.step)

    # -- loop ------------------------------------------------------------------------------
    def train(self, steps: Optional[int] = None, resume: bool = False) -> List[Dict[str, float]]:
        """Train until ``steps`` (default ``conf["steps"]``) total steps; returns the log rows.

        With ``resume`` and an existing ``output_dir/checkpoint_last.pt``, continue from it.
        """
        total = int(steps if steps is not None else self.conf["steps"])
        ckpt = self.output_dir / "checkpoint_last.pt" if self.output_dir is not None else None
        if resume and ckpt is not None and ckpt.is_file():
            self.load_checkpoint(ckpt)
        writer = self._open_log(append=resume and self.step > 0)
        rows = []
        bar = tqdm(range(self.step, total), desc="finetune", disable=self.rank != 0, leave=False)
        for _ in bar:
            row = self.train_step()
            rows.append(row)
            if writer is not None and (row["step"] % int(self.conf["log_every"]) == 0 or row["skipped"]):
                writer.writerow({k: row.get(k, "") for k in LOG_FIELDS})
                self._log_file.flush()
                if self._tb is not None:
                    for k, v in row.items():
                        if k != "step" and isinstance(v, (int, float)):
                            self._tb.add_scalar(k, v, row["step"])
            bar.set_postfix(loss=f"{row['loss']:.3f}", rot=f"{row.get('rot_deg', float('nan')):.2f}")
            every = int(self.conf["checkpoint_every"])
            if every and self.step % every == 0 and self.step < total:
                self.save_checkpoint()
        if self.output_dir is not None:
            self.save_checkpoint()
            if self.rank == 0:
                with atomic_open(self.output_dir / "config.yaml") as f:
                    yaml.safe_dump(self.conf, f, sort_keys=False)
        if writer is not None:
            self._log_file.close()
        if self._tb is not None:
            self._tb.close()
        D.barrier()
        return rows

    def _open_log(self, append: bool):
        if self.output_dir is None or self.rank != 0:
            return None
        self.output_dir.mkdir(parents=True, exist_ok=True)
        path = self.output_dir / "log.csv"
        append = append and path.is_file()
        if append:  # resumed: drop the rows logged after the checkpoint, they are trained again
            with open(path, newline="") as f:
                kept = [r for r in csv.DictReader(f) if r.get("step", "").isdigit() and int(r["step"]) < self.step]
            with atomic_open(path, newline="") as f:
                w = csv.DictWriter(f, fieldnames=LOG_FIELDS, extrasaction="ignore")
                w.writeheader()
                w.writerows(kept)
        self._log_file = open(path, "a" if append else "w", newline="")
        writer = csv.DictWriter(self._log_file, fieldnames=LOG_FIELDS)
        if not append:
            writer.writeheader()
        if self.conf["tensorboard"]:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(str(self.output_dir / "tb"))
            except ImportError:
                logger.warning("tensorboard is not installed; logging to log.csv only")
        return writer
