#!/usr/bin/env python
"""Cambridge Landmarks: map by triangulation from the GT poses of the training images,
localize the test images, evaluate against their GT poses (metres, reported in cm).

    python pipelines/cambridge.py --dataset datasets/cambridge --output outputs/cambridge [--scenes KingsCollege]
    python pipelines/cambridge.py --scene datasets/cambridge/ShopFacade --output outputs/shop --max-queries 20

Writes per scene: map/, results.txt (hloc format) + results_log.json, results.json
({"summary": {...}, "queries": [...]}), cumulative.png; several scenes: OUTPUT/<scene>/ and a
merged OUTPUT/results.json. Cameras come from the NVM unless --intrinsics gives an hloc query list.
"""
import argparse
import logging
from pathlib import Path

from hloc_bpnp.protocols.datasets import resolve_scenes, run_scenes, run_train_test_benchmark
from hloc_bpnp.io.datasets import read_cambridge
from hloc_bpnp.io.datasets.cambridge import SCENES


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", type=Path, help="folder holding the scene folders")
    p.add_argument("--scene", type=Path, help="one scene folder (dataset_train.txt, dataset_test.txt, ...)")
    p.add_argument("--scenes", nargs="*", help=f"scenes of --dataset to run (default: those present of {SCENES})")
    p.add_argument("--output", type=Path, required=True)
    p.add_argument("--config", default="default", help="localization preset (configs/localization)")
    p.add_argument("--mapping", default="default", help="mapping preset (configs/mapping)")
    p.add_argument("--intrinsics", help="hloc query list with every image's camera, relative to the scene folder")
    p.add_argument("--max-queries", type=int, help="localize only N evenly spaced test images")
    p.add_argument("--reuse-map", action="store_true", help="load OUTPUT/map when it exists")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s %(name)s] %(message)s", datefmt="%H:%M:%S")

    def run_one(scene_dir, output):
        intr = scene_dir / args.intrinsics if args.intrinsics else None
        train = read_cambridge(scene_dir, "train", intrinsics=intr)
        test = read_cambridge(scene_dir, "test", intrinsics=intr)
        return run_train_test_benchmark(train, test, output, f"Cambridge {scene_dir.name}", args)

    return run_scenes(resolve_scenes(args.dataset, args.scene, args.scenes, SCENES), args.output, run_one)


if __name__ == "__main__":
    main()
