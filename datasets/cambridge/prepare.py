"""Prepare a Cambridge Landmarks scene (KingsCollege, OldHospital, ShopFacade, StMarysChurch,
GreatCourt): the reference model of the training images, the test images as queries with their
ground truth."""
import sys
from pathlib import Path

from hloc_bpnp.io.datasets.prepare import prepare_cli, write_ground_truth, write_reference_outputs

DATASET = "a Cambridge Landmarks scene (KingsCollege, OldHospital, ShopFacade, StMarysChurch, GreatCourt)"


def add_arguments(p):
    p.add_argument("scene_dir", type=Path, help="e.g. datasets/cambridge/KingsCollege")
    p.add_argument("--intrinsics", type=Path, default=None,
                   help="optional hloc query list with the cameras of all images (else the NVM's)")
    p.add_argument("--radial", default="fit", choices=["fit", "first_order", "ignore"])


def prepare(args):
    from hloc_bpnp.io.datasets import read_cambridge

    scene = read_cambridge(args.scene_dir, "all", intrinsics=args.intrinsics, radial=args.radial)
    split = scene.metadata["split"]
    reference = scene.subset([n for n, s in split.items() if s == "train"])
    test = [im for im in scene if split[im.name] == "test"]
    write_reference_outputs(reference, {im.name: im.camera for im in test}, args.output)
    write_ground_truth(args.output, test)


def main(argv=None) -> int:
    return prepare_cli(DATASET, add_arguments, prepare, argv)


if __name__ == "__main__":
    sys.exit(main())
