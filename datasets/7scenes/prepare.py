"""Check a downloaded copy of the 7-Scenes scene (chess, fire, heads, office, pumpkin, redkitchen, stairs) and write, under --output,
the COLMAP reference model (``reference_model/``) and the hloc query list
(``queries_with_intrinsics.txt``). Never downloads anything; see README.md here.
"""
import argparse
import logging
import sys
from pathlib import Path

from hloc_bpnp.io.datasets._common import write_reference_outputs


def main(argv=None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("scene_dir", type=Path, help="e.g. datasets/7scenes/chess with seq-XX/ unzipped")
    p.add_argument("--output", type=Path, required=True)
    p.add_argument("--step", type=int, default=1, help="keep every step-th reference frame")
    args = p.parse_args(argv)
    from hloc_bpnp.io.datasets import read_7scenes
    from hloc_bpnp.io.hloc_text import write_results

    train = read_7scenes(args.scene_dir, "train", step=args.step)
    test = read_7scenes(args.scene_dir, "test")
    write_reference_outputs(train, {im.name: im.camera for im in test}, args.output)
    write_results(args.output / "queries_gt.txt", {im.name: im.pose for im in test})
    return 0


if __name__ == "__main__":
    sys.exit(main())
