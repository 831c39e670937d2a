"""Prepare Aachen Day-Night v1.0 / v1.1: the reference model of the database images and the
day and night queries with their intrinsics (no ground truth: it is held by the benchmark)."""
import logging
import sys
from pathlib import Path

from hloc_bpnp.io.datasets.prepare import prepare_cli, write_reference_outputs

DATASET = "Aachen Day-Night v1.0 / v1.1"


def add_arguments(p):
    p.add_argument("root", type=Path, help="folder with images/, 3D-models/, queries/")
    p.add_argument("--version", default="v1.0", choices=["v1.0", "v1.1"])


def prepare(args):
    from hloc_bpnp.io.datasets import read_aachen

    data = read_aachen(args.root, args.version)
    image_dir = data.database.image_dir
    names = data.database.names + list(data.all_queries())
    missing = [n for n in names if not (image_dir / n).is_file()]
    if missing:  # a partial download can still be evaluated on what it has
        logging.warning("%d of %d images missing under %s (e.g. %s)", len(missing), len(names), image_dir, missing[:3])
    write_reference_outputs(data.database, data.all_queries(), args.output)


def main(argv=None) -> int:
    return prepare_cli(DATASET, add_arguments, prepare, argv)


if __name__ == "__main__":
    sys.exit(main())
