"""``hloc-bpnp synth``: generate a synthetic textured scene with exact ground truth.

Writes OUTPUT/images/, depth/, sfm_gt/ (COLMAP GT model), map_list.txt,
query_list_with_intrinsics.txt and scene.json (see hloc_bpnp.synthetic.layout_io).
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

logger = logging.getLogger("hloc_bpnp.synth")


def register(subparsers, help_text: str) -> None:
    from ..config import list_configs

    p = subparsers.add_parser("synth", help=help_text, description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output", type=Path, required=True, help="output folder")
    p.add_argument("--preset", default="facades",
                   help=f"preset in configs/synthetic/ {list_configs('synthetic')} or a YAML path "
                        "(default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    p.add_argument("--num-map", type=int, default=None, help="number of map views")
    p.add_argument("--num-query", type=int, default=None, help="number of query views")
    p.add_argument("--width", type=int, default=None, help="image width (pixels)")
    p.add_argument("--height", type=int, default=None, help="image height (pixels)")
    p.add_argument("--camera-model", default=None,
                   help="COLMAP camera model of all views (e.g. PINHOLE, SIMPLE_RADIAL, OPENCV)")
    p.add_argument("--distortion", type=float, nargs="*", default=None,
                   help="distortion coefficients in COLMAP order for --camera-model")
    p.add_argument("--overwrite", action="store_true", help="replace an existing scene in OUTPUT")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..config import load_config, merge
    from ..synthetic import generate_scene

    conf = load_config("synthetic", args.preset)
    over = {"path": {}, "camera": {}}
    if args.num_map is not None:
        over["path"]["num_map"] = args.num_map
    if args.num_query is not None:
        over["path"]["num_query"] = args.num_query
    for key, val in (("width", args.width), ("height", args.height), ("model", args.camera_model)):
        if val is not None:
            over["camera"][key] = val
    if args.distortion is not None:
        over["camera"]["distortion"] = list(args.distortion)
    if args.camera_model is not None and args.distortion is None:
        over["camera"]["distortion"] = []
    conf = merge(conf, over)
    if (args.output / "scene.json").exists() and not args.overwrite:
        raise ValueError(f"{args.output} already holds a synthetic scene; pass --overwrite to replace it")
    syn = generate_scene(conf, seed=args.seed, progress=True)
    preset = Path(args.preset).stem
    syn.preset = preset
    syn.scene.metadata["preset"] = preset
    syn.write(args.output, overwrite=args.overwrite)
    logger.info("synthetic scene %r (seed %d): %d map + %d query images in %s",
                preset, args.seed, len(syn.map_names), len(syn.query_names), args.output)
    return 0
