#!/usr/bin/env python
"""Learned features against SIFT: leave-one-out localization per scene and mapping preset.

For each scene (Strecha layout or a Middlebury folder) and each mapping preset, runs the
leave-one-out protocol of ``pipelines/strecha.py`` (map triangulated from the other images'
ground-truth poses, the held-out image localized) and prints one table: localized count,
median rotation / position error over all queries, recall, seconds per query with the map
loaded (extraction + matching + pose), and the median Sampson error of the pair matches
against the ground-truth epipolar geometry (keypoint precision, full-resolution pixels).

A preset may carry overrides and its own localization preset:
``xfeat+features.subpixel=false+features.resize_max=1024@fast_learned``.

    OMP_NUM_THREADS=1 python benchmarks/bench_learned.py \
        --scenes ../shared/data/strecha_fountain_P11 --presets default xfeat xfeat_lighterglue \
        --output outputs/bench_learned
"""
import argparse
import json
import logging
import os
from pathlib import Path

import yaml


def parse_preset(spec: str):
    """``name+a.b=value+...`` -> (label, mapping conf dict)."""
    from hloc_bpnp.config import load_config

    name, *overrides = spec.split("+")
    conf = load_config("mapping", name)
    for o in overrides:
        key, value = o.split("=", 1)
        *parents, leaf = key.split(".")
        d = conf
        sections = {"features": "features", "matcher": "matchers", "retrieval": "retrieval"}
        for p in parents:
            if isinstance(d.get(p), str) and p in sections:  # a preset name: expand it to its dict
                d[p] = load_config(sections[p], d[p])
            elif not isinstance(d.get(p), dict):
                d[p] = dict(d.get(p) or {})
            d = d[p]
        d[leaf] = yaml.safe_load(value)
    return spec, conf


def load_scene(path: Path):
    from hloc_bpnp.io.datasets import read_strecha
    from hloc_bpnp.io.datasets.middlebury import read_middlebury

    if (path / "gt_dense_cameras").is_dir():
        return read_strecha(path), 100.0
    return read_middlebury(path), 100.0


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scenes", type=Path, nargs="+", required=True)
    p.add_argument("--presets", nargs="+", default=["default", "xfeat", "xfeat_lighterglue", "aliked_lightglue",
                                                    "disk_lightglue"])
    p.add_argument("--config", default="default", help="localization preset")
    p.add_argument("--output", type=Path, required=True)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    from hloc_bpnp.protocols.leave_one_out import run_leave_one_out_benchmark

    args.output.mkdir(parents=True, exist_ok=True)
    table_path = args.output / "table.json"
    rows = json.loads(table_path.read_text()) if table_path.is_file() else {}
    for scene_dir in args.scenes:
        scene, to_unit = load_scene(scene_dir)
        for spec in args.presets:
            spec, _, loc = spec.partition("@")
            loc = loc or args.config
            key = f"{scene_dir.name} | {spec} | {loc}"
            if key in rows:
                continue
            label, conf = parse_preset(spec)
            out = args.output / scene_dir.name / f"{spec}@{loc}".replace("/", "_")
            s = run_leave_one_out_benchmark(scene, out, f"{scene_dir.name} {label}", conf, loc,
                                            ablation=False, scale_to_cm=to_unit, progress=False)
            main_ = next(iter(s.values()))
            summ = main_["summary"]
            rows[key] = {k: summ.get(k) for k in ("n_queries", "n_localized", "median_rot_deg", "median_pos_cm",
                                                  "recall", "timings")}
            # per query with the map loaded: its extraction + retrieval + matching + pose
            # (timings["total"] already holds the extraction)
            per_q = [q["timings"]["total"] for q in main_["queries"] if "timings" in q]
            rows[key]["seconds_per_query"] = sum(per_q) / max(len(per_q), 1)
            tmp = table_path.with_suffix(".tmp")
            tmp.write_text(json.dumps(rows, indent=1))
            os.replace(tmp, table_path)
    print(f"{'scene | preset | loc':60s} {'loc':>6s} {'rot deg':>8s} {'pos':>8s} {'s/query':>8s}")
    for k, r in rows.items():
        f = lambda x: "inf" if x is None else f"{x:.4f}"  # noqa: E731
        print(f"{k:60s} {r['n_localized']:>2d}/{r['n_queries']:<3d} {f(r['median_rot_deg']):>8s} "
              f"{f(r['median_pos_cm']):>8s} {r['seconds_per_query'] or 0:8.2f}")


if __name__ == "__main__":
    main()
