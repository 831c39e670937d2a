"""Prepare a Strecha multi-view benchmark scene (fountain-P11, Herz-Jesu-P8, ...) for
leave-one-out localization: every image is both in the reference model and a query."""
import sys
from pathlib import Path

from hloc_bpnp.io.datasets.prepare import prepare_cli, require_files, write_reference_outputs

DATASET = "a Strecha multi-view benchmark scene (fountain-P11, Herz-Jesu-P8, ...)"


def add_arguments(p):
    p.add_argument("scene_dir", type=Path, help="folder with images/ and gt_dense_cameras/")


def prepare(args):
    from hloc_bpnp.io.datasets import read_strecha

    scene = read_strecha(args.scene_dir)
    require_files(scene.image_dir, [im.name for im in scene], "images listed in gt_dense_cameras")
    write_reference_outputs(scene, {im.name: im.camera for im in scene}, args.output)


def main(argv=None) -> int:
    return prepare_cli(DATASET, add_arguments, prepare, argv)


if __name__ == "__main__":
    sys.exit(main())
