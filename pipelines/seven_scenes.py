#!/usr/bin/env python
"""Microsoft 7-Scenes: map by triangulation from the KinectFusion poses of the training
frames, localize the test frames, evaluate against their poses (metres, reported in cm).

    python pipelines/seven_scenes.py --dataset datasets/7scenes --output outputs/7scenes [--scenes chess fire]
    python pipelines/seven_scenes.py --scene datasets/7scenes/chess --output outputs/chess --step 10 --max-queries 50

Writes per scene: map/, results.txt (hloc format) + results_log.json, results.json
({"summary": {...}, "queries": [...]}), cumulative.png; several scenes: OUTPUT/<scene>/ and a
merged OUTPUT/results.json. Intrinsics: PINHOLE f=525, c=(320, 240) (see io/datasets/seven_scenes.py).
"""
import argparse
import logging
from pathlib import Path

from hloc_bpnp.protocols.datasets import resolve_scenes, run_scenes, run_train_test_benchmark
from hloc_bpnp.io.datasets import read_7scenes
from hloc_bpnp.io.datasets.seven_scenes import SCENES
from hloc_bpnp.io.hloc_text import parse_camera_fields


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", type=Path, help="folder holding the scene folders")
    p.add_argument("--scene", type=Path, help="one scene folder (TrainSplit.txt, TestSplit.txt, seq-XX/)")
    p.add_argument("--scenes", nargs="*", help=f"scenes of --dataset to run (default: those present of {SCENES})")
    p.add_argument("--output", type=Path, required=True)
    p.add_argument("--config", default="default", help="localization preset (configs/localization)")
    p.add_argument("--mapping", default="default", help="mapping preset (configs/mapping)")
    p.add_argument("--camera", help="intrinsics of every frame as 'MODEL W H params...' (COLMAP order; "
                   "default PINHOLE 640 480 525 525 320 240)")
    p.add_argument("--step", type=int, default=1, help="map with every STEP-th training frame")
    p.add_argument("--max-queries", type=int, help="localize only N evenly spaced test frames")
    p.add_argument("--reuse-map", action="store_true", help="load OUTPUT/map when it exists")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s %(name)s] %(message)s", datefmt="%H:%M:%S")

    camera = parse_camera_fields("--camera", None, args.camera.split()) if args.camera else None

    def run_one(scene_dir, output):
        train = read_7scenes(scene_dir, "train", camera=camera, step=args.step)
        test = read_7scenes(scene_dir, "test", camera=camera)
        return run_train_test_benchmark(train, test, output, f"7-Scenes {scene_dir.name}", args)

    return run_scenes(resolve_scenes(args.dataset, args.scene, args.scenes, SCENES), args.output, run_one)


if __name__ == "__main__":
    main()
