"""``hloc-bpnp localize``: localize query images against a saved map, or (plugin mode)
from hloc's own artefacts (reference SfM, features/matches HDF5, pairs, query list).

With ``--workers N`` the queries run on N Ray actors (``pip install 'hloc_bpnp[distributed]'``),
each holding the map loaded once; the results file and JSON log are the same as without it,
written in query order as results arrive. ``--resume`` skips the queries of an existing log."""
from __future__ import annotations

import logging
from pathlib import Path

from .ray_options import add_ray_options

logger = logging.getLogger(__name__)

IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".tif", ".tiff", ".webp"}


def register(sub, help_text):
    p = sub.add_parser("localize", help=help_text, description=__doc__)
    p.add_argument("--map", type=Path, help="map folder written by `hloc-bpnp map`")
    p.add_argument("--images", type=Path,
                   help="query image folder (names relative to it); in plugin mode needed only by presets with "
                        "refinement.keypoint_covariance (default, fast_learned)")
    p.add_argument("--queries", type=Path,
                   help="hloc query list with intrinsics (`name MODEL W H params`); without it every "
                        "image in --images is a query and its camera is guessed (EXIF or size)")
    p.add_argument("--config", default=None,
                   help="localization preset or YAML path (default: `default`; in plugin mode without --images, "
                        "`features_only`: `default` without the keypoint weights that read the query images)")
    p.add_argument("--map-images", type=Path, default=None,
                   help="folder of the map's images (names as in the map); needed by presets with "
                        "patch_alignment (e.g. `aligned`, `fast_learned_aligned`; `fast_learned` aligns when "
                        "it is given)")
    p.add_argument("--output", type=Path, required=True, help="results file (hloc format)")
    p.add_argument("--log", type=Path, help="per-query JSON log (default: <output>_log.json)")
    p.add_argument("--resume", action="store_true",
                   help="keep the queries already in the existing log (and results file) and localize the rest")
    d = add_ray_options(p, "distributed", "localize on N Ray actors, each loading the map once (0: in this process)")
    d.add_argument("--chunk-size", type=int, default=None, help="queries per actor call (default: automatic)")
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


def _queries(args):
    from ..io.hloc_text import read_query_list

    if args.queries:
        cams = read_query_list(args.queries)
        return [(n, n, c) for n, c in cams.items()]
    queries = [(n, n, None) for n in _list_images(args.images)]
    logger.info("No query list: %d images, cameras guessed from EXIF or image size", len(queries))
    return queries


def run(args) -> int:
    from ..localization import summarize_failures, write_results
    from ..localization.results import ResultsWriter

    if args.workers < 0:
        raise ValueError(f"--workers must be >= 0, got {args.workers}")
    if args.hloc_reference:
        from ..localization.hloc_plugin import localize_from_hloc

        if args.workers or args.resume:
            raise ValueError("--workers and --resume apply to --map localization, not to the hloc plugin mode")
        missing = [n for n in ("hloc_features", "hloc_matches", "hloc_pairs", "queries") if not getattr(args, n)]
        if missing:
            raise ValueError("plugin mode needs " + ", ".join("--" + m.replace("_", "-") for m in missing))
        conf = args.config
        if conf is None:
            conf = "default" if args.images else "features_only"
            logger.info("hloc plugin mode: preset %r%s", conf, "" if args.images else
                        " (no --images: BPnP without the query images' keypoint weights)")
        results = localize_from_hloc(args.hloc_reference, args.hloc_features, args.hloc_matches,
                                     args.hloc_pairs, args.queries, conf=conf, query_images=args.images)
        write_results(results, args.output, args.log)
    else:
        if args.map is None or args.images is None:
            raise ValueError("localize needs --map and --images (or the --hloc-* plugin options)")
        from ..config import load_config

        args.config = args.config or "default"
        enabled = (load_config("localization", args.config).get("patch_alignment") or {}).get("enabled", False)
        if enabled == "auto" and args.map_images is None:
            logger.info("preset %r aligns the query keypoints to the map images when --map-images is given; "
                        "localizing without", args.config)
        if args.map_images is not None and enabled is False:
            # alignment pays on posed scenes, not on the Sacre Coeur SfM map (README), so it stays
            # a choice: say that the images are not read
            logger.warning("--map-images is read only by presets with patch_alignment (e.g. aligned, "
                           "fast_learned_aligned); preset %r does not align, the map images are not used",
                           args.config)
        queries = _queries(args)
        if args.workers:
            from ..distributed import localize_distributed

            if enabled is True and args.map_images is None:
                raise ValueError(f"localization preset {args.config!r} aligns query keypoints to the map's images "
                                 f"(patch_alignment): pass --map-images DIR")
            results = localize_distributed(args.map, queries, args.config, workers=args.workers,
                                           image_dir=args.images, results_path=args.output, log_path=args.log,
                                           resume=args.resume, chunk_size=args.chunk_size,
                                           threads_per_worker=args.threads_per_worker,
                                           gpus_per_worker=args.gpus_per_worker, num_cpus=args.ray_num_cpus,
                                           ray_address=args.ray_address, map_images=args.map_images)
        else:
            from ..localization import Localizer
            from ..mapping import Map

            writer = ResultsWriter(args.output, args.log, resume=args.resume)
            todo = [q for q in queries if q[0] not in writer.done]
            if len(todo) < len(queries):
                logger.info("Resume: %d of %d queries already done", len(queries) - len(todo), len(queries))
            loc = Localizer(Map.load(args.map), args.config, map_images=args.map_images) if todo else None
            results = loc.localize_many(todo, image_dir=args.images) if todo else {}
            for r in results.values():
                writer.add(r)
            writer.close()
    n_ok = sum(r.success for r in results.values())
    print(f"localized {n_ok} / {len(results)} queries; failures: {summarize_failures(results) or 'none'}")
    return 0
