#!/usr/bin/env python
"""Leave-one-out localization on a Strecha-format scene (fountain-P11, Herz-Jesu-P8, ...).

For each image: a map from the OTHER images with their GT poses (triangulation, poses fixed),
the held-out image localized with its GT intrinsics, compared with its GT pose (metres).
Features and pair matches are computed once per scene; a fold only re-triangulates.
Writes DIR/results.json ({"summary": {...}, "queries": [...]}), DIR/ablation.json
(BPnP refinement vs RANSAC only vs pycolmap refinement), results.txt, cumulative.png.

    python pipelines/strecha.py --scene ../shared/data/strecha_fountain_P11 --output outputs/fountain
"""
import argparse
import logging
from pathlib import Path

from hloc_bpnp.protocols.leave_one_out import run_leave_one_out_benchmark
from hloc_bpnp.io.datasets import read_strecha


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scene", type=Path, required=True, help="Strecha scene folder (images/, gt_dense_cameras/)")
    p.add_argument("--output", type=Path, required=True)
    p.add_argument("--config", default="default", help="localization preset (configs/localization)")
    p.add_argument("--mapping", default="default", help="mapping preset (configs/mapping)")
    p.add_argument("--queries", nargs="*", help="hold out only these images (default: all)")
    p.add_argument("--no-ablation", action="store_true")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s %(name)s] %(message)s", datefmt="%H:%M:%S")
    scene = read_strecha(args.scene)
    return run_leave_one_out_benchmark(scene, args.output, f"Strecha {args.scene.name}: leave-one-out",
                                       args.mapping, args.config, args.queries, not args.no_ablation)


if __name__ == "__main__":
    main()
