"""``hloc-bpnp visualize``: localize one query against a map and draw the result: the query
with its inliers and the map's 3D points reprojected with the estimated pose and camera, and
the inlier matches against the top retrieved keyframes (failed queries are drawn too).

    hloc-bpnp visualize --map outputs/map --queries outputs/scene/query_list_with_intrinsics.txt \
        --images outputs/scene/images --name query/0000.png --map-images outputs/scene/images --output q.png
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

logger = logging.getLogger(__name__)


def register(sub, help_text):
    p = sub.add_parser("visualize", help=help_text, description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--map", type=Path, required=True, help="map folder written by `hloc-bpnp map`")
    p.add_argument("--images", type=Path, required=True, help="query image folder (names relative to it)")
    p.add_argument("--name", required=True, help="query image name (relative to --images)")
    p.add_argument("--queries", type=Path, default=None,
                   help="hloc query list with intrinsics (default: camera guessed from the image)")
    p.add_argument("--map-images", type=Path, default=None, help="folder of the map images (keyframe panels)")
    p.add_argument("--config", default="default", help="localization preset or YAML path")
    p.add_argument("--keyframes", type=int, default=2, help="keyframe panels (default: %(default)s)")
    p.add_argument("--output", type=Path, required=True, help="PNG to write")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..evaluation.visualize import plot_localization
    from ..io.image import read_image
    from ..localization import Localizer
    from ..mapping import Map

    path = args.images / args.name
    if not path.is_file():
        raise FileNotFoundError(f"--name: query image {path} not found")
    camera = None
    if args.queries is not None:
        from ..io.hloc_text import read_query_list

        cams = read_query_list(args.queries)
        if args.name not in cams:
            raise KeyError(f"{args.queries}: no line for query {args.name!r}")
        camera = cams[args.name]
    m = Map.load(args.map)
    image = read_image(path)
    res = Localizer(m, args.config).localize(image, camera, name=args.name, image_path=path)
    plot_localization(res, m, image, args.map_images, args.output, num_keyframes=args.keyframes)
    logger.info("%s: %s (%d inliers); figure %s", args.name,
                "localized" if res.success else f"FAILED: {res.failure_reason}", res.num_inliers, args.output)
    return 0
