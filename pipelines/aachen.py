#!/usr/bin/env python
"""Aachen Day-Night (v1.0 / v1.1): map by triangulation from the database poses, localize the
day and night queries. Query GT is not public: OUTPUT/results.txt (hloc format, names as in the
query lists, e.g. query/night/nexus5x/IMG_x.jpg) and OUTPUT/submission.txt (the same poses named
by file name only, the visuallocalization.net format hloc writes) are for the online benchmark;
results.json reports the outcomes (localized, inliers, failure reasons).

    python pipelines/aachen.py --dataset datasets/aachen --output outputs/aachen [--version v1.1] [--max-queries 20]
"""
import argparse
import logging
from pathlib import Path

from hloc_bpnp.protocols.datasets import run_dataset_benchmark
from hloc_bpnp.io.datasets import read_aachen
from hloc_bpnp.io.hloc_text import read_results, write_results


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", "--scene", dest="dataset", type=Path, required=True,
                   help="Aachen root (images/images_upright, 3D-models, queries)")
    p.add_argument("--output", type=Path, required=True)
    p.add_argument("--version", default="v1.0", choices=["v1.0", "v1.1"])
    p.add_argument("--conditions", nargs="*", default=["day", "night"], choices=["day", "night"])
    p.add_argument("--config", default="default", help="localization preset (configs/localization)")
    p.add_argument("--mapping", default="default", help="mapping preset (configs/mapping)")
    p.add_argument("--max-queries", type=int, help="localize only N evenly spaced queries")
    p.add_argument("--reuse-map", action="store_true", help="load OUTPUT/map when it exists")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s %(name)s] %(message)s", datefmt="%H:%M:%S")
    data = read_aachen(args.dataset, args.version)
    queries = {n: c for cond in args.conditions for n, c in data.queries[cond].items()}
    title = f"Aachen {args.version} ({', '.join(args.conditions)})"
    out = run_dataset_benchmark(data.database, queries, args.output, title, mapping_conf=args.mapping,
                                loc_conf=args.config, max_queries=args.max_queries, reuse_map=args.reuse_map)
    poses = read_results(args.output / "results.txt")
    short = {n.rsplit("/", 1)[-1]: pose for n, pose in poses.items()}
    if len(short) != len(poses):
        raise ValueError("query file names are not unique without their folders: use results.txt")
    write_results(args.output / "submission.txt", short)
    return out


if __name__ == "__main__":
    main()
