#!/usr/bin/env python
"""pycolmap's C++ SIFT (``sift_pycolmap``) against kornia's SIFT (``sift``, the default):
extraction time and localization accuracy, back to back in one process.

* Extraction: every image of Strecha fountain-P11 and Herz-Jesu-P8 at 1600 px (the presets'
  ``resize_max``) and the first RedKitchen frames at 640x480, each extractor in turn per image
  (interleaved, one warm-up image first): median seconds per image, keypoints per image.
* Localization: leave-one-out (``pipelines/strecha.py`` protocol: map triangulated from the
  other images' ground-truth poses, default localization preset) on fountain-P11, Herz-Jesu-P8
  (mapping preset ``default``) and the Middlebury temple (``middlebury``), each with every
  variant's features (the preset's ``resize_max`` kept): localized, median rotation / position
  error, and per query which variant is closer than the first (paired; Wilcoxon signed-rank
  p-value when scipy is installed).

Variants are feature presets with overrides: ``sift_pycolmap+first_octave=-1``.

Run it alone, under the CPU lock, with the thread count you report:

    flock /tmp/hloc_cpu.lock env OMP_NUM_THREADS=2 python benchmarks/bench_pycolmap_sift.py \
        --output outputs/bench_pycolmap_sift [--variants sift sift_pycolmap sift_pycolmap+first_octave=-1]
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
DEFAULT_VARIANTS = ("sift", "sift_pycolmap")
LOO = {  # scene -> its mapping preset (the features replaced by each variant's, resize_max kept)
    "strecha_fountain_P11": "default",
    "strecha_herzjesu_P8": "default",
    "middlebury_templeRing_partial": "middlebury",
}


def variant_features(spec: str) -> dict:
    """``name+key=value+...`` -> features conf (a preset of configs/features with overrides)."""
    import yaml

    from hloc_bpnp.config import load_config

    name, *overrides = spec.split("+")
    conf = dict(load_config("features", name))
    for o in overrides:
        key, value = o.split("=", 1)
        conf[key] = yaml.safe_load(value)
    return conf


def variant_mapping(scene_mapping: str, spec: str) -> dict:
    """The scene's mapping preset with the variant's features (the preset's resize_max kept)."""
    from hloc_bpnp.config import load_config
    from hloc_bpnp.mapping import mapping_config

    conf = mapping_config(scene_mapping)
    base = load_config("features", conf["features"])
    feats = variant_features(spec)
    feats["resize_max"] = base.get("resize_max")
    conf["features"] = feats
    return conf


def bench_extraction(data: Path, variants, n_video: int = 10) -> dict:
    from hloc_bpnp.features import build_extractor
    from hloc_bpnp.io.image import read_image

    sets = {}
    for scene in ("strecha_fountain_P11", "strecha_herzjesu_P8"):
        d = data / scene / "images"
        if d.is_dir():
            sets.setdefault("1600px", []).extend(sorted(d.glob("*.jpg")))
    seq = data / "seven_scenes_redkitchen" / "seq-02"
    if seq.is_dir():
        sets["640x480"] = sorted(seq.glob("frame-*.color.jpg"))[:n_video]
    ex = {k: build_extractor(variant_features(k)) for k in variants}
    out = {}
    for label, paths in sets.items():
        times = {k: [] for k in variants}
        counts = {k: [] for k in variants}
        images = [read_image(p) for p in paths]
        for k in variants:  # warm-up
            ex[k].extract(images[0])
        for im in images:
            for k in variants:
                t = time.perf_counter()
                f = ex[k].extract(im)
                times[k].append(time.perf_counter() - t)
                counts[k].append(int(f["keypoints"].shape[0]))
        out[label] = {k: {"median_s": statistics.median(times[k]), "mean_s": statistics.fmean(times[k]),
                          "median_keypoints": statistics.median(counts[k]), "n_images": len(images)}
                      for k in variants}
    return out


def _paired(a: list, b: list) -> dict:
    """Paired comparison of per-query errors (a: the reference variant, b: another)."""
    pairs = [(x, y) for x, y in zip(a, b) if x is not None and y is not None]
    res = {"n": len(pairs), "better": sum(y < x for x, y in pairs), "worse": sum(x < y for x, y in pairs)}
    try:
        from scipy.stats import wilcoxon

        if len(pairs) >= 5 and any(x != y for x, y in pairs):
            res["wilcoxon_p"] = float(wilcoxon([x for x, _ in pairs], [y for _, y in pairs]).pvalue)
    except ImportError:
        pass
    return res


def bench_localization(data: Path, scene_name: str, variants) -> dict:
    from hloc_bpnp.protocols.summary import summarize
    from hloc_bpnp.protocols.leave_one_out import leave_one_out
    from hloc_bpnp.io.datasets import read_strecha
    from hloc_bpnp.io.datasets.middlebury import read_middlebury

    d = data / scene_name
    scene = read_strecha(d) if (d / "gt_dense_cameras").is_dir() else read_middlebury(d)
    gt = {im.name: im.pose for im in scene}
    out = {}
    per_query = {}
    for key in variants:
        mapping = variant_mapping(LOO[scene_name], key)
        t0 = time.time()
        results, timings = leave_one_out(scene, None, mapping, "default", progress=False)
        res = next(iter(results.values()))
        s = summarize(res, gt, scale_to_cm=100.0)
        summ = s["summary"]
        out[key] = {"features": mapping["features"], "n_queries": summ["n_queries"], "n_localized": summ["n_localized"],
                    "median_rot_deg": summ["median_rot_deg"], "median_pos_cm": summ["median_pos_cm"],
                    "mean_rot_deg": statistics.fmean(q["rot_err_deg"] for q in s["queries"]
                                                     if q["rot_err_deg"] is not None),
                    "mean_pos_cm": statistics.fmean(q["pos_err_cm"] for q in s["queries"]
                                                    if q["pos_err_cm"] is not None),
                    "seconds_per_query": summ["seconds_per_query"],
                    "extraction_per_image_s": timings["extraction_per_image"],
                    "wall_seconds": time.time() - t0}
        per_query[key] = {q["name"]: (q["rot_err_deg"], q["pos_err_cm"]) for q in s["queries"]}
    ref = variants[0]
    names = sorted(per_query[ref])
    for k in variants[1:]:
        out[k]["paired_vs_" + ref] = {
            "rot": _paired([per_query[ref][n][0] for n in names], [per_query[k][n][0] for n in names]),
            "pos": _paired([per_query[ref][n][1] for n in names], [per_query[k][n][1] for n in names])}
    out["per_query"] = {n: {k: per_query[k][n] for k in variants} for n in names}
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=DATA)
    p.add_argument("--output", type=Path, required=True)
    p.add_argument("--variants", nargs="+", default=list(DEFAULT_VARIANTS),
                   help="feature presets with overrides, e.g. sift_pycolmap+first_octave=-1; the first is "
                        "the reference of the paired comparisons")
    p.add_argument("--skip-extraction", action="store_true")
    p.add_argument("--scenes", nargs="*", default=list(LOO), choices=list(LOO))
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    import torch

    threads = int(os.environ.get("OMP_NUM_THREADS", "2"))
    torch.set_num_threads(threads)
    args.output.mkdir(parents=True, exist_ok=True)
    report = {"threads": threads}
    if not args.skip_extraction:
        report["extraction"] = bench_extraction(args.data, args.variants)
        for label, r in report["extraction"].items():
            for k, v in r.items():
                print(f"extraction {label} {k}: median {v['median_s']:.3f} s/image (mean {v['mean_s']:.3f}), "
                      f"{v['median_keypoints']:.0f} keypoints, {v['n_images']} images", flush=True)
    report["localization"] = {}
    for scene in args.scenes:
        if not (args.data / scene).is_dir():
            logging.warning("%s not found: skipped", scene)
            continue
        r = bench_localization(args.data, scene, args.variants)
        report["localization"][scene] = r
        tmp = args.output / "report.json.tmp"
        tmp.write_text(json.dumps(report, indent=1))
        os.replace(tmp, args.output / "report.json")
        for k in args.variants:
            v = r[k]
            print(f"| {scene} | {k} | {v['n_localized']}/{v['n_queries']} | {v['median_rot_deg']:.4f} deg / "
                  f"{v['median_pos_cm']:.3f} cm | mean {v['mean_rot_deg']:.4f} deg / {v['mean_pos_cm']:.3f} cm | "
                  f"{v['seconds_per_query']:.2f} s/query | {v['extraction_per_image_s']:.2f} s/image |", flush=True)
            if "paired_vs_" + args.variants[0] in v:
                print(f"  paired vs {args.variants[0]}: {v['paired_vs_' + args.variants[0]]}", flush=True)
    tmp = args.output / "report.json.tmp"
    tmp.write_text(json.dumps(report, indent=1))
    os.replace(tmp, args.output / "report.json")


if __name__ == "__main__":
    main()
