"""Leave-one-out localization on a posed scene (Strecha, Middlebury, SfM models, ...).

For each held-out image: a map is triangulated from the OTHER images with their poses fixed,
the held-out image is localized with its own intrinsics, and compared with its pose.

Work shared by all folds is done once per scene: feature extraction of every image, matching
of every pair and its verification against the known epipolar geometry (both depend only on
the two images). A fold only drops the pairs of its held-out image, re-triangulates (poses
fixed), refits the retrieval vocabulary on its own map images (no information from the query
leaks into its map) and localizes the query from its already extracted features.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Dict, Mapping, Optional, Sequence, Union

import numpy as np

from tqdm import tqdm

from ..config import merge
from ..io.scene import Scene

logger = logging.getLogger(__name__)


def leave_one_out(
    scene: Scene,
    images=None,
    mapping_conf: Union[str, Dict, None] = "default",
    loc_conf: Union[str, Dict, None] = "default",
    queries: Optional[Sequence[str]] = None,
    loc_variants: Optional[Dict[str, Dict]] = None,
    progress: bool = True,
    features: Optional[Dict] = None,
    fold_hook=None,
):
    """Run the leave-one-out protocol.

    Args:
        scene: images with cameras and ground-truth poses (cam_from_world).
        images: image folder or name -> array; default ``scene.image_dir``.
        mapping_conf: mapping preset / dict (features, matcher, pairs, verification, ...).
        loc_conf: localization preset / dict.
        queries: the images to hold out (default: all).
        loc_variants: optional {label: localization-conf overrides} evaluated on the SAME
            fold maps and query features (e.g. refinement on/off); the first label is the main one.
        features: pre-extracted name -> features (torch tensors, as ``extract_features``
            returns) to use instead of extracting with the mapping config's extractor.
        fold_hook: called as ``fold_hook(query, fold_map, {label: LocalizationResult})`` after
            each fold (e.g. to evaluate poses from a limited number of the query's inliers).
    Returns:
        (results: {label: {name: LocalizationResult}}, timings: dict of seconds per stage).
    """
    from ..config import load_config
    from ..localization import LocalizationResult, Localizer, keypoint_noise, localization_config
    from ..localization.patch_alignment import MapImages, resolve_enabled
    from ..mapping import Map, extract_features, make_pairs, match_pairs, mapping_config, verify_pairs
    from ..mapping.build import features_to_numpy, resolve_presets
    from ..mapping.keypoint_adjustment import adjust_if_enabled
    from ..mapping.point_triangulation import weigh_points_if_enabled
    from ..mapping.reconstruction import triangulate_known_poses

    conf = resolve_presets(mapping_config(mapping_conf))
    images = scene.image_dir if images is None else images
    names = scene.names
    queries = list(queries) if queries is not None else list(names)
    if len(names) < 4:
        raise ValueError(f"leave_one_out needs >= 4 posed images (3 for the map), got {len(names)}")
    base_loc = merge(load_config("localization", loc_conf) if loc_conf else {}, {})
    loc_variants = loc_variants or {"default": {}}
    timings = {}

    t0 = time.time()
    feats_t = {}
    feat_time = {}
    from ..features import build_extractor

    if features is not None:
        missing = [n for n in names if n not in features]
        if missing:
            raise ValueError(f"leave_one_out: no features given for images {missing[:5]}")
        feats_t = {n: features[n] for n in names}
        feat_time = {n: 0.0 for n in names}
    else:
        extractor = build_extractor(conf["features"])
        for n in tqdm(names, desc="extraction", disable=not progress):
            t = time.perf_counter()
            feats_t.update(extract_features(extractor, [n], images, progress=False))
            feat_time[n] = time.perf_counter() - t
    feats = features_to_numpy(feats_t)
    timings["extraction_per_image"] = (time.time() - t0) / len(names)
    qfeats = feats
    if base_loc.get("query_features"):  # queries extracted differently (e.g. smaller) than the map
        qextractor = build_extractor(merge(load_config("features", conf["features"]), base_loc["query_features"]))
        qfeats = {}
        for n in tqdm(queries, desc="query extraction", disable=not progress):
            t = time.perf_counter()
            qfeats.update(features_to_numpy(extract_features(qextractor, [n], images, progress=False)))
            feat_time[n] = time.perf_counter() - t

    t0 = time.time()
    pairs = make_pairs(names, conf["pairs"], poses=scene, features=feats)
    matches = match_pairs(conf["matcher"], pairs, feats_t, progress)
    timings["matching_per_pair"] = (time.time() - t0) / max(len(pairs), 1)
    cameras = {im.name: im.camera for im in scene}
    poses = {im.name: im.pose for im in scene}
    geoms = verify_pairs(matches, feats, cameras, poses, conf["verification"], progress=progress)

    results = {label: {} for label in loc_variants}
    t_tri, t_loc = [], []
    map_images = None  # one image cache for every fold's localizers (patch alignment)
    for q in tqdm(queries, desc="leave-one-out folds", disable=not progress):
        others = [n for n in names if n != q]
        keep = lambda pr: q not in pr  # noqa: E731
        t = time.time()
        reference = scene.subset(others).to_reconstruction()
        rec = triangulate_known_poses(
            reference, {n: feats[n] for n in others}, {p: m for p, m in matches.items() if keep(p)},
            {p: g for p, g in geoms.items() if keep(p)}, options=conf["triangulation"])
        weigh_points_if_enabled(rec, feats, conf)
        if conf["keypoint_adjustment"]["enabled"] and map_images is None:
            map_images = MapImages(images)
        # the fold's own tracks, from its map images only
        fold_feats, normals = adjust_if_enabled(rec, {n: feats[n] for n in others}, map_images,
                                                conf["keypoint_adjustment"])
        map_ = Map.from_reconstruction(rec, fold_feats, conf, point_normals=normals)
        t_tri.append(time.time() - t)
        for label, override in loc_variants.items():
            lconf = localization_config(merge(base_loc, override))
            align = resolve_enabled(lconf["patch_alignment"], True)  # the scene's images are the map images
            if align and map_images is None:
                map_images = MapImages(images)
            loc = Localizer(map_, lconf, map_images=map_images if align else None)
            t = time.perf_counter()
            res = LocalizationResult(name=q, timings={"features": feat_time[q]})
            needs_image = align or keypoint_noise.enabled(lconf)
            qimage = _query_image(images, q) if needs_image else None
            results[label][q] = loc.localize_features(qfeats[q], cameras[q], res, image=qimage)
            t_loc.append(time.perf_counter() - t)
            logger.debug("%s [%s]: success=%s inliers=%d", q, label, res.success, res.num_inliers)
        if fold_hook is not None:
            fold_hook(q, map_, {label: results[label][q] for label in loc_variants})
    timings["map_per_fold"] = sum(t_tri) / len(t_tri)
    timings["localization_per_query"] = sum(t_loc) / len(t_loc)
    return results, timings


#: localization overrides for the refinement ablation (same maps, same query features)
REFINEMENT_ABLATION = {
    "bpnp": {"refinement": {"method": "bpnp"}},
    "ransac only": {"refinement": {"method": "none"}},
    "pycolmap refine": {"refinement": {"method": "pycolmap"}},
}


def run_leave_one_out_benchmark(scene: Scene, output, title: str, mapping_conf="default", loc_conf="default",
                                queries=None, ablation: bool = True, scale_to_cm: Optional[float] = 100.0,
                                progress: bool = True) -> Dict:
    """Leave-one-out + summaries: writes ``results.json`` (main method), ``ablation.json``,
    ``results.txt`` + ``results_log.json`` (hloc format + per-query log) and
    ``cumulative.png`` into ``output``; prints the table; returns {label: summary}.
    """
    from pathlib import Path

    from ..localization import write_results
    from .summary import summarize, write_summary
    from ..evaluation.plot import plot_cumulative
    from ..evaluation.report import format_table

    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    variants = REFINEMENT_ABLATION if ablation else {"bpnp": REFINEMENT_ABLATION["bpnp"]}
    t0 = time.time()
    results, timings = leave_one_out(scene, None, mapping_conf, loc_conf, queries, variants, progress)
    gt = {n: scene[n].pose for n in next(iter(results.values()))}
    summaries, evals = {}, {}
    for label, res in results.items():
        s = summarize(res, gt, scale_to_cm=scale_to_cm, extra={"timings": timings,
                                                                "total_seconds": time.time() - t0})
        summaries[label], evals[label] = s, s["_eval"]
    main = next(iter(results))
    write_summary(summaries[main], output / "results.json")
    write_summary({"methods": {k: v["summary"] for k, v in summaries.items()}}, output / "ablation.json")
    write_results(results[main], output / "results.txt")
    plot_cumulative(evals, output / "cumulative.png")
    print(format_table(evals, title=title, row_header="method"))
    print("timings (s): " + ", ".join(f"{k}={v:.3f}" for k, v in timings.items()))
    return summaries


def _query_image(images, name):
    """The query's uint8 image from an image folder or a name -> array mapping."""
    if isinstance(images, Mapping):
        return np.asarray(images[name])
    from ..io.image import read_image

    return read_image(Path(images) / name)
