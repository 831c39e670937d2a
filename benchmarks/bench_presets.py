#!/usr/bin/env python
"""Choose the default localization preset by measurement (issue 10.5).

Runs every candidate localization preset on the same scenes and prints one table:

* Strecha fountain-P11 and Herz-Jesu-P8, Middlebury temple: leave-one-out (map triangulated
  from the other images' ground-truth poses, ``pipelines/strecha.py`` protocol): localized
  count, median rotation / position error over all queries, seconds per query with the map
  loaded (extraction + retrieval + matching + pose);
* Sacre Coeur: SfM of ``mapping/`` once (``sfm`` preset), then the ``query/`` and
  ``query_extra_lightglue/`` photos (as ``pipelines/sacre_coeur.py``) with the
  focal refined (no ground truth): localized count, credible count (>= 50 inliers and refined
  focal within 1.5x of its prior, as in the README), median inliers, seconds per query;
* the synthetic demo scene (``facades``, seed 0): map from the map views' GT poses, the
  held-out queries localized from their images.

A candidate is a localization preset name or YAML path, optionally with overrides:
``default+retrieval.num_keyframes=3``. Results go to OUTPUT/table.json as each (scene,
preset) finishes; a rerun skips the rows already there.

    OMP_NUM_THREADS=1 python benchmarks/bench_presets.py --output outputs/bench_presets \
        --presets default fast default+retrieval.num_keyframes=3
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
SCENES = ("strecha_fountain_P11", "strecha_herzjesu_P8", "middlebury_templeRing_partial", "sacre_coeur", "synthetic")
MAPPING = {"middlebury_templeRing_partial": "middlebury"}  # else "default" (Sacre Coeur: "sfm")


def parse_spec(spec: str) -> dict:
    """``name+a.b=value+...`` -> localization conf dict."""
    from hloc_bpnp.config import load_config

    name, *overrides = spec.split("+")
    conf = load_config("localization", name)
    for o in overrides:
        key, value = o.split("=", 1)
        *parents, leaf = key.split(".")
        d = conf
        for p in parents:
            d = d.setdefault(p, {})
        d[leaf] = yaml.safe_load(value)
    return conf


def _write_atomic(path: Path, rows: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(rows, indent=1))
    os.replace(tmp, path)


def run_leave_one_out(scene_dir: Path, conf: dict, out: Path) -> dict:
    from hloc_bpnp.protocols.leave_one_out import run_leave_one_out_benchmark
    from hloc_bpnp.io.datasets import read_strecha
    from hloc_bpnp.io.datasets.middlebury import read_middlebury

    scene = read_strecha(scene_dir) if (scene_dir / "gt_dense_cameras").is_dir() else read_middlebury(scene_dir)
    s = run_leave_one_out_benchmark(scene, out, scene_dir.name, MAPPING.get(scene_dir.name, "default"), conf,
                                    ablation=False, scale_to_cm=100.0, progress=False)
    summ = next(iter(s.values()))["summary"]
    return {"n_queries": summ["n_queries"], "n_localized": summ["n_localized"],
            "median_rot_deg": summ["median_rot_deg"], "median_pos_cm": summ["median_pos_cm"],
            "seconds_per_query": summ["seconds_per_query"]}


def _sacre_coeur_map(data: Path, cache: Path):
    from hloc_bpnp.mapping import Map, build_map_sfm

    if (cache / "map.json").is_file():
        return Map.load(cache)
    m = build_map_sfm(data / "mapping", "sfm", progress=False)
    m.save(cache)
    return m


def run_sacre_coeur(data: Path, conf: dict, out: Path) -> dict:
    from hloc_bpnp.config import merge
    from hloc_bpnp.protocols.datasets import localize_query_list
    from hloc_bpnp.localization import Localizer
    from hloc_bpnp.localization.results import query_seconds
    from hloc_bpnp.mapping import list_images

    map_ = _sacre_coeur_map(data, out.parent / "sacre_coeur_sfm_map")
    queries = {f"{d}/{f}": None for d in ("query", "query_extra_lightglue") if (data / d).is_dir()
               for f in list_images(data / d)}
    loc = Localizer(map_, merge(conf, {"refinement": {"refine_intrinsics": True}}))
    results = localize_query_list(loc, queries, data, progress=False)
    per_query, credible = {}, 0
    for n, r in results.items():
        ratio = None
        if r.info.get("focal_prior") and r.info.get("focal_refined"):
            ratio = float(r.info["focal_refined"]) / float(r.info["focal_prior"])
        ok = bool(r.success and r.num_inliers >= 50 and (ratio is None or 1 / 1.5 <= ratio <= 1.5))
        credible += ok
        per_query[n] = {"success": r.success, "inliers": r.num_inliers, "focal_ratio": ratio, "credible": ok,
                        "reason": r.failure_reason}
    inl = [r.num_inliers for r in results.values() if r.success]
    return {"n_queries": len(results), "n_localized": sum(r.success for r in results.values()),
            "n_credible": credible, "median_inliers": statistics.median(inl) if inl else None,
            "seconds_per_query": statistics.fmean(query_seconds(r.timings) for r in results.values()),
            "queries": per_query}


_SYN = {}


def run_synthetic(conf: dict, out: Path) -> dict:
    from hloc_bpnp.protocols.summary import summarize
    from hloc_bpnp.localization import Localizer
    from hloc_bpnp.mapping import build_map_from_poses
    from hloc_bpnp.synthetic import generate_scene

    if not _SYN:
        syn = generate_scene("facades", seed=0)
        _SYN["scene"] = syn
        _SYN["map"] = build_map_from_poses(syn.map_scene, syn.images, "default", progress=False)
    syn, map_ = _SYN["scene"], _SYN["map"]
    loc = Localizer(map_, conf)
    cams = syn.query_cameras()
    results = loc.localize_many([(n, syn.images[n], cams[n]) for n in syn.query_names], progress=False)
    summ = summarize(results, {n: syn.scene[n].pose for n in syn.query_names}, scale_to_cm=None)["summary"]
    return {"n_queries": summ["n_queries"], "n_localized": summ["n_localized"],
            "median_rot_deg": summ["median_rot_deg"], "median_pos_cm": summ["median_pos_cm"],
            "seconds_per_query": summ["seconds_per_query"]}


def fmt_row(scene: str, spec: str, r: dict) -> str:
    def f(x, d=4):
        return "-" if x is None else f"{x:.{d}f}"

    acc = (f"credible {r['n_credible']}/{r['n_queries']}, median inliers {f(r['median_inliers'], 0)}"
           if "n_credible" in r else f"{f(r['median_rot_deg'])} deg / {f(r['median_pos_cm'], 3)}")
    return (f"| {scene} | {spec} | {r['n_localized']}/{r['n_queries']} | {acc} | "
            f"{f(r['seconds_per_query'], 2)} |")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--presets", nargs="+", default=["default", "fast"])
    p.add_argument("--scenes", nargs="+", default=list(SCENES), choices=SCENES)
    p.add_argument("--data", type=Path, default=DATA)
    p.add_argument("--output", type=Path, required=True)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    args.output.mkdir(parents=True, exist_ok=True)
    table = args.output / "table.json"
    rows = json.loads(table.read_text()) if table.is_file() else {}
    for scene in args.scenes:
        if scene != "synthetic" and not (args.data / scene).is_dir():
            logging.warning("%s not found under %s: skipped", scene, args.data)
            continue
        for spec in args.presets:
            key = f"{scene} | {spec}"
            if key in rows:
                continue
            conf = parse_spec(spec)
            out = args.output / scene / spec.replace("/", "_")
            t0 = time.time()
            if scene == "sacre_coeur":
                r = run_sacre_coeur(args.data / scene, conf, out)
            elif scene == "synthetic":
                r = run_synthetic(conf, out)
            else:
                r = run_leave_one_out(args.data / scene, conf, out)
            r["wall_seconds"] = time.time() - t0
            rows[key] = r
            _write_atomic(table, rows)
            print(fmt_row(scene, spec, r), flush=True)
    print("\n| scene | preset | localized | median rot / pos (cm; synthetic: scene units) | s/query |")
    print("| --- | --- | --- | --- | --- |")
    for key, r in rows.items():
        print(fmt_row(*key.split(" | "), r))


if __name__ == "__main__":
    main()
