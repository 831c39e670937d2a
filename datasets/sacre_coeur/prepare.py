"""Prepare the Sacre Coeur photos (hloc's demo subset of the Image Matching Challenge 2021):
no ground truth, so the reference model comes from SfM on mapping/ (``hloc-bpnp map``); this
lists the mapping images and writes the queries with prior intrinsics."""
import logging
import sys
from pathlib import Path

from hloc_bpnp.io.datasets.prepare import image_size, prepare_cli

DATASET = "the Sacre Coeur photos (hloc demo subset of the Image Matching Challenge 2021)"


def add_arguments(p):
    p.add_argument("root", type=Path, help="folder with mapping/ and query/ (optionally query_extra_lightglue/)")
    p.add_argument("--focal_factor", type=float, default=1.2,
                   help="prior focal length = factor * max(W, H) (COLMAP's default prior; no EXIF here)")


def prepare(args):
    import torch

    from hloc_bpnp.geometry import Camera
    from hloc_bpnp.io.atomic import atomic_write_text
    from hloc_bpnp.io.hloc_text import write_query_list

    mapping = sorted((args.root / "mapping").glob("*.jpg"))
    if not mapping:
        raise FileNotFoundError(2, "no mapping/*.jpg", str(args.root))
    queries = {}
    for sub in ("query", "query_extra_lightglue"):
        for f in sorted((args.root / sub).glob("*.jpg")):
            w, h = image_size(f)
            params = torch.tensor([args.focal_factor * max(w, h), w / 2, h / 2, 0.0], dtype=torch.float64)
            queries[f"{sub}/{f.name}"] = Camera("SIMPLE_RADIAL", w, h, params)
    if not queries:
        raise FileNotFoundError(2, "no query/*.jpg", str(args.root))
    atomic_write_text(args.output / "mapping_images.txt", "".join(f"mapping/{f.name}\n" for f in mapping))
    qlist = write_query_list(args.output / "queries_with_intrinsics.txt", queries)
    logging.info("%d mapping images listed; %d queries with prior intrinsics in %s", len(mapping), len(queries), qlist)


def main(argv=None) -> int:
    return prepare_cli(DATASET, add_arguments, prepare, argv)


if __name__ == "__main__":
    sys.exit(main())
