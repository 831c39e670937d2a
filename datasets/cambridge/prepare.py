"""Check a downloaded copy of the Cambridge Landmarks scene (KingsCollege, OldHospital, ShopFacade, StMarysChurch, GreatCourt) and write, under --output,
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
    p.add_argument("scene_dir", type=Path, help="e.g. datasets/cambridge/KingsCollege")
    p.add_argument("--output", type=Path, required=True)
    p.add_argument("--intrinsics", type=Path, default=None,
                   help="optional hloc query list with the cameras of all images (else the NVM's)")
    p.add_argument("--radial", default="fit", choices=["fit", "first_order", "ignore"])
    args = p.parse_args(argv)
    from hloc_bpnp.io.datasets import read_cambridge

    scene = read_cambridge(args.scene_dir, "all", intrinsics=args.intrinsics, radial=args.radial)
    split = scene.metadata["split"]
    reference = scene.subset([n for n, s in split.items() if s == "train"])
    queries = {im.name: im.camera for im in scene if split[im.name] == "test"}
    write_reference_outputs(reference, queries, args.output)
    # ground truth of the test images, for evaluation (hloc results format)
    from hloc_bpnp.io.hloc_text import write_results

    write_results(args.output / "queries_gt.txt", {im.name: im.pose for im in scene if split[im.name] == "test"})
    return 0


if __name__ == "__main__":
    sys.exit(main())
