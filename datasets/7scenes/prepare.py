"""Prepare a 7-Scenes scene (chess, fire, heads, office, pumpkin, redkitchen, stairs): the
reference model from the training sequences, the test frames as queries with their ground truth."""
import sys
from pathlib import Path

from hloc_bpnp.io.datasets.prepare import prepare_cli, write_ground_truth, write_reference_outputs

DATASET = "a 7-Scenes scene (chess, fire, heads, office, pumpkin, redkitchen, stairs)"


def add_arguments(p):
    p.add_argument("scene_dir", type=Path, help="e.g. datasets/7scenes/chess with seq-XX/ unzipped")
    p.add_argument("--step", type=int, default=1, help="keep every step-th reference frame")


def prepare(args):
    from hloc_bpnp.io.datasets import read_7scenes

    train = read_7scenes(args.scene_dir, "train", step=args.step)
    test = read_7scenes(args.scene_dir, "test")
    write_reference_outputs(train, {im.name: im.camera for im in test}, args.output)
    write_ground_truth(args.output, test)


def main(argv=None) -> int:
    return prepare_cli(DATASET, add_arguments, prepare, argv)


if __name__ == "__main__":
    sys.exit(main())
