#!/usr/bin/env python
"""End-to-end localization throughput with the map loaded (image file -> pose).

Builds (or loads) a map from a Strecha-format scene's GT poses leaving out the query
images, then localizes the held-out images through ``Localizer.localize_many`` (read image,
extract, retrieve, batched matching, 2D-3D, LO-RANSAC, BPnP) and prints per-stage seconds
and queries/s, for several numbers of retrieved keyframes.

    python benchmarks/bench_localization.py --scene ../shared/data/strecha_fountain_P11 --queries 0002.jpg 0005.jpg 0008.jpg
"""
import argparse
import logging
import time
from pathlib import Path

import numpy as np

from hloc_bpnp.config import load_config
from hloc_bpnp.io.datasets import read_strecha
from hloc_bpnp.localization import Localizer
from hloc_bpnp.mapping import Map, build_map_from_poses


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scene", type=Path, required=True)
    p.add_argument("--queries", nargs="+", required=True, help="held-out image names")
    p.add_argument("--map", type=Path, default=Path("outputs/bench_map"), help="map folder (built if absent)")
    p.add_argument("--keyframes", type=int, nargs="+", default=[3, 5, 10])
    p.add_argument("--query-resize-max", type=int, nargs="+", default=[1600],
                   help="query extraction sizes to compare (the map keeps its own features)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    scene = read_strecha(args.scene)
    if not (args.map / "map.json").exists():
        t = time.time()
        build_map_from_poses(scene.subset([n for n in scene.names if n not in args.queries]),
                             conf="default").save(args.map)
        print(f"map built in {time.time() - t:.1f} s")
    t = time.time()
    map_ = Map.load(args.map)
    print(f"map loaded in {time.time() - t:.2f} s: {len(map_.image_names)} images, {len(map_.points3D)} points")
    from hloc_bpnp.geometry import pose_error

    rows = []
    for size, k in [(s, k) for s in args.query_resize_max for k in args.keyframes]:
        fconf = load_config("features", map_.conf["features"])
        fconf["resize_max"] = size
        loc = Localizer(map_, {"retrieval": {"num_keyframes": k}, "features": fconf})
        queries = [(n, n, scene[n].camera) for n in args.queries]
        t = time.time()
        res = loc.localize_many(queries, image_dir=scene.image_dir, progress=False)
        wall = time.time() - t
        stages = {}
        for r in res.values():
            for s, v in r.timings.items():
                stages.setdefault(s, []).append(v)
        ok = sum(r.success for r in res.values())
        errs = [pose_error(r.pose, scene[n].pose) for n, r in res.items() if r.success]
        med_r = float(np.median([e[0].item() for e in errs])) if errs else float("nan")
        med_t = float(np.median([e[1].item() for e in errs])) * 100 if errs else float("nan")
        rows.append((size, k, len(queries), ok, med_r, med_t, wall / len(queries), len(queries) / wall,
                     {s: float(np.mean(v)) for s, v in stages.items()}))
    print(f"{'size':>5} {'k':>3} {'n':>3} {'ok':>3} {'medR deg':>9} {'medt cm':>8} {'s/query':>8} {'queries/s':>9}"
          "  per-stage mean seconds")
    for size, k, n, ok, mr, mt, spq, qps, st in rows:
        print(f"{size:>5} {k:>3} {n:>3} {ok:>3} {mr:>9.4f} {mt:>8.3f} {spq:>8.3f} {qps:>9.3f}  "
              + ", ".join(f"{s}={v:.3f}" for s, v in st.items()))


if __name__ == "__main__":
    main()
