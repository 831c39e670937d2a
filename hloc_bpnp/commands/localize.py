"""``hloc-bpnp localize``: localize query images against a saved map, or (plugin mode)
from hloc's own artefacts (reference SfM, features/matches HDF5, pairs, query list)."""
from __future__ import annotations

import logging
from pathlib import Path

logger = logging.getLogger(__name__)

IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".tif", ".tiff", ".webp"}


def register(sub, help_text):
    p = sub.add_parser("localize", help=help_text, description=__doc__)
    p.add_argument("--map", type=Path, help="map folder written by `hloc-bpnp map`")
    p.add_argument("--images", type=Path, help="query image folder (names relative to it)")
    p.add_argument("--queries", type=Path,
                   help="hloc query list with intrinsics (`name MODEL W H params`); without it every "
                        "image in --images is a query and its camera is guessed (EXIF or size)")
    p.add_argument("--config", default="default", help="localization preset or YAML path")
    p.add_argument("--output", type=Path, required=True, help="results file (hloc format)")
    p.add_argument("--log", type=Path, help="per-query JSON log (default: <output>_log.json)")
    g = p.add_argument_group("plugin mode (hloc artefacts, no re-extraction)")
    g.add_argument("--hloc-reference", type=Path, help="hloc reference SfM model folder")
    g.add_argument("--hloc-features", type=Path, help="hloc features HDF5 (queries and references)")
    g.add_argument("--hloc-matches", type=Path, help="hloc matches HDF5")
    g.add_argument("--hloc-pairs", type=Path, help="hloc retrieval pairs text file")
    p.set_defaults(func=run)


def _list_images(folder: Path):
    if not folder.is_dir():
        raise FileNotFoundError(f"Query image folder {folder} does not exist")
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.suffix.lower() in IMAGE_EXTS)


def run(args) -> int:
    from ..io.hloc_text import read_query_list
    from ..localization import summarize_failures, write_results

    if args.hloc_reference:
        from ..localization.hloc_plugin import localize_from_hloc

        missing = [n for n in ("hloc_features", "hloc_matches", "hloc_pairs", "queries") if not getattr(args, n)]
        if missing:
            raise ValueError("plugin mode needs " + ", ".join("--" + m.replace("_", "-") for m in missing))
        results = localize_from_hloc(args.hloc_reference, args.hloc_features, args.hloc_matches,
                                     args.hloc_pairs, args.queries, conf=args.config)
    else:
        from ..localization import Localizer
        from ..mapping import Map

        if args.map is None or args.images is None:
            raise ValueError("localize needs --map and --images (or the --hloc-* plugin options)")
        if args.queries:
            cams = read_query_list(args.queries)
            queries = [(n, n, c) for n, c in cams.items()]
        else:
            queries = [(n, n, None) for n in _list_images(args.images)]
            logger.info("No query list: %d images, cameras guessed from EXIF or image size", len(queries))
        loc = Localizer(Map.load(args.map), args.config)
        results = loc.localize_many(queries, image_dir=args.images)
    write_results(results, args.output, args.log)
    n_ok = sum(r.success for r in results.values())
    print(f"localized {n_ok} / {len(results)} queries; failures: {summarize_failures(results) or 'none'}")
    return 0
