#!/usr/bin/env python
"""Train a sub-pixel keypoint refiner on top of frozen pretrained XFeat (or ALIKED) on real posed
scenes, and evaluate it on scenes that never trained.

    python pipelines/finetune_real.py --train SCENE... --eval SCENE... --features xfeat --output DIR [--quick]
    python pipelines/finetune_real.py --eval SCENE... --features xfeat --no-train --output DIR
    # SfM maps as more posed training scenes (their poses and intrinsics taken as the truth)
    python pipelines/finetune_real.py --train SCENE... --train-map MODEL IMAGES [--train-map ...] --eval SCENE...

Scenes are Strecha folders (``images/`` + ``gt_dense_cameras/``) or Middlebury folders
(``*_par.txt``); ``--train-map`` takes a COLMAP model (or a saved ``hloc-bpnp map`` folder) and
its image folder, pairs from the model's covisibility. Training data (keypoints, patches, verified matches, leave-query-out 2D-3D
problems) is computed once per scene at the evaluation scale and cached
(``--cache-dir``, default ``~/.cache/hloc_bpnp/refiner_data``); then only the refiner trains
(:mod:`hloc_bpnp.training.refiner_train`). Validation / early stopping: the ``--val`` scenes,
or, without them, the last quarter of each training scene's images (pairs among them only;
pairs mixing both halves are dropped).

Variants: ``pretrained`` (no refiner), ``shipped`` (the refiner in the package, if present),
``refined`` (the shipped default losses trained in this run), with ``--ablation`` one
variant per loss combination, and one per ``--refiner LABEL=FEATURES_YAML`` (a refiner trained
earlier, its base features checked against the evaluated ones). Per evaluation scene and variant ``DIR/results.json`` has::

    {"sampson_px": S, "n_matches": N,
     "loo": {"n_localized", "n_queries", "median_rot_deg", "median_pos_cm"},
     "limited": {"median_rot_deg", "median_pos_cm"}}

* ``sampson_px``: median Sampson error (original px) under the known poses of ONE fixed match
  set chosen from the pretrained keypoints (mutual NN, inliers under the known geometry), the
  same matches for every variant with each variant's keypoint positions (the refiner moves
  keypoints only, so keypoint i is the same detection in every variant). A bootstrap 95%
  interval of the ratio to pretrained is printed (and stored as ``sampson_ratio_ci``).
* ``loo``: leave-one-out as ``pipelines/strecha.py`` (map re-extracted and re-triangulated
  from the other images' known poses with the variant's keypoints).
* ``limited``: the same folds, each localized query's pose re-solved from 50 of its inliers
  (200 seeded draws, paired across variants by the query keypoints; :mod:`hloc_bpnp.protocols.limited`).
* ``loo_unweighted`` / ``limited_unweighted`` (variants with a refiner): the same fold maps
  and matches, the BPnP refinement without the refiner's weights. The ``default`` localization
  preset weighs each correspondence by the refiner's keypoint uncertainty (``use_weights:
  auto``, 1 / sigma^2), so ``loo`` / ``limited`` of a refined variant are weighted. With a
  ``--loc-config`` that does not weigh, the extra entries are ``loo_weighted`` /
  ``limited_weighted`` (``use_weights: uncertainty``) instead.
* ``sampson_aligned_px`` (every variant, unless ``--no-aligned-sampson``): the same matches with
  positions per MATCH: side a at the variant's position, side b aligned to it by the
  localizer's photometric Lucas-Kanade (:mod:`hloc_bpnp.training.match_alignment`), what a query
  keypoint aligned to a fixed map observation gets. ``sampson_aligned_ratio_ci``: its bootstrap
  95% interval of the ratio to the pretrained keypoints' plain ``sampson_px``. A refiner inside
  the extractor gives one position per keypoint; on the temple that stops near x0.75 whatever
  it trains on (README), and this is the measure of what goes past it.
* ``loo_aligned`` / ``limited_aligned`` (every variant): the same fold maps and matches, each
  localized query's inlier keypoints aligned to the map's observations of their 3D points
  (``localization.patch_alignment``), then BPnP again; ``limited`` draws from the aligned
  keypoints.

``--adapt-folds K`` adds the variant ``adapted``: what ``hloc-bpnp finetune --map`` gives a
user on their own map. Each eval scene's images go into K interleaved folds; each fold is
evaluated with a refiner trained on the OTHER folds' images only (no evaluated image ever
trains its refiner): Sampson on the matches among the fold's images (``sampson_px``, with
``sampson_px_pretrained_same_matches`` and the paired ratio), loo / limited of the fold's
images as queries. Its training preset is ``--adapt-config`` (default ``refiner_xfeat_map``,
the one ``finetune --map`` uses); ``--adapt-init shipped`` (or a ``features.yaml`` of a refiner
trained earlier, on other scenes) starts each fold's refiner from that one instead of an
untrained one.
"""
import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import Dict

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hloc_bpnp.config import load_config, merge  # noqa: E402
from hloc_bpnp.io.json_io import write_json  # noqa: E402

logger = logging.getLogger("finetune_real")

#: loss ablation: variant -> overrides of the training config
ABLATIONS = {
    "sampson": {"losses": {"sampson": True, "nll": False, "pose": False}},
    "nll": {"losses": {"sampson": False, "nll": True, "pose": False}},
    "sampson_nll": {"losses": {"sampson": True, "nll": True, "pose": False}, "bpnp": {"offsets_grad": True}},
    "sampson_nll_weights": {"losses": {"sampson": True, "nll": True, "pose": False}, "bpnp": {"offsets_grad": False}},
    "sampson_pose": {"losses": {"sampson": True, "nll": False, "pose": True}},
    "reproj": {"losses": {"sampson": False, "nll": False, "pose": False, "reproj": True}, "select": "reproj"},
    "sampson_reproj_nll": {"losses": {"sampson": True, "nll": True, "pose": False, "reproj": True}, "select": "both"},
}


def split_validation(scenes, fraction=0.25):
    """Image-disjoint split of each scene: (train part, validation part)."""
    tr, va = [], []
    for s in scenes:
        names = list(s.image_names)
        k = max(2, int(round(len(names) * fraction)))
        tr.append(s.subset_images(names[:-k]))
        va.append(s.subset_images(names[-k:]))
    return tr, va


def sampson_per_variant(rs, refiners):
    """Sampson errors (original px) of ``rs``'s fixed matches for each {label: refiner or None}."""
    from hloc_bpnp.training.refiner_train import refined_match_errors

    out = {}
    sel = torch.arange(rs.matches.shape[0])
    for label, ref in refiners.items():
        errs = []
        with torch.no_grad():
            for i in range(0, sel.numel(), 16384):
                errs.append(refined_match_errors(ref, rs, sel[i:i + 16384]))
        out[label] = torch.cat(errs).numpy()
    return out


def all_offsets(rs, ref):
    """(N_keypoints, 2) offsets (network px) of every keypoint of ``rs`` (None: zeros)."""
    from hloc_bpnp.training.refiner_train import refiner_outputs

    if ref is None:
        return torch.zeros(rs.base.shape[0], 2, dtype=torch.float64)
    with torch.no_grad():
        return refiner_outputs(ref, rs, torch.arange(rs.base.shape[0]))[0]


def bootstrap_ratio(e, e0, n=1000, seed=0):
    """95% bootstrap interval of median(e) / median(e0) over matches (paired resampling)."""
    rng = np.random.default_rng(seed)
    M = e.shape[0]
    r = []
    for _ in range(n):
        i = rng.integers(0, M, M)
        r.append(np.median(e[i]) / np.median(e0[i]))
    return [float(np.percentile(r, 2.5)), float(np.percentile(r, 97.5))]


def noisy_features(scene, fconf, sigma, seed=0):
    """Pretrained features of every image with Gaussian noise of ``sigma`` NETWORK pixels added
    to the keypoints (the sensitivity check: does the metric see keypoint precision?)."""
    from hloc_bpnp.features import build_extractor

    ext = build_extractor(merge(fconf, {"refiner": None}))
    g = torch.Generator().manual_seed(seed)
    out = {}
    for n in scene.names:
        f = dict(ext.extract_path(Path(scene.image_dir) / n))
        w, h = f["image_size"].tolist()
        W, H = ext.resized_size(w, h)
        s = torch.tensor([w / W, h / H])
        f["keypoints"] = f["keypoints"] + sigma * s * torch.randn(f["keypoints"].shape, generator=g)
        out[n] = f
    return out


def loo_variants(lconf, has_refiner):
    """The localization variants :func:`loo_runs` evaluates on the same fold maps for a
    localization conf ``lconf`` (a preset's dict): ``({label: conf overrides}, {label: whether its
    BPnP weighs by the refiner's uncertainties})``. ``loo`` is the preset itself; with a refiner,
    ``unweighted`` (``use_weights: false``) where the preset weighs (``auto``) or ``weighted``
    (``uncertainty``) where it does not; ``aligned`` adds the patch alignment."""
    from hloc_bpnp.localization.localizer import weight_mode

    mode = (lconf.get("refinement") or {}).get("use_weights", False)
    plain = bool(weight_mode({"refinement": {"use_weights": mode}}, has_refiner))
    variants = {"loo": {"refinement": {"method": "bpnp"}}}
    uses = {"loo": plain}
    if has_refiner:
        other = "unweighted" if plain else "weighted"
        variants[other] = {"refinement": {"method": "bpnp", "use_weights": False if plain else "uncertainty"}}
        uses[other] = not plain
    # the query's inlier keypoints aligned to the map's observations (localization.patch_alignment),
    # then BPnP again
    variants["aligned"] = {"refinement": {"method": "bpnp"}, "patch_alignment": {"enabled": True}}
    uses["aligned"] = plain
    return variants, uses


def loo_runs(scene, fconf, mapping, loc_config, progress=False, features=None, queries=None):
    """Leave-one-out of ``queries`` (default: all images) with features ``fconf``:
    ``{label: (results {query: LocalizationResult}, LimitedCollector)}`` for the labels of
    :func:`loo_variants` (``loo``: BPnP refinement as ``loc_config``), all on the same fold maps
    and matches."""
    from hloc_bpnp.protocols.leave_one_out import leave_one_out
    from hloc_bpnp.protocols.limited import LimitedCollector

    mconf = merge(load_config("mapping", mapping), {"features": fconf})
    lconf = load_config("localization", loc_config) if isinstance(loc_config, str) else dict(loc_config or {})
    variants, uses = loo_variants(lconf, bool(fconf.get("refiner")))
    # the limited poses weigh correspondences as each variant's refinement does
    lims = {k: LimitedCollector(scene, k, use_weights=uses[k]) for k in variants}

    def hook(query, fold_map, results):
        for c in lims.values():
            c(query, fold_map, results)

    res, _ = leave_one_out(scene, None, mconf, loc_config, loc_variants=variants, progress=progress,
                           fold_hook=hook, features=features, queries=queries)
    return {k: (res[k], lims[k]) for k in variants}


def summarize_loo(scene, results, limited):
    """(loo, limited) summaries of merged :func:`loo_runs` outputs of one label (``limited``: a
    list of collectors)."""
    from hloc_bpnp.protocols.limited import summarize_limited
    from hloc_bpnp.protocols.summary import summarize

    s = summarize(results, {n: scene[n].pose for n in results}, scale_to_cm=100.0)["summary"]
    loo = {k: s.get(k) for k in ("n_localized", "n_queries", "median_rot_deg", "median_pos_cm")}
    ls = summarize_limited(limited)
    return loo, {k: ls[k] for k in ("median_rot_deg", "median_pos_cm", "n_queries")}


def loo_metrics(scene, runs):
    """``{label: (results, [collectors])}`` -> ``loo``/``limited`` (+ ``loo_LABEL`` /
    ``limited_LABEL`` for the other labels: ``weighted`` or ``unweighted``, ``aligned``) entries
    of a variant's metrics."""
    m = {}
    for label, (res, lims) in runs.items():
        suffix = "" if label == "loo" else f"_{label}"
        m["loo" + suffix], m["limited" + suffix] = summarize_loo(scene, res, lims)
    return m


def scene_images(scene):
    """Image files of a posed scene (for the homography term: used without their poses)."""
    return [Path(scene.image_dir) / n for n in scene.names]


def interleaved_folds(names, k):
    """``k`` folds of the sorted names, image i in fold i mod k (each fold spread over the scene)."""
    names = sorted(names)
    return [names[i::k] for i in range(k)]


def adapted_variant(d, scene, fconf, tconf, dconf, S, k, args, need_pose, scales=("preset",), init=None):
    """Map adaptation, as a user of ``hloc-bpnp finetune --map`` would run it: the eval scene's
    images in ``k`` interleaved folds; per fold a refiner trained on the OTHER folds' images only
    (their matches and leave-one-out 2D-3D problems), then the fold's images evaluated with it:
    Sampson on the matches among the fold's images (paired with pretrained on the same
    matches), loo / limited of the fold's images as queries (maps from all the other images,
    extracted with the fold's refiner). No evaluated image ever trains its refiner."""
    from hloc_bpnp.training.homography_data import homography_training_sets as homography_sets
    from hloc_bpnp.training.match_alignment import aligned_match_errors, scene_gray_images
    from hloc_bpnp.training.refiner_data import cached_refiner_scene, cached_refiner_scenes
    from hloc_bpnp.training.refiner_train import save_refiner, train_refiner, uses_homographies

    tconf = dict(tconf)
    hconf = tconf.pop("homography_data", None) or {}
    folds = interleaved_folds(scene.names, k)
    full = cached_refiner_scene(d, fconf, S, args.cache_dir, scene=scene, pose_problems=False)
    e_ad, e_pre, e_al, runs, hist, t_train = [], [], [], {}, [], 0.0
    images = None
    for i, fold in enumerate(folds):
        others = [n for n in scene.names if n not in set(fold)]
        t0 = time.time()
        rs = cached_refiner_scenes(d, fconf, S, scales, args.cache_dir, scene=scene, images=others,
                                   pose_problems=need_pose, **dconf)
        tr, va = split_validation(rs)
        homog = ([], [])
        if uses_homographies(tconf):  # the training folds' own images only
            homog = homography_sets([Path(scene.image_dir) / n for n in others], fconf, S, hconf, args.cache_dir,
                                    f"{d.name}_fold{i}")
        out = train_refiner(tr, va, tconf, progress=False, homographies=homog[0], val_homographies=homog[1],
                            init=init)
        t_train += time.time() - t0
        path = args.output / f"refiner_adapted_{d.name}_fold{i}.pt"
        save_refiner(out["refiner"], path)
        hist.append({"fold": fold, "best_step": out["best_step"], "history": out["history"]})
        sub = full.subset_images(fold)
        if sub.matches.shape[0]:
            e = sampson_per_variant(sub, {"pre": None, "ad": out["refiner"]})
            e_ad.append(e["ad"])
            e_pre.append(e["pre"])
            if not args.no_aligned_sampson:
                images = images if images is not None else scene_gray_images(full, scene.image_dir)
                e_al.append(aligned_match_errors(sub, images, all_offsets(sub, out["refiner"]))[0].numpy())
        if not args.no_loo:
            vconf = merge(fconf, {"refiner": str(path), "refiner_conf": dict(out["refiner"].conf)})
            for label, (res, lim) in loo_runs(scene, vconf, args.features, args.loc_config, queries=fold).items():
                runs.setdefault(label, ({}, []))
                runs[label][0].update(res)
                runs[label][1].append(lim)
        logger.info("%s adapted fold %d/%d: best step %d", d.name, i + 1, k, out["best_step"])
    m = {"n_folds": k, "train_seconds": t_train, "training": hist}
    if e_ad:
        ea, ep = np.concatenate(e_ad), np.concatenate(e_pre)
        m.update({"sampson_px": float(np.median(ea)), "n_matches": int(ea.shape[0]),
                  "sampson_px_pretrained_same_matches": float(np.median(ep)),
                  "sampson_ratio_ci": bootstrap_ratio(ea, ep)})
    if e_al:
        el = np.concatenate(e_al)
        m.update({"sampson_aligned_px": float(np.median(el)), "sampson_aligned_ratio_ci": bootstrap_ratio(el, ep)})
    if runs:
        m.update(loo_metrics(scene, runs))
    return m


def given_refiners(specs, fconf: Dict, taken) -> Dict[str, Dict]:
    """{label: features conf} of ``--refiner LABEL=FEATURES_YAML`` arguments. The file must name a
    refiner and match the evaluated base features (``fconf``) in every other key: a refiner runs
    on the positions it was trained on (e.g. ``subpixel_in_cell``), so a mismatch is an error."""
    out = {}
    for spec in specs:
        label, sep, path = spec.partition("=")
        if not sep or not label or not path:
            raise SystemExit(f"--refiner {spec!r}: expected LABEL=FEATURES_YAML")
        if label in taken or label in out or label.startswith(("noise_", "loss_")):
            raise SystemExit(f"--refiner {spec!r}: the label {label!r} is taken (or names another kind of variant)")
        out[label] = checked_refiner(path, fconf, f"--refiner {spec!r}")
    return out


def checked_refiner(path, fconf: Dict, option: str) -> Dict:
    """The features conf of a refiner trained earlier (:func:`hloc_bpnp.features.refiner.refiner_of_features`:
    it must run on ``fconf``'s base features); any problem ends the run naming ``option``."""
    from hloc_bpnp.features.refiner import refiner_of_features

    try:
        return refiner_of_features(Path(path), fconf, source=option)
    except (ValueError, FileNotFoundError) as e:
        raise SystemExit(str(e))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--train", type=Path, nargs="*", default=[], help="training scene folders")
    p.add_argument("--eval", type=Path, nargs="+", required=True, help="evaluation scene folders (never train)")
    p.add_argument("--val", type=Path, nargs="*", default=[], help="validation scene folders (early stopping)")
    p.add_argument("--train-map", type=Path, nargs=2, action="append", default=[], metavar=("MODEL", "IMAGES"),
                   help="a COLMAP model (e.g. an SfM map from hloc-bpnp map) and its image folder as one more "
                        "posed training scene: its poses and intrinsics are the truth, pairs from covisibility "
                        "(repeatable)")
    p.add_argument("--features", choices=["xfeat", "aliked"], default="xfeat",
                   help="frozen detector the refiner trains on (feature and mapping preset of that name)")
    p.add_argument("--output", type=Path, required=True)
    p.add_argument("--quick", action="store_true", help="small budget (<= 20 min here for 2 + 1 scenes)")
    p.add_argument("--no-train", action="store_true", help="evaluate pretrained, shipped and --refiner files only")
    p.add_argument("--refiner", action="append", default=[], metavar="LABEL=FEATURES_YAML",
                   help="also evaluate a refiner trained earlier, as variant LABEL: the features.yaml that "
                        "finetune_real or `hloc-bpnp finetune` wrote beside it (repeatable)")
    p.add_argument("--ablation", action="store_true", help="also train one variant per loss combination")
    p.add_argument("--config", default=None, help="refiner training preset (default refiner_<features>[_quick])")
    p.add_argument("--loc-config", default="default", help="localization preset for the evaluation")
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--no-loo", action="store_true", help="skip loo/limited (Sampson only)")
    p.add_argument("--no-aligned-sampson", action="store_true",
                   help="skip sampson_aligned_px (positions per match: one side aligned to the other)")
    p.add_argument("--cache-dir", type=Path, default=None)
    p.add_argument("--sensitivity", type=float, nargs="*", default=[],
                   help="also evaluate pretrained keypoints with this Gaussian noise (network px)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--adapt-folds", type=int, default=0,
                   help="also the 'adapted' variant: per eval scene, K interleaved folds, each evaluated with a "
                        "refiner trained on the other folds' images only (hloc-bpnp finetune --map on a user's map)")
    p.add_argument("--homography-images", type=Path, nargs="*", default=[],
                   help="more UNPOSED images (files or folders, searched recursively) for the homography term of "
                        "presets that use it, besides the training scenes' own images; never an eval scene's")
    p.add_argument("--homography-every", type=int, nargs="+", default=[1],
                   help="every K-th image of each --homography-images folder: one K for all, or one per source")
    p.add_argument("--adapt-config", default=None,
                   help="training preset of the 'adapted' variant (default refiner_<features>_map, as finetune --map)")
    p.add_argument("--adapt-init", default="zero", metavar="zero|shipped|FEATURES_YAML",
                   help="what the 'adapted' refiners start from: zero (an untrained refiner), the shipped one, or "
                        "a refiner trained earlier (the features.yaml beside it)")
    args = p.parse_args(argv)
    if not args.no_train and not args.train and not args.train_map:
        raise SystemExit("--train SCENE... (or --train-map MODEL IMAGES) is required unless --no-train")
    if args.adapt_folds == 1 or args.adapt_folds < 0:
        raise SystemExit("--adapt-folds needs K >= 2 (each fold is evaluated with a refiner trained on the others)")
    train_dirs = [d.resolve() for d in args.train]
    eval_dirs = [d.resolve() for d in args.eval]
    val_dirs = [d.resolve() for d in args.val]
    eval_names = {d.name for d in eval_dirs}
    overlap = ({d.name for d in train_dirs} | {d.name for d in val_dirs}) & eval_names
    if overlap or (set(train_dirs) | set(val_dirs)) & set(eval_dirs):
        raise SystemExit(f"evaluation scenes must not train nor validate: {sorted(overlap)} given to --train/--val "
                         f"and --eval")
    map_dirs = [(m.resolve(), i.resolve()) for m, i in args.train_map]
    map_leaks = [str(i) for _, i in map_dirs for d in eval_dirs if i == d or d in i.parents or i in d.parents]
    if map_leaks:
        raise SystemExit(f"--train-map: the image folder must not hold evaluation images: {map_leaks[:3]}")
    if map_dirs and args.no_train:
        raise SystemExit("--train-map is a training scene: not with --no-train")
    leaks = [str(h) for h in args.homography_images for d in eval_dirs
             if h.resolve() == d or d in h.resolve().parents or h.resolve() in d.parents]
    if leaks:
        raise SystemExit(f"--homography-images must not hold evaluation images: {leaks[:3]}")
    every = args.homography_every * (len(args.homography_images) if len(args.homography_every) == 1 else 1)
    if args.homography_images and len(every) != len(args.homography_images):
        raise SystemExit(f"--homography-every: give one K or one per --homography-images source "
                         f"({len(args.homography_images)}), not {len(args.homography_every)}")
    from hloc_bpnp.cli import configure_logging

    configure_logging(False)
    for name in ("hloc_bpnp.mapping", "hloc_bpnp.retrieval", "hloc_bpnp.localization", "hloc_bpnp.io"):
        logging.getLogger(name).setLevel(logging.WARNING)
    torch.set_num_threads(args.threads)
    from hloc_bpnp.features.refiner import KeypointRefiner, load_refiner
    from hloc_bpnp.training.real import load_map_scene, load_real_scene
    from hloc_bpnp.training.homography_data import image_list, pop_homography_conf
    from hloc_bpnp.training.refiner_data import cached_refiner_scene, cached_refiner_scenes, data_scales
    from hloc_bpnp.training.match_alignment import aligned_match_errors, scene_gray_images
    from hloc_bpnp.training.homography_data import homography_training_sets as homography_sets
    from hloc_bpnp.training.refiner_train import (needs_pose_problems, refiner_preset, save_refiner, train_refiner,
                                                  uses_homographies)
    from hloc_bpnp.weights import bundled_weights

    fpreset = args.features
    fconf = load_config("features", fpreset)
    args.output.mkdir(parents=True, exist_ok=True)
    results = {"variants": {}, "train_seconds": 0.0,
               "config": {"features": fpreset, "train": [str(d) for d in train_dirs],
                          "eval": [str(d) for d in eval_dirs], "val": [str(d) for d in val_dirs],
                          "train_maps": [[str(m), str(i)] for m, i in map_dirs],
                          "loc_config": args.loc_config}}
    refiners = {"pretrained": (None, None)}  # label -> (refiner module, weights path)
    try:
        shipped_conf = load_config("features", f"{fpreset}_refined")
        sp = bundled_weights(str(shipped_conf["refiner"]))
        refiners["shipped"] = (load_refiner(sp, shipped_conf.get("refiner_conf") or None), sp)
    except (FileNotFoundError, KeyError) as e:
        logger.warning("no shipped refiner: %s", e)
    for label, conf in given_refiners(args.refiner, fconf, set(refiners) | {"refined", "adapted"}).items():
        refiners[label] = (load_refiner(conf["refiner"], conf.get("refiner_conf") or None), Path(conf["refiner"]))
    histories = {}

    def training_preset(preset):
        """(training config without its data section, data options, data scales, patch size)."""
        c = load_config("finetune", preset)
        if args.steps is not None:
            c["steps"] = args.steps
        d = dict(c.pop("data", {}))
        scales = data_scales(d)  # resize_max values the training data is extracted at
        c["homography_data"] = pop_homography_conf(d)
        return c, d, scales, int(merge(KeypointRefiner.default_conf, c.get("refiner", {}))["patch_size"])

    if not args.no_train:
        preset = args.config or refiner_preset(fpreset, "_quick" if args.quick else "")
        results["config"]["finetune"] = preset
        tconf, dconf, scales, S = training_preset(preset)
        need_pose = needs_pose_problems(tconf) or bool(args.ablation)
    if args.adapt_folds:
        apreset = args.adapt_config or refiner_preset(fpreset, "_map")
        results["config"]["adapt_finetune"] = apreset
        aconf, adconf, ascales, aS = training_preset(apreset)
        aconf["homography_data"] = aconf["homography_data"] or {}
        results["config"]["adapt_init"] = args.adapt_init
        adapt_init = None
        if args.adapt_init == "shipped":
            if "shipped" not in refiners:
                raise SystemExit("--adapt-init shipped: the package has no shipped refiner for these features")
            adapt_init = refiners["shipped"][0]
        elif args.adapt_init != "zero":
            ic = checked_refiner(args.adapt_init, fconf, "--adapt-init")
            adapt_init = load_refiner(ic["refiner"], ic.get("refiner_conf") or None)
    if not args.no_train:
        t0 = time.time()
        train, val = [], []
        val_pose = tconf.get("select", "sampson") != "sampson"
        for d in train_dirs:
            tr = cached_refiner_scenes(d, fconf, S, scales, args.cache_dir, pose_problems=need_pose, **dconf)
            if val_dirs:
                train += tr
            else:
                tr, va = split_validation(tr)
                train += tr
                val += va
        map_scenes = []
        for model, images in map_dirs:  # SfM maps: poses and intrinsics of the model are the truth
            mscene, mpairs = load_map_scene(model, images)
            map_scenes.append(mscene)
            tr = cached_refiner_scenes(model, fconf, S, scales, args.cache_dir, scene=mscene, pairs=mpairs,
                                       pose_problems=need_pose, max_pose_problems=40, **dconf)
            tr, va = split_validation(tr)
            train += tr
            if not val_dirs:
                val += va
            logger.info("training map %s: %d images, %d pairs", model, len(mscene),
                        len(tr[0].pairs) if tr else 0)
        for d in val_dirs:
            val += cached_refiner_scenes(d, fconf, S, scales, args.cache_dir, pose_problems=val_pose, **dconf)
        results["config"]["train_resize_max"] = scales
        hconf = tconf.pop("homography_data")
        homog = ([], [])
        if uses_homographies(tconf):
            imgs = [p for d in train_dirs + val_dirs for p in scene_images(load_real_scene(d))]
            imgs += [p for ms in map_scenes for p in scene_images(ms)]
            for src, k in zip(args.homography_images, every):
                imgs += image_list([src], every=k)
            # an image given twice (a training map's image also in --homography-images) is warped once
            imgs = list({p.resolve(): p for p in imgs}.values())
            homog = homography_sets(imgs, fconf, S, hconf, args.cache_dir, "finetune_real")
            results["config"]["homography_images"] = {"n": len(imgs), "extra": [str(h) for h in args.homography_images],
                                                      "every": args.homography_every}
        results["data_seconds"] = time.time() - t0
        runs = {"refined": {}}
        if args.ablation:  # one run per other loss combination (the default's is "refined")
            def key(c):
                c = merge(tconf, c)
                return json.dumps([c["losses"], c.get("bpnp", {}).get("offsets_grad", True)], sort_keys=True)
            runs.update({f"loss_{k}": v for k, v in ABLATIONS.items() if key(v) != key({})})
        for label, override in runs.items():
            c = merge(tconf, override)
            out = train_refiner(train, val, c, progress=False, homographies=homog[0], val_homographies=homog[1])
            results["train_seconds"] += out["seconds"] + (results["data_seconds"] if label == "refined" else 0.0)
            path = args.output / ("refiner.pt" if label == "refined" else f"refiner_{label}.pt")
            save_refiner(out["refiner"], path)
            refiners[label] = (out["refiner"], path)
            histories[label] = {"history": out["history"], "best_step": out["best_step"], "seconds": out["seconds"],
                                "losses": c["losses"]}
            logger.info("%s: best step %d, %.0f s", label, out["best_step"], out["seconds"])
        import yaml

        feat_yaml = merge(fconf, {"refiner": str((args.output / "refiner.pt").resolve()),
                                  "refiner_conf": dict(refiners["refined"][0].conf)})
        feat_yaml.pop("preset", None)
        (args.output / "features.yaml").write_text(yaml.safe_dump(feat_yaml, sort_keys=False))
        results["training"] = histories
    for d in eval_dirs:
        scene = load_real_scene(d)
        sizes = {(r.patch_size if r is not None else S0) for r, _ in refiners.values()
                 for S0 in [KeypointRefiner.default_conf["patch_size"]]}
        errs, aligned = {}, {}
        n_matches = None
        images = None
        for S in sorted(sizes):
            rs = cached_refiner_scene(d, fconf, S, args.cache_dir, scene=scene, pose_problems=False)
            n_matches = int(rs.matches.shape[0])
            these = {k: r for k, (r, _) in refiners.items() if (r.patch_size if r is not None else S) == S}
            errs.update(sampson_per_variant(rs, these))
            if not args.no_aligned_sampson:
                images = images if images is not None else scene_gray_images(rs, scene.image_dir)
                for k, r in these.items():
                    aligned[k] = aligned_match_errors(rs, images, all_offsets(rs, r))[0].numpy()
        labels = list(refiners)
        for sigma in args.sensitivity:
            g = np.random.default_rng(0)
            label = f"noise_{sigma:g}px"
            rs = cached_refiner_scene(d, fconf, KeypointRefiner.default_conf["patch_size"], args.cache_dir,
                                      scene=scene, pose_problems=False)
            from hloc_bpnp.training.refiner_train import match_errors

            noise = torch.from_numpy(g.normal(0, sigma, (rs.base.shape[0], 2)))
            m_ = rs.matches
            errs[label] = match_errors(rs, torch.arange(m_.shape[0]), {0: noise[m_[:, 0]], 1: noise[m_[:, 1]]}).numpy()
            if not args.no_aligned_sampson:
                images = images if images is not None else scene_gray_images(rs, scene.image_dir)
                aligned[label] = aligned_match_errors(rs, images, noise)[0].numpy()
            labels.append(label)
        for label in labels:
            ref, path = refiners.get(label, (None, None))
            m = {"sampson_px": float(np.median(errs[label])), "n_matches": n_matches}
            if label != "pretrained":
                m["sampson_ratio_ci"] = bootstrap_ratio(errs[label], errs["pretrained"])
            if label in aligned:  # positions per match; the ratio is to the pretrained keypoints' own error
                m["sampson_aligned_px"] = float(np.median(aligned[label]))
                m["sampson_aligned_ratio_ci"] = bootstrap_ratio(aligned[label], errs["pretrained"])
            if not args.no_loo:
                vconf = merge(fconf, {"refiner": None if path is None else str(path),
                                      "refiner_conf": dict(KeypointRefiner.default_conf if ref is None else ref.conf)})
                t = time.time()
                feats = None
                if label.startswith("noise_"):
                    feats = noisy_features(scene, fconf, float(label[6:-2]))
                runs = loo_runs(scene, vconf, fpreset, args.loc_config, features=feats)
                m.update(loo_metrics(scene, {k: (r, [c]) for k, (r, c) in runs.items()}))
                logger.info("%s %s: %s (%.0f s)", d.name, label,
                            {k: v for k, v in m.items() if k.startswith(("loo", "limited"))}, time.time() - t)
            results["variants"].setdefault(label, {})[d.name] = m
            write_json(args.output / "results.json", results)
        if args.adapt_folds:
            t = time.time()
            m = adapted_variant(d, scene, fconf, aconf, adconf, aS, args.adapt_folds, args, needs_pose_problems(aconf),
                                ascales, init=adapt_init)
            histories.setdefault("adapted", {})[d.name] = m.pop("training")
            results["train_seconds"] += m["train_seconds"]
            results["variants"].setdefault("adapted", {})[d.name] = m
            results["training"] = histories
            logger.info("%s adapted: %s (%.0f s)", d.name, {k: v for k, v in m.items() if k != "train_seconds"},
                        time.time() - t)
            write_json(args.output / "results.json", results)
    f = lambda x: "   n/a" if x is None else f"{x:8.4f}"  # noqa: E731
    print(f"\n{'variant':20s} {'scene':32s} {'sampson px':>10s} {'ratio 95% CI':>15s} {'loc':>6s} "
          f"{'rot deg':>8s} {'pos cm':>8s} | limited {'rot deg':>8s} {'pos cm':>8s}")
    for label, per in results["variants"].items():
        for scene_name, m in per.items():
            for suffix in ("", "_weighted", "_unweighted", "_aligned"):
                if suffix and f"loo{suffix}" not in m and f"sampson{suffix}_px" not in m:
                    continue
                sp = m.get(f"sampson{suffix}_px", m.get("sampson_px", float("nan")))
                ci = m.get(f"sampson{suffix}_ratio_ci", m.get("sampson_ratio_ci"))
                cis = f"[{ci[0]:.3f},{ci[1]:.3f}]" if ci else ""
                loo, lim = m.get(f"loo{suffix}") or {}, m.get(f"limited{suffix}") or {}
                loc = f"{loo.get('n_localized', 0)}/{loo.get('n_queries', 0)}" if loo else ""
                name = label + {"": "", "_weighted": " +weights", "_unweighted": " -weights",
                                "_aligned": " +aligned"}[suffix]
                print(f"{name:20s} {scene_name:32s} {sp:10.4f} {cis:>15s} {loc:>6s} "
                      f"{f(loo.get('median_rot_deg'))} {f(loo.get('median_pos_cm'))} | limited "
                      f"{f(lim.get('median_rot_deg'))} {f(lim.get('median_pos_cm'))}")
    print(f"train seconds: {results['train_seconds']:.0f}")
    write_json(args.output / "results.json", results)
    return results


if __name__ == "__main__":
    main()
