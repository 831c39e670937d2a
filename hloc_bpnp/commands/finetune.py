"""``hloc-bpnp finetune``: train a feature network end-to-end against pose error (BPnP).

Two ways to give training data:

* ``--scene DIR [DIR ...]``: real posed scenes (Strecha layout: ``images/`` +
  ``gt_dense_cameras/``; or a Middlebury folder). Map points are triangulated with the known
  poses; no depth needed. ``--features xfeat`` (default) or ``aliked`` fine-tunes the
  pretrained network (preset ``configs/finetune/real_<features>.yaml``); ``trainable`` trains
  the small network.
* ``--config PRESET`` alone: the preset's ``data`` section (e.g. synthetic scenes).
* ``--map MODEL --images DIR``: a user's own COLMAP model (poses and intrinsics of its images
  are the truth; a saved ``hloc-bpnp map`` folder reads its ``sfm/`` model). Trains the
  sub-pixel keypoint REFINER of a frozen pretrained XFeat (or ALIKED with ``--features aliked``)
  (``configs/finetune/refiner_xfeat_map.yaml``): pairs from the model's covisibility, matches
  verified against the known poses, each training query's 3D points triangulated WITHOUT that
  query; the last quarter of the images (name order) validates. Writes ``refiner.pt``,
  ``history.json`` and ``features.yaml`` (the detector with that refiner:
  ``hloc-bpnp map ... --features OUT/features.yaml``).

Writes ``log.csv``, ``checkpoint_last.pt``, ``weights.pt``, ``config.yaml`` and ``features.yaml``
(the extractor preset running the fine-tuned weights: ``--features OUT/features.yaml``) into ``--output``.
``weights.pt`` is what the extractor preset loads: e.g. ``build_extractor("xfeat",
weights="OUT/weights.pt")`` or ``features: {model: xfeat, weights: OUT/weights.pt}`` in a
mapping preset. ``--resume`` continues from the checkpoint there.
Multi-process: ``torchrun --nproc_per_node N -m hloc_bpnp.cli finetune ...`` (gloo on CPU).
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

logger = logging.getLogger("hloc_bpnp.finetune")


def register(subparsers, help_text: str) -> None:
    p = subparsers.add_parser("finetune", help=help_text, description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=None,
                   help="preset in configs/finetune/ or a YAML path (default: real_<features> with --scene, "
                        "else synthetic_quick)")
    p.add_argument("--scene", type=Path, nargs="+", default=None,
                   help="real posed scene folder(s) to train on (Strecha layout or Middlebury)")
    p.add_argument("--features", choices=("xfeat", "aliked", "trainable"), default=None,
                   help="network to fine-tune (default: the config's; xfeat with --scene)")
    p.add_argument("--output", type=Path, required=True, help="output folder")
    p.add_argument("--resume", action="store_true", help="continue from OUTPUT/checkpoint_last.pt")
    p.add_argument("--steps", type=int, default=None, help="override the config's total steps")
    p.add_argument("--init-weights", type=Path, default=None, help="start from this network weights file")
    p.add_argument("--map", type=Path, default=None,
                   help="COLMAP model folder (cameras/images/points3D): train the keypoint refiner on it")
    p.add_argument("--images", type=Path, default=None, help="image folder of --map")
    p.add_argument("--cache-dir", type=Path, default=None, help="refiner training data cache (with --map)")
    p.set_defaults(func=run)


def run_refiner_on_map(args) -> int:
    """``finetune --map MODEL --images DIR``: train the refiner on a user's COLMAP model."""
    from ..config import load_config, merge
    from ..features.refiner import KeypointRefiner
    from ..io.json_io import write_json
    from ..training.homography_data import homography_training_sets, pop_homography_conf
    from ..training.real import load_map_scene
    from ..training.refiner_data import cached_refiner_scenes, data_scales
    from ..training.refiner_train import (REFINABLE_MODELS, refiner_preset, save_refiner, train_refiner,
                                          uses_homographies)

    features = args.features or "xfeat"
    fconf = load_config("features", features)
    if fconf.get("model") not in REFINABLE_MODELS:
        raise ValueError(f"finetune --map trains a keypoint refiner on {' or '.join(REFINABLE_MODELS)}; --features "
                         f"{features} is {fconf.get('model')!r}")
    if args.images is None or not Path(args.images).is_dir():
        raise ValueError(f"finetune --map needs --images DIR (the model's image folder); got {args.images}")
    if not Path(args.map).is_dir():
        raise ValueError(f"--map: model folder not found: {args.map}")
    scene, pairs = load_map_scene(args.map, args.images)
    tconf = load_config("finetune", args.config or refiner_preset(features, "_map"))
    if args.steps is not None:
        tconf["steps"] = int(args.steps)
    dconf = tconf.pop("data", {})
    S = int(merge(KeypointRefiner.default_conf, tconf.get("refiner", {}))["patch_size"])
    output = Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    cache = args.cache_dir or output / "cache"
    scales = data_scales(dconf)
    hconf = pop_homography_conf(dconf)
    data = cached_refiner_scenes(Path(args.map).resolve(), fconf, S, scales, cache, scene=scene, pairs=pairs,
                                 max_pose_problems=40, **dconf)
    names = list(data[0].image_names)
    k = max(2, len(names) // 4)
    homog = ([], [])
    if uses_homographies(tconf):  # the training images again, as unposed warp pairs
        homog = homography_training_sets([Path(args.images) / n for n in names[:-k]], fconf, S, hconf, cache,
                                         "map", progress=True)
    out = train_refiner([d.subset_images(names[:-k]) for d in data], [d.subset_images(names[-k:]) for d in data],
                        tconf, homographies=homog[0], val_homographies=homog[1])
    save_refiner(out["refiner"], output / "refiner.pt")
    write_json(output / "history.json", {"history": out["history"], "best_step": out["best_step"],
                                         "seconds": out["seconds"], "conf": out["conf"]})
    fy = merge(fconf, {"refiner": str((output / "refiner.pt").resolve()), "refiner_conf": dict(out["refiner"].conf)})
    fy.pop("preset", None)
    _write_yaml(fy, output / "features.yaml", f"written by hloc-bpnp finetune --map: {features} with the trained refiner")
    h = out["history"]
    logger.info("refiner trained on %s (%d images, %d pairs): validation Sampson %.4f -> %.4f px (best step %d); "
                "extractor preset %s", args.map, len(names), len(data[0].pairs), h[0]["val_sampson_px"],
                min(r["val_sampson_px"] for r in h), out["best_step"], output / "features.yaml")
    return 0


def build_conf(args):
    """The merged fine-tuning config for the parsed arguments (raises ValueError on bad combinations)."""
    from ..config import load_config, merge
    from ..training.trainer import default_conf

    features = args.features
    if args.config is None:
        if args.scene:
            name = features or "xfeat"
            preset = f"real_{name}" if name != "trainable" else "real_xfeat"
        else:
            preset = "synthetic_quick"
    else:
        preset = args.config
    raw = load_config("finetune", preset)
    raw.pop("experiment", None)  # the budget of pipelines/finetune_synthetic.py, not a Trainer key
    conf = merge(default_conf, raw, strict=True)
    if features is not None:
        model = dict(conf.get("model") or {})
        if model.get("name", "trainable") != features:
            model = {"name": features} if features != "trainable" else {}
        conf["model"] = model
    if args.scene:
        missing = [str(s) for s in args.scene if not Path(s).is_dir()]
        if missing:
            raise ValueError(f"--scene: folder(s) not found: {missing}")
        conf["data"] = merge(conf["data"], {"source": "real", "scenes": [str(s) for s in args.scene]})
    if args.init_weights is not None:
        conf["init_weights"] = str(args.init_weights)
    if args.steps is not None:
        conf["steps"] = int(args.steps)
    return conf


def run(args) -> int:
    if getattr(args, "map", None) is not None:
        if args.scene:
            raise ValueError("finetune: give --map or --scene, not both")
        return run_refiner_on_map(args)
    from ..features.networks import build_network
    from ..training import Trainer, init_distributed
    from ..training.scenes import scenes_from_config

    conf = build_conf(args)
    init_distributed(conf["device"])
    probe = build_network(conf["model"], pretrained=False)
    scenes = scenes_from_config(conf["data"], probe.size_multiple, getattr(probe, "in_channels", 1))
    trainer = Trainer(conf, scenes, args.output)
    rows = trainer.train(steps=conf["steps"], resume=args.resume)
    if rows:
        logger.info("finished at step %d; last loss %.4f; %d steps skipped", trainer.step, rows[-1]["loss"],
                    trainer.skipped)
    if trainer.rank == 0:
        preset = write_features_preset(trainer.model.net, args.output)
        logger.info("weights: %s; extractor preset: %s (e.g. hloc-bpnp map ... --features %s)",
                    args.output / "weights.pt", preset, preset)
        if conf.get("matcher"):
            mpreset = write_matcher_preset(conf["matcher"], args.output)
            logger.info("matcher preset: %s (hloc-bpnp map ... --matcher %s)", mpreset, mpreset)
    return 0


def _write_yaml(conf: dict, path: Path, comment: str) -> Path:
    import yaml

    from ..io.atomic import atomic_write_text

    atomic_write_text(path, f"# {comment}\n" + yaml.safe_dump(conf, sort_keys=False))
    return path


def write_matcher_preset(matcher, output: Path) -> Path:
    """``OUTPUT/matcher.yaml``: the trained matcher's preset with ``weights: OUTPUT/matcher.pt``."""
    from ..config import load_config

    conf = load_config("matchers", matcher)
    conf["weights"] = str((output / "matcher.pt").resolve())
    return _write_yaml(conf, output / "matcher.yaml", "written by hloc-bpnp finetune: the fine-tuned matcher")


def write_features_preset(net, output: Path) -> Path:
    """``OUTPUT/features.yaml``: the network's extractor preset (``configs/features/<name>.yaml``,
    e.g. its resize) with ``weights`` set to ``OUTPUT/weights.pt``; written atomically."""
    from ..config import load_config, merge
    from ..features.networks import extractor_conf, network_name

    name = network_name(net)
    base = load_config("features", name)
    conf = merge(base, extractor_conf(net, (output / "weights.pt").resolve(), base.get("resize_max"),
                                      base.get("max_keypoints")))
    conf.pop("preset", None)
    return _write_yaml(conf, output / "features.yaml",
                       "written by hloc-bpnp finetune: the fine-tuned network as an extractor preset")
