"""Check a downloaded copy of the Aachen Day-Night v1.0 / v1.1 and write, under --output,
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
    p.add_argument("root", type=Path, help="folder with images/, 3D-models/, queries/")
    p.add_argument("--output", type=Path, required=True)
    p.add_argument("--version", default="v1.0", choices=["v1.0", "v1.1"])
    args = p.parse_args(argv)
    from hloc_bpnp.io.datasets import read_aachen

    data = read_aachen(args.root, args.version)
    image_dir = data.database.image_dir
    names = data.database.names + list(data.all_queries())
    missing = [n for n in names if not (image_dir / n).is_file()]
    if missing:
        logging.warning("%d of %d images missing under %s (e.g. %s)", len(missing), len(names), image_dir, missing[:3])
    write_reference_outputs(data.database, data.all_queries(), args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
