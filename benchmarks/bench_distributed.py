#!/usr/bin/env python
"""Distributed batch localization throughput: queries/s with 1, 2, ... Ray workers.

Starts a local Ray cluster (``--cpus``, default all cores), builds (or loads) a map, then for
each worker count runs :func:`hloc_bpnp.distributed.localize_distributed` ``--repeats`` times
and prints queries/s with the map loaded: the clock starts once every worker has loaded the
map (start-up excluded) and stops when the last result is written. Each worker gets
``--threads-per-worker`` torch/OpenMP threads (default 1, so N workers use N cores). A
sequential baseline (``Localizer.localize_many`` in this process, same thread count) is timed
too. Scenes:

* ``synthetic``: the demo's ``facades`` scene (640x480): map from the map views' GT poses,
  queries = the held-out views + the map views (18);
* a Strecha folder: map triangulated from the GT poses of all images (mapping ``default``,
  1600 px), queries = every image (localized against the map holding it: a throughput test).

It also prints the map folder's size per map image (features, retrieval, model) and the bytes
of the arrays one loaded map holds per map image, the inputs of the README's cluster estimate.

    OMP_NUM_THREADS=1 python benchmarks/bench_distributed.py --scene synthetic --workers 1 2 --repeats 3
"""
from __future__ import annotations

import argparse
import logging
import statistics
import time
from pathlib import Path


def build_or_load(scene: str, out: Path):
    """(map folder, queries, image folder) for ``scene``."""
    from hloc_bpnp.mapping import build_map_from_poses

    out.mkdir(parents=True, exist_ok=True)
    if scene == "synthetic":
        from hloc_bpnp.synthetic import generate_scene

        root = out / "facades"
        if not (root / "scene.json").is_file():
            generate_scene("facades", seed=0).write(root, overwrite=True)
        from hloc_bpnp.synthetic.layout_io import load_synthetic_scene

        syn = load_synthetic_scene(root)
        map_dir = out / "facades_map"
        if not (map_dir / "map.json").is_file():
            build_map_from_poses(syn.map_scene, syn.images, "default", progress=False).save(map_dir)
        names = list(syn.query_names) + list(syn.map_names)
        queries = [(n, n, syn.scene[n].camera) for n in names]
        return map_dir, queries, root / "images"
    from hloc_bpnp.io.datasets import read_strecha

    sc = read_strecha(Path(scene))
    map_dir = out / f"{Path(scene).name}_map"
    if not (map_dir / "map.json").is_file():
        build_map_from_poses(sc, conf="default", progress=False).save(map_dir)
    return map_dir, [(n, n, sc[n].camera) for n in sc.names], sc.image_dir


def map_sizes(map_dir: Path) -> dict:
    """Bytes per map image of each map file, and of the arrays one loaded map holds (local
    features, keypoint -> 3D point rows, 3D points; the pycolmap model and index come on top)."""
    import json

    import numpy as np

    from hloc_bpnp.mapping import Map

    meta = json.loads((map_dir / "map.json").read_text())
    n = len(meta["image_names"])
    files = {p.relative_to(map_dir).as_posix(): p.stat().st_size for p in map_dir.rglob("*") if p.is_file()}
    m = Map.load(map_dir)
    arrays = sum(v.nbytes for f in m.features.values() for v in f.values() if isinstance(v, np.ndarray))
    arrays += sum(np.asarray(v).nbytes for v in m.kp_to_point.values()) + m.points3D.nbytes
    kp = [len(f["keypoints"]) for f in m.features.values()]
    return {"images": n, "points3D": int(len(m.points3D)), "keypoints_per_image": statistics.fmean(kp),
            "bytes_per_image": {k: v / n for k, v in sorted(files.items())},
            "total_bytes_per_image": sum(files.values()) / n, "loaded_array_bytes_per_image": arrays / n,
            "descriptor_dim": int(next(iter(m.features.values()))["descriptors"].shape[-1])}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scene", default="synthetic", help="'synthetic' or a Strecha scene folder")
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    p.add_argument("--threads-per-worker", type=int, default=1)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--chunk-size", type=int, default=None)
    p.add_argument("--cpus", type=int, default=None, help="CPUs of the local Ray cluster (default: all)")
    p.add_argument("--config", default="default", help="localization preset")
    p.add_argument("--no-sequential", action="store_true", help="skip the in-process baseline")
    p.add_argument("--output", type=Path, default=Path("outputs/bench_distributed"))
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    import ray
    import torch

    from hloc_bpnp.distributed import localize_distributed

    map_dir, queries, image_dir = build_or_load(args.scene, args.output)
    sizes = map_sizes(map_dir)
    print(f"map {map_dir}: {sizes['images']} images, {sizes['points3D']} points, "
          f"{sizes['keypoints_per_image']:.0f} keypoints/image (descriptors {sizes['descriptor_dim']}-D)")
    for k, v in sizes["bytes_per_image"].items():
        print(f"  {k:28s} {v / 1024:10.1f} KiB per map image")
    print(f"  {'total on disk':28s} {sizes['total_bytes_per_image'] / 1024:10.1f} KiB per map image; "
          f"loaded arrays {sizes['loaded_array_bytes_per_image'] / 1024:.1f} KiB per map image")

    rows = []
    if not args.no_sequential:
        from hloc_bpnp.localization import Localizer
        from hloc_bpnp.mapping import Map

        torch.set_num_threads(args.threads_per_worker)
        loc = Localizer(Map.load(map_dir), args.config)
        qps = []
        for _ in range(args.repeats):
            t = time.perf_counter()
            loc.localize_many(queries, image_dir=image_dir, progress=False)
            qps.append(len(queries) / (time.perf_counter() - t))
        rows.append(("sequential (in process)", 1, qps, None))
    ray.init(num_cpus=args.cpus, include_dashboard=False, logging_level=logging.WARNING, log_to_driver=False)
    try:
        for w in args.workers:
            qps, stats = [], {}
            for r in range(args.repeats):
                localize_distributed(map_dir, queries, args.config, workers=w, image_dir=image_dir,
                                     results_path=args.output / f"results_w{w}_r{r}.txt", chunk_size=args.chunk_size,
                                     threads_per_worker=args.threads_per_worker, progress=False, stats=stats)
                qps.append(stats["queries_per_second"])
            rows.append((f"Ray, {w} worker{'s' if w > 1 else ''}", w, qps, stats["chunk_size"]))
    finally:
        ray.shutdown()
    base = next((statistics.median(q) for label, w, q, _ in rows if label.startswith("Ray") and w == 1), None)
    print(f"\n{len(queries)} queries, {args.threads_per_worker} thread(s) per worker, preset {args.config!r}, "
          f"median of {args.repeats} runs (start-up excluded)")
    print("| run | workers | chunk | queries/s (each run) | median queries/s | s/query | vs 1 Ray worker |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for label, w, q, chunk in rows:
        med = statistics.median(q)
        speed = f"{med / base:.2f}x" if base else "-"
        print(f"| {label} | {w} | {chunk or '-'} | {', '.join(f'{x:.3f}' for x in q)} | {med:.3f} | "
              f"{1 / med:.2f} | {speed} |")


if __name__ == "__main__":
    main()
