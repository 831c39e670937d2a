"""Prepare a Middlebury multi-view stereo scene (templeRing, dinoRing, ...) for leave-one-out
localization: every view is both in the reference model and a query."""
import sys
from pathlib import Path

from hloc_bpnp.io.datasets.prepare import prepare_cli, write_reference_outputs

DATASET = "a Middlebury multi-view stereo scene (templeRing, dinoRing, ...)"


def add_arguments(p):
    p.add_argument("scene_dir", type=Path, help="folder with the PNGs and *_par.txt")
    p.add_argument("--pixel_offset", type=float, default=0.5,
                   help="added to the principal point to reach COLMAP's pixel convention (default 0.5)")


def prepare(args):
    from hloc_bpnp.io.datasets import read_middlebury

    scene = read_middlebury(args.scene_dir, pixel_offset=args.pixel_offset)
    if len(scene) == 0:
        raise FileNotFoundError(2, "no image listed in the *_par.txt file exists", str(args.scene_dir))
    write_reference_outputs(scene, {im.name: im.camera for im in scene}, args.output)


def main(argv=None) -> int:
    return prepare_cli(DATASET, add_arguments, prepare, argv)


if __name__ == "__main__":
    sys.exit(main())
