#!/usr/bin/env python
"""How much a leave-one-out result depends on RANSAC's random seed, with and without the inlier
re-selection at the refined pose (``refinement.reselect_rounds``).

The leave-one-out fold maps of a scene are built once; every held-out image is then localized
with RANSAC seeds 0..S-1 for each setting. The table gives, per setting, the median error over
the queries for each seed (mean, min and max over the seeds), the geometric mean over all
queries and seeds, and the mean over the queries of the log-error's standard deviation over the
seeds (0: the seed does not matter).

With two or more setups, a second table compares each setup with the first one at the same
rounds, query by query (the same held-out images): the ratio of their medians over the queries
(each query's error its geometric mean over the seeds) with a 95% bootstrap interval that
resamples the queries, and on how many queries the setup is the more accurate. It says
whether a difference between two medians of a few dozen queries is larger than the choice of
queries would make it. ``--json FILE`` keeps every error for other comparisons. Setups with the
same mapping preset share its fold maps, built once per run: localization presets compare on
identical maps, and each extra one costs no map building.

    python benchmarks/bench_ransac_seeds.py --scene ../shared/data/middlebury_templeRing_partial \\
        --setup xfeat_refined_adjusted@fast_learned --seeds 5 --rounds 0 2
"""
import argparse
import logging
import sys
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_loc_variants import read_scene  # noqa: E402
from bench_loc_warm import fold_maps  # noqa: E402


def seed_errors(scene, maps, config: str, rounds: int, seeds: int):
    """(rotation deg, position cm) errors, each (seeds, queries), inf where not localized, and the
    mean seconds of a ``Localizer.localize`` call (one Localizer per query, its seed set per call)."""
    from hloc_bpnp.config import load_config, merge
    from hloc_bpnp.geometry.metrics import center_error, rotation_error_deg
    from hloc_bpnp.io.image import read_image
    from hloc_bpnp.localization import Localizer
    from hloc_bpnp.localization.patch_alignment import MapImages

    images = MapImages(scene.image_dir)
    queries = list(maps)
    rot, pos = np.full((seeds, len(queries)), np.inf), np.full((seeds, len(queries)), np.inf)
    conf = merge(load_config("localization", config), {"refinement": {"reselect_rounds": rounds}})
    qimages = {q: read_image(Path(scene.image_dir) / q) for q in queries}
    locs = {q: Localizer(maps[q], conf, map_images=images) for q in queries}
    seconds = 0.0
    for s in tqdm(range(seeds), desc=f"{config}, {rounds} rounds", leave=False):
        for i, q in enumerate(queries):
            locs[q].conf["ransac"]["seed"] = s
            t = time.perf_counter()
            res = locs[q].localize(qimages[q], scene[q].camera, name=q)
            seconds += time.perf_counter() - t
            if res.success:
                gt = scene[q].pose.to(torch.float64)
                rot[s, i] = float(rotation_error_deg(res.pose.R.double(), gt.R))
                pos[s, i] = float(center_error(res.pose.to(torch.float64), gt)) * 100
    return rot, pos, seconds / rot.size


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scene", type=Path, required=True, help="Middlebury or Strecha folder")
    p.add_argument("--setup", action="append", required=True, metavar="MAPPING@CONFIG",
                   help="a mapping preset @ a localization preset (repeatable)")
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--rounds", type=int, nargs="+", default=[0, 2], help="refinement.reselect_rounds values")
    p.add_argument("--queries", type=int, default=None, help="only the first N images are held out")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", type=Path, default=None, help="write every error (setup, rounds, seed, query) here")
    p.add_argument("--bootstrap", type=int, default=2000, help="query resamplings of the paired comparison")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(args.threads)
    scene = read_scene(args.scene)
    queries = scene.names[:args.queries] if args.queries else scene.names
    rows = []
    built = {}  # mapping -> its fold maps: setups that share a mapping localize against the same maps
    for setup in args.setup:
        if "@" not in setup:
            raise SystemExit(f"--setup {setup!r}: expected MAPPING@CONFIG")
        mapping, config = setup.split("@", 1)
        if mapping not in built:
            built[mapping] = fold_maps(scene, mapping, config, queries)
        maps = built[mapping]
        for r in args.rounds:
            rot, pos, sec = seed_errors(scene, maps, config, r, args.seeds)
            rows.append((setup, r, rot, pos, sec))
    print(f"{args.scene.name}: {len(queries)} held-out queries x {args.seeds} RANSAC seeds, {args.threads} threads")
    print("| setup | reselect rounds | median rot deg: mean [min, max] over seeds | median pos cm: mean [min, max] "
          "| geometric mean rot / pos | per-query log-sd rot / pos | failed | s / localize call |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for setup, r, rot, pos, sec in rows:
        ok = np.isfinite(rot).all(0) & np.isfinite(pos).all(0)
        mr, mp = np.median(rot, 1), np.median(pos, 1)
        gm = np.exp(np.log(rot[:, ok]).mean()), np.exp(np.log(pos[:, ok]).mean())
        sd = np.log(rot[:, ok]).std(0).mean(), np.log(pos[:, ok]).std(0).mean()
        print(f"| {setup} | {r} | {mr.mean():.5f} [{mr.min():.5f}, {mr.max():.5f}] | {mp.mean():.5f} "
              f"[{mp.min():.5f}, {mp.max():.5f}] | {gm[0]:.5f} / {gm[1]:.5f} | {sd[0]:.3f} / {sd[1]:.3f} | "
              f"{int((~np.isfinite(rot)).sum())} | {sec:.3f} |")
    first = rows[0][0]
    pairs = [(a, b) for a in rows for b in rows if a[0] == first and b[0] != first and a[1] == b[1]]
    if pairs:
        print(f"\nPaired against {first} (same queries; per query the geometric mean over the seeds; "
              f"{args.bootstrap} query resamplings):")
        print("| setup | reselect rounds | median ratio rot [95% CI] | median ratio pos [95% CI] | "
              "queries more accurate rot / pos |")
        print("| --- | --- | --- | --- | --- |")
        for a, b in pairs:
            cells = []
            wins = []
            for k in (2, 3):
                ea, eb = per_query(a[k]), per_query(b[k])
                ratio, lo, hi = paired_median_ratio(ea, eb, args.bootstrap)
                cells.append(f"{ratio:.3f} [{lo:.3f}, {hi:.3f}]")
                wins.append(f"{int((eb < ea).sum())}/{len(ea)}")
            print(f"| {b[0]} | {b[1]} | {cells[0]} | {cells[1]} | {wins[0]} / {wins[1]} |")
    if args.json is not None:
        from hloc_bpnp.io.json_io import write_json

        write_json(args.json, {"scene": args.scene.name, "queries": list(queries), "seeds": args.seeds,
                               "rows": [{"setup": su, "rounds": r, "rot_deg": rot.tolist(), "pos_cm": pos.tolist(),
                                         "seconds_per_call": sec} for su, r, rot, pos, sec in rows]})


def per_query(err: np.ndarray) -> np.ndarray:
    """(queries,) geometric mean over the seeds of (seeds, queries) errors (inf where any failed)."""
    with np.errstate(divide="ignore"):
        return np.exp(np.log(err).mean(0))


def paired_median_ratio(ea: np.ndarray, eb: np.ndarray, n: int = 2000, seed: int = 0):
    """``median(eb) / median(ea)`` over the same queries, and its 95% bootstrap interval (queries
    resampled together for both)."""
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(ea), (n, len(ea)))
    boot = np.median(eb[idx], 1) / np.median(ea[idx], 1)
    return float(np.median(eb) / np.median(ea)), float(np.percentile(boot, 2.5)), float(np.percentile(boot, 97.5))


if __name__ == "__main__":
    main()
