"""Check a downloaded copy of the Strecha multi-view benchmark scene (fountain-P11, Herz-Jesu-P8, ...) and write, under --output,
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
    p.add_argument("scene_dir", type=Path, help="folder with images/ and gt_dense_cameras/")
    p.add_argument("--output", type=Path, required=True)
    args = p.parse_args(argv)
    from hloc_bpnp.io.datasets import read_strecha

    scene = read_strecha(args.scene_dir)
    missing = [im.name for im in scene if not (scene.image_dir / im.name).is_file()]
    if missing:
        raise SystemExit(f"{len(missing)} images listed in gt_dense_cameras are missing under {scene.image_dir}: {missing[:5]}")
    # leave-one-out localization: every image is both in the reference and a query
    write_reference_outputs(scene, {im.name: im.camera for im in scene}, args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
