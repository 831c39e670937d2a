#!/usr/bin/env python
"""Leave-one-out localization on the Middlebury temple ring (same protocol as Strecha).

    python pipelines/middlebury.py --scene ../shared/data/middlebury_templeRing_partial --output outputs/temple

Errors in metres are reported in cm (the temple is ~10 cm tall: expect sub-mm errors).
"""
import argparse
import logging
from pathlib import Path

from hloc_bpnp.protocols.leave_one_out import run_leave_one_out_benchmark
from hloc_bpnp.io.datasets import read_middlebury


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scene", type=Path, required=True, help="folder with *_par.txt and the PNG images")
    p.add_argument("--output", type=Path, required=True)
    p.add_argument("--config", default="default", help="localization preset (configs/localization)")
    p.add_argument("--mapping", default="middlebury", help="mapping preset (configs/mapping)")
    p.add_argument("--queries", nargs="*")
    p.add_argument("--no-ablation", action="store_true")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s %(name)s] %(message)s", datefmt="%H:%M:%S")
    scene = read_middlebury(args.scene)
    return run_leave_one_out_benchmark(scene, args.output, f"Middlebury {args.scene.name}: leave-one-out",
                                       args.mapping, args.config, args.queries, not args.no_ablation)


if __name__ == "__main__":
    main()
