"""``hloc-bpnp map``: build a localization map from a folder of images and save it.

With ``--reference`` (a COLMAP model holding the ground-truth cameras and poses of the map
images) the 3D points are triangulated with those poses fixed; without it, incremental SfM
estimates poses and intrinsics from the images alone (the largest model is kept).
Images listed in ``--query-list`` are left out of the map; with ``--image-list`` only the listed
images are mapped (e.g. every 10th frame of a video's folder).
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

from ..io.json_io import dumps_json
from .ray_options import add_ray_options

logger = logging.getLogger("hloc_bpnp.map")


def register(subparsers, help_text: str) -> None:
    p = subparsers.add_parser("map", help=help_text, description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=Path, required=True, help="image folder (names relative to it)")
    p.add_argument("--output", type=Path, required=True, help="map folder to write")
    p.add_argument("--reference", type=Path, default=None,
                   help="COLMAP model with known cameras + poses: triangulate instead of SfM")
    p.add_argument("--query-list", type=Path, default=None,
                   help="hloc query list; these images are excluded from the map")
    p.add_argument("--image-list", type=Path, default=None,
                   help="hloc image list (one name per line, relative to --images): map only these images")
    p.add_argument("--conf", default=None,
                   help="mapping preset in configs/mapping/ or YAML path "
                        "(default: 'default' with --reference, else 'sfm')")
    p.add_argument("--features", default=None, help="feature preset (configs/features/), e.g. sift")
    p.add_argument("--matcher", default=None, help="matcher preset (configs/matchers/), e.g. mnn_ratio")
    p.add_argument("--pairs", choices=("poses", "exhaustive", "retrieval"), default=None,
                   help="how to choose image pairs to match")
    p.add_argument("--num-pairs", type=int, default=None, help="pairs per image (poses, retrieval)")
    p.add_argument("--camera-mode", choices=("auto", "single", "per_image"), default=None,
                   help="SfM only: which images share intrinsics")
    p.add_argument("--workdir", type=Path, default=None,
                   help="keep the COLMAP database and the per-image features here (a killed run resumes)")
    add_ray_options(p, "distributed extraction",
                    "extract features on N Ray actors (0: in this process); this process alone writes files")
    p.set_defaults(func=run)


def _overrides(args) -> dict:
    over: dict = {}
    if args.features:
        over["features"] = args.features
    if args.matcher:
        over["matcher"] = args.matcher
    pairs = {}
    if args.pairs:
        pairs["method"] = args.pairs
    if args.num_pairs is not None:
        if args.num_pairs < 1:
            raise ValueError(f"--num-pairs must be >= 1, got {args.num_pairs}")
        pairs["num_pairs"] = args.num_pairs
    if pairs:
        over["pairs"] = pairs
    return over


def _warn_queries_in_reference(reference: Path, names, query_list) -> None:
    """Warn when the reference model holds images that a query list beside it names (they
    would enter the map, and their own keyframe would be retrieved at localization)."""
    if query_list is not None:
        return
    from ..io.hloc_text import read_query_list

    for cand in (reference.parent / "query_list_with_intrinsics.txt", reference / "query_list_with_intrinsics.txt"):
        if cand.is_file():
            both = sorted(set(read_query_list(cand)) & set(names))
            if both:
                logger.warning("%d images of the reference %s are queries listed in %s (e.g. %s): they go into the "
                               "map unless you pass --query-list %s (or use a map-only reference, e.g. sfm_map/)",
                               len(both), reference, cand, both[:3], cand)
            return


def _cached_features(args, conf, names):
    """With --workers: features extracted on Ray actors; with --workdir: features cached per
    image under WORKDIR/features (a killed run resumes). Else None (extracted by the builder)."""
    if getattr(args, "workers", 0):
        from ..distributed import extract_features_distributed

        cache = None if args.workdir is None else args.workdir / "features"
        return extract_features_distributed(conf["features"], names, args.images, workers=args.workers,
                                            cache_dir=cache, threads_per_worker=args.threads_per_worker,
                                            gpus_per_worker=args.gpus_per_worker, num_cpus=args.ray_num_cpus,
                                            ray_address=args.ray_address)
    if args.workdir is None:
        return None
    from ..mapping.build import extract_features_cached

    return extract_features_cached(conf["features"], names, args.images, args.workdir / "features")


def run(args) -> int:
    from ..io.colmap import scene_from_model
    from ..mapping.build import build_map_from_poses, build_map_sfm, list_images, mapping_config

    if getattr(args, "workers", 0) < 0:
        raise ValueError(f"--workers must be >= 0, got {args.workers}")
    if not args.images.is_dir():
        raise FileNotFoundError(f"--images: folder {args.images} does not exist")
    exclude = set()
    if args.query_list is not None:
        from ..io.hloc_text import read_query_list

        exclude = set(read_query_list(args.query_list))
        logger.info("Excluding %d query images listed in %s", len(exclude), args.query_list)
    include = None
    if getattr(args, "image_list", None) is not None:
        from ..io.hloc_text import read_image_list

        include = read_image_list(args.image_list)
        missing = [n for n in include if not (args.images / n).is_file()]
        if missing:
            raise FileNotFoundError(f"--image-list {args.image_list}: {len(missing)} images not found under "
                                    f"{args.images}: {missing[:5]}")
        logger.info("Mapping only the %d images listed in %s", len(include), args.image_list)
    conf = mapping_config(args.conf or ("default" if args.reference else "sfm"), **_overrides(args))
    if args.reference is not None:
        scene = scene_from_model(args.reference, args.images)
        _warn_queries_in_reference(args.reference, scene.names, args.query_list)
        keep = set(include) if include is not None else set(scene.names)
        names = [n for n in scene.names if n not in exclude and n in keep]
        missing = [n for n in names if not (args.images / n).is_file()]
        if missing:
            raise FileNotFoundError(f"{len(missing)} reference images not found under {args.images}: {missing[:5]}")
        scene = scene.subset(names)
        logger.info("Mapping %d images with known poses from %s", len(scene), args.reference)
        m = build_map_from_poses(scene, args.images, conf, workdir=args.workdir,
                                 features=_cached_features(args, conf, scene.names))
    else:
        names = [n for n in (include if include is not None else list_images(args.images)) if n not in exclude]
        logger.info("SfM on %d images", len(names))
        m = build_map_sfm(args.images, conf, camera_mode=args.camera_mode, names=names, workdir=args.workdir,
                          features=_cached_features(args, conf, names))
    m.save(args.output)
    logger.info("Map: %s", dumps_json(m.stats()))
    return 0
