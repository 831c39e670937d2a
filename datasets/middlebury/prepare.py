"""Check a downloaded copy of the Middlebury multi-view stereo scene (templeRing, dinoRing, ...) and write, under --output,
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
    p.add_argument("scene_dir", type=Path, help="folder with the PNGs and *_par.txt")
    p.add_argument("--output", type=Path, required=True)
    p.add_argument("--pixel_offset", type=float, default=0.5,
                   help="added to the principal point to reach COLMAP's pixel convention (default 0.5)")
    args = p.parse_args(argv)
    from hloc_bpnp.io.datasets import read_middlebury

    scene = read_middlebury(args.scene_dir, pixel_offset=args.pixel_offset)
    if len(scene) == 0:
        raise SystemExit(f"no image listed in the *_par.txt file exists in {args.scene_dir}")
    write_reference_outputs(scene, {im.name: im.camera for im in scene}, args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
