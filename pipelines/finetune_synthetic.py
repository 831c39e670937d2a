"""Evidence for issue 4: does adding the pose loss through BPnP beat descriptor-only training?

1. synthetic training scenes and HELD-OUT scenes (different generator seeds);
2. the starting network: descriptor(+score)-loss pre-training from random init ("initial");
3. from "initial", for each training seed, the same budget twice, same data, same batches:
   descriptor(+score) loss only ("descriptor_loss") and descriptor(+score) + pose loss through
   BPnP ("pose_loss") — the only difference is the added pose term;
4. each network evaluated on the held-out queries through the full hard path (mutual NN
   matches -> pycolmap LO-RANSAC -> BPnP refinement), plus the keypoint diagnostic: the pixel
   distance between GT-corresponding query keypoints and the exact projection of the matched
   map keypoint's surface point (``keypoints``) — the sub-pixel error the pose loss can reduce
   and the descriptor loss cannot target.

``OUTPUT/results.json``: ``{"initial": M, "descriptor_loss": M, "pose_loss": M, ...}``, each M
with ``median_rot_deg``, ``median_trans``, ``recall``, ``n_queries`` (errors pooled over all
training seeds' held-out queries; ``per_seed`` lists each seed's M) and ``keypoints``;
``improvement`` gives the relative reduction of the pose-loss model's median errors.

5. when the real data exists (``../shared/data/strecha_fountain_P11``, or ``--strecha-dir``),
   each network is also evaluated on Strecha fountain-P11, a real domain never trained on:
   leave-one-out over its 11 images at 800 px, map triangulated from the GT poses of the other
   10 with the network's features + mutual NN, query localized by the Localizer
   (:func:`hloc_bpnp.training.evaluate.evaluate_strecha`). Each M then has a ``strecha``
   entry with the same fields (``median_trans`` in metres; ``recall`` at 0.5 deg / 5 cm,
   ``recall_coarse`` at 2 deg / 25 cm); failures count as failures. ``--no-strecha`` skips it.

    python pipelines/finetune_synthetic.py --output outputs/finetune_synth --quick
"""
from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import torch

from hloc_bpnp.config import load_config, merge
from hloc_bpnp.io.json_io import write_json
from hloc_bpnp.training import Trainer, load_synthetic_scenes
from hloc_bpnp.training.evaluate import default_conf as eval_default, keypoint_errors, localization_errors, summarize
from hloc_bpnp.training.evaluate import evaluate_strecha, strecha_default_conf
from hloc_bpnp.training.trainer import default_conf

logger = logging.getLogger("finetune_synthetic")
STRECHA_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "strecha_fountain_P11"


def evaluate(net, scenes):
    rot, trans = localization_errors(net, scenes)
    return rot, trans, keypoint_errors(net, scenes)


def pool_strecha(runs):
    """One summary over several :func:`evaluate_strecha` results (queries of all seeds pooled)."""
    rot = [q["rot_deg"] for r in runs for q in r["per_query"].values()]
    trans = [q["trans"] for r in runs for q in r["per_query"].values()]
    th = runs[0]["thresholds"]
    conf = {"rot_threshold_deg": th["rot_deg"], "trans_threshold": th["trans_m"]}
    out = summarize(rot, trans, conf)
    ok = [(r <= th["coarse_rot_deg"]) and (t <= th["coarse_trans_m"]) for r, t in zip(rot, trans)]
    return out | {"recall_coarse": sum(ok) / max(len(ok), 1), "thresholds": th, "resize_max": runs[0]["resize_max"],
                  "seconds": sum(r["seconds"] for r in runs)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--output", type=Path, required=True)
    ap.add_argument("--quick", action="store_true", help="small budget (< ~10 min on 2 CPU cores)")
    ap.add_argument("--config", default=None, help="finetune preset (default: synthetic_quick / synthetic)")
    ap.add_argument("--pretrain-steps", type=int, default=None)
    ap.add_argument("--steps", type=int, default=None, help="fine-tuning steps per variant and seed")
    ap.add_argument("--train-seeds", type=int, nargs="+", default=None, help="fine-tuning seeds")
    ap.add_argument("--test-seeds", type=int, nargs="+", default=None, help="held-out scene seeds")
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    ap.add_argument("--strecha", action=argparse.BooleanOptionalAction, default=None,
                    help="also evaluate each network on Strecha fountain-P11 (default: when the data exists)")
    ap.add_argument("--strecha-dir", type=Path, default=STRECHA_DIR, help="Strecha scene folder")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s %(name)s %(levelname)s] %(message)s",
                        datefmt="%H:%M:%S")
    torch.set_num_threads(args.threads)
    t0 = time.time()
    raw = load_config("finetune", args.config or ("synthetic_quick" if args.quick else "synthetic"))
    ex = raw.pop("experiment", None) or {}  # this pipeline's budget; the rest is the Trainer's config
    conf = merge(default_conf, raw, strict=True)
    pre_steps = args.pretrain_steps or int(ex.get("pretrain_steps", 200))
    steps = args.steps or int(conf["steps"])
    train_seeds = args.train_seeds or list(ex.get("train_seeds", [0]))
    test_seeds = args.test_seeds or list(ex.get("test_seeds", [201, 202, 203]))
    out = args.output
    out.mkdir(parents=True, exist_ok=True)
    strecha_ok = (args.strecha_dir / "gt_dense_cameras").is_dir()
    do_strecha = strecha_ok if args.strecha is None else args.strecha
    if do_strecha and not strecha_ok:
        ap.error(f"--strecha: no Strecha scene at {args.strecha_dir} (needs gt_dense_cameras/ and images/)")

    def strecha(net, label):
        if not do_strecha:
            return None
        t = time.time()
        r = evaluate_strecha(net, args.strecha_dir)
        timings[f"strecha_{label}_s"] = time.time() - t
        return r

    dc = conf["data"]
    train = load_synthetic_scenes(dc["preset"], dc["seeds"], dc["num_refs"], dc["resize_max"], dc["overrides"], "train")
    test = load_synthetic_scenes(dc["preset"], test_seeds, dc["num_refs"], dc["resize_max"], dc["overrides"], "test")
    logger.info("scenes ready (%.0f s): train seeds %s, held-out seeds %s", time.time() - t0, dc["seeds"], test_seeds)

    desc_only = {"descriptor": True, "score": True, "pose": False}
    with_pose = {"descriptor": True, "score": True, "pose": True}
    timings = {}

    t = time.time()
    pre = Trainer(merge(conf, {"losses": desc_only, "steps": pre_steps}), train, out / "pretrain")
    pre.train()
    timings["pretrain_s"] = time.time() - t
    init_w = out / "pretrain" / "weights.pt"
    rot, trans, kp = evaluate(pre.model.net, test)
    results = {"initial": summarize(rot, trans, eval_default) | {"keypoints": kp}}
    st = strecha(pre.model.net, "initial")
    if st is not None:
        results["initial"]["strecha"] = st
    logger.info("initial: %s (%.0f s)", results["initial"], time.time() - t0)

    pooled = {"descriptor_loss": ([], [], []), "pose_loss": ([], [], [])}
    per_seed = {k: [] for k in pooled}
    for seed in train_seeds:
        for name, losses in (("descriptor_loss", desc_only), ("pose_loss", with_pose)):
            t = time.time()
            run_dir = out / f"{name}_seed{seed}"
            tr = Trainer(merge(conf, {"losses": losses, "steps": steps, "init_weights": str(init_w), "seed": seed}),
                         train, run_dir)
            rows = tr.train()
            timings[f"{name}_seed{seed}_train_s"] = time.time() - t
            rot, trans, kp = evaluate(tr.model.net, test)
            m = summarize(rot, trans, eval_default) | {"keypoints": kp, "seed": seed,
                                                       "pose_loss_queries": int(sum(r.get("num_pose", 0) for r in rows)),
                                                       "skipped_steps": tr.skipped}
            st = strecha(tr.model.net, f"{name}_seed{seed}")
            if st is not None:
                m["strecha"] = st
            per_seed[name].append(m)
            pooled[name][0].extend(rot)
            pooled[name][1].extend(trans)
            pooled[name][2].append(kp)
            logger.info("%s seed %d: %s (%.0f s)", name, seed, m, time.time() - t0)
    for name, (rot, trans, kps) in pooled.items():
        n = sum(k["n"] for k in kps)
        kp = {"median_px_mean_over_seeds": sum(k["median_px"] for k in kps) / len(kps),
              "mean_px": sum(k["mean_px"] * k["n"] for k in kps) / max(n, 1), "n": n}
        results[name] = summarize(rot, trans, eval_default) | {"keypoints": kp, "per_seed": per_seed[name],
                                                               "train_steps": steps}
        if do_strecha:
            results[name]["strecha"] = pool_strecha([m["strecha"] for m in per_seed[name]])

    def rel(a, b):  # relative reduction of b's error against a's
        return 1.0 - b / a if a > 0 else float("nan")

    P, Dl, I = results["pose_loss"], results["descriptor_loss"], results["initial"]
    results["improvement"] = {
        "rot_vs_descriptor_loss": rel(Dl["median_rot_deg"], P["median_rot_deg"]),
        "trans_vs_descriptor_loss": rel(Dl["median_trans"], P["median_trans"]),
        "rot_vs_initial": rel(I["median_rot_deg"], P["median_rot_deg"]),
        "trans_vs_initial": rel(I["median_trans"], P["median_trans"]),
        "per_seed_rot_vs_descriptor_loss": [rel(d["median_rot_deg"], p["median_rot_deg"])
                                            for d, p in zip(per_seed["descriptor_loss"], per_seed["pose_loss"])],
    }
    if do_strecha:
        PS, DS, IS = P["strecha"], Dl["strecha"], I["strecha"]
        results["improvement"] |= {
            "strecha_rot_vs_descriptor_loss": rel(DS["median_rot_deg"], PS["median_rot_deg"]),
            "strecha_trans_vs_descriptor_loss": rel(DS["median_trans"], PS["median_trans"]),
            "strecha_rot_vs_initial": rel(IS["median_rot_deg"], PS["median_rot_deg"]),
            "strecha_trans_vs_initial": rel(IS["median_trans"], PS["median_trans"]),
        }
    results["meta"] = {"train_scene_seeds": list(dc["seeds"]), "test_scene_seeds": test_seeds,
                       "train_seeds": train_seeds, "pretrain_steps": pre_steps, "finetune_steps": steps,
                       "batch_size": conf["batch_size"], "localization": conf["localization"],
                       "loss_weights": conf["losses"]["weights"], "seconds": time.time() - t0,
                       "timings_s": timings, "threads": args.threads,
                       "strecha": ({"scene": str(args.strecha_dir), "protocol": "leave-one-out, map from GT poses",
                                    "conf": {k: v for k, v in strecha_default_conf.items()}}
                                   if do_strecha else "not evaluated (--no-strecha or data absent)")}
    write_json(out / "results.json", results, indent=2)  # strict JSON (null, never Infinity), atomic
    logger.info("improvement: %s", results["improvement"])
    if do_strecha:
        for name in ("initial", "descriptor_loss", "pose_loss"):
            S = results[name]["strecha"]
            logger.info("strecha %s: median %.3f deg / %.3f m, recall %.2f, coarse %.2f, %d/%d failed", name,
                        S["median_rot_deg"], S["median_trans"], S["recall"], S["recall_coarse"],
                        S["n_failed"], S["n_queries"])
    logger.info("wrote %s (%.0f s)", out / "results.json", time.time() - t0)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
