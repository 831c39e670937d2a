"""Check a downloaded copy of the Sacre Coeur (hloc demo subset of the Image Matching Challenge 2021) and write, under --output,
the COLMAP reference model (``reference_model/``) and the hloc query list
(``queries_with_intrinsics.txt``). Never downloads anything; see README.md here.
"""
import argparse
import logging
import sys
from pathlib import Path


def main(argv=None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("root", type=Path, help="folder with mapping/ and query/ (optionally query_extra_lightglue/)")
    p.add_argument("--output", type=Path, required=True)
    p.add_argument("--focal_factor", type=float, default=1.2,
                   help="prior focal length = factor * max(W, H) (COLMAP's default prior; no EXIF here)")
    args = p.parse_args(argv)
    import torch

    from hloc_bpnp.geometry import Camera
    from hloc_bpnp.io.datasets._common import image_size
    from hloc_bpnp.io.hloc_text import write_query_list

    mapping = sorted((args.root / "mapping").glob("*.jpg"))
    if not mapping:
        raise SystemExit(f"no mapping/*.jpg under {args.root}")
    queries = {}
    for sub in ("query", "query_extra_lightglue"):
        for f in sorted((args.root / sub).glob("*.jpg")):
            w, h = image_size(f)
            params = torch.tensor([args.focal_factor * max(w, h), w / 2, h / 2, 0.0], dtype=torch.float64)
            queries[f"{sub}/{f.name}"] = Camera("SIMPLE_RADIAL", w, h, params)
    if not queries:
        raise SystemExit(f"no query/*.jpg under {args.root}")
    # no ground truth: the reference model comes from SfM on mapping/ (hloc-bpnp map building)
    (args.output).mkdir(parents=True, exist_ok=True)
    (args.output / "mapping_images.txt").write_text("".join(f"mapping/{f.name}\n" for f in mapping))
    qlist = write_query_list(args.output / "queries_with_intrinsics.txt", queries)
    logging.info("%d mapping images listed; %d queries with prior intrinsics in %s", len(mapping), len(queries), qlist)
    return 0


if __name__ == "__main__":
    sys.exit(main())
