#!/usr/bin/env python
"""Per-query localization time with the map loaded and the Localizer warm, for several
mapping @ localization setups back to back.

``pipelines/middlebury.py`` times each leave-one-out query right after its fold map was built,
with a new Localizer per fold: every query pays first-call costs (caches, memory touched for the
first time after the map build). A service localizing many queries against one map does not.
This script builds the leave-one-out fold maps of the first ``--queries`` images once, then
localizes each held-out image ``--repeats`` times through ``Localizer.localize`` (image ->
pose: extraction included; the map images given, so ``enabled: auto`` alignment runs) after
one untimed call, and prints the mean seconds per stage and the median errors.

    python benchmarks/bench_loc_warm.py --scene ../shared/data/middlebury_templeRing_partial \\
        --setup middlebury@default --setup xfeat_refined_adjusted@fast_learned --queries 6
"""
import argparse
import logging
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_loc_variants import read_scene  # noqa: E402

STAGES = ("features", "retrieval", "matching", "correspondences", "keypoint_covariance", "pose", "alignment")


def fold_maps(scene, mapping: str, config: str, queries):
    """{query: its leave-one-out fold Map} (the query's image in none of them)."""
    from hloc_bpnp.protocols.leave_one_out import leave_one_out

    maps = {}
    leave_one_out(scene, None, mapping, config, queries, progress=False,
                  fold_hook=lambda q, m, _: maps.__setitem__(q, m))
    return maps


def time_setup(scene, mapping: str, config: str, queries, repeats: int):
    """(mean seconds per stage and in total, median rot deg, median pos in scene units x 100)."""
    from hloc_bpnp.geometry.metrics import center_error, rotation_error_deg
    from hloc_bpnp.io.image import read_image
    from hloc_bpnp.localization import Localizer
    from hloc_bpnp.localization.patch_alignment import MapImages

    maps = fold_maps(scene, mapping, config, queries)
    images = MapImages(scene.image_dir)
    times, rot, pos = {}, [], []
    for q in queries:
        loc = Localizer(maps[q], config, map_images=images)
        img, cam = read_image(Path(scene.image_dir) / q), scene[q].camera
        loc.localize(img, cam, name=q)  # untimed: first-call costs
        for _ in range(repeats):
            t = time.perf_counter()
            res = loc.localize(img, cam, name=q)
            times.setdefault("wall", []).append(time.perf_counter() - t)
            for k in STAGES:
                times.setdefault(k, []).append(res.timings.get(k, 0.0))
        if not res.success:
            raise SystemExit(f"{q}: not localized ({res.failure_reason}) with {mapping} @ {config}")
        gt = scene[q].pose.to(torch.float64)
        rot.append(float(rotation_error_deg(res.pose.R.double(), gt.R)))
        pos.append(float(center_error(res.pose.to(torch.float64), gt)) * 100)
    return {k: float(np.mean(v)) for k, v in times.items()}, float(np.median(rot)), float(np.median(pos))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scene", type=Path, required=True, help="Middlebury or Strecha folder")
    p.add_argument("--setup", action="append", required=True, metavar="MAPPING@CONFIG",
                   help="a mapping preset @ a localization preset (repeatable; run in the order given)")
    p.add_argument("--queries", type=int, default=6, help="the first N images are held out, one fold each")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(args.threads)
    scene = read_scene(args.scene)
    queries = scene.names[:args.queries]
    rows = []
    for setup in args.setup:
        if "@" not in setup:
            raise SystemExit(f"--setup {setup!r}: expected MAPPING@CONFIG")
        mapping, config = setup.split("@", 1)
        t, r, q = time_setup(scene, mapping, config, queries, args.repeats)
        rows.append((setup, t, r, q))
    print(f"{args.scene.name}: {len(queries)} held-out queries x {args.repeats} timed calls each, warm Localizer, "
          f"{args.threads} threads")
    print("| setup | median rot deg / pos cm | " + " | ".join(STAGES) + " | total (s) | x first |")
    print("| --- | --- | " + " | ".join("---" for _ in STAGES) + " | --- | --- |")
    for setup, t, r, q in rows:
        print(f"| {setup} | {r:.4f} / {q:.4f} | " + " | ".join(f"{t[k]:.4f}" for k in STAGES)
              + f" | {t['wall']:.4f} | {t['wall'] / rows[0][1]['wall']:.2f} |")


if __name__ == "__main__":
    main()
