"""The benchmark protocol shared by the Cambridge, 7-Scenes and Aachen pipelines.

1. map: triangulate 3D points from the reference images with their poses and intrinsics
   fixed (:func:`hloc_bpnp.mapping.build_map_from_poses`), saved under ``output/map``;
2. localize every query of a query list (name -> Camera) against that map;
3. write ``results.txt`` (hloc format, names as in the query list) + ``results_log.json``,
   and ``results.json`` = ``{"summary": {...}, "queries": [...]}``: evaluated against the
   ground truth where it exists (:func:`~hloc_bpnp.protocols.summary.summarize`), else
   outcomes only (:func:`summarize_outcomes`: success, inliers, failure reasons).

Everything is in memory; the pipeline scripts only read the dataset and call
:func:`run_dataset_benchmark`.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Union

from ..geometry import Camera, Pose
from ..io.scene import Scene

logger = logging.getLogger(__name__)

PathLike = Union[str, Path]


def select_queries(names: Sequence[str], max_queries: Optional[int]) -> List[str]:
    """At most ``max_queries`` names, evenly spaced over the sorted list (deterministic).

    Args:
        names: query names.
        max_queries: limit (None or <= 0: all).
    """
    names = sorted(names)
    if max_queries is None or max_queries <= 0 or max_queries >= len(names):
        return names
    n = len(names)
    return [names[(i * n) // max_queries] for i in range(max_queries)]


def summarize_outcomes(results: Mapping, extra: Optional[Dict] = None) -> Dict:
    """The ``results.json`` structure for queries WITHOUT ground truth (Aachen, Sacre Coeur).

    Args:
        results: name -> :class:`~hloc_bpnp.localization.LocalizationResult`.
        extra: more summary fields.
    Returns:
        ``{"summary": {"n_queries", "n_localized", "failure_reasons", "median_inliers_localized",
        "seconds_per_query", ...}, "queries": [{"name", "success", "failure_reason",
        "num_inliers", "num_matches", "retrieved", "camera", "timings", "info"}, ...]}``
    """
    from ..localization import summarize_failures
    from ..localization.results import query_seconds

    queries, inliers, times = [], [], []
    for name, r in results.items():
        d = r.to_dict(with_correspondences=False)
        queries.append({k: d[k] for k in ("name", "success", "failure_reason", "num_keypoints", "num_matches",
                                          "num_inliers", "retrieved", "camera", "camera_source", "timings",
                                          "info")})
        if r.pose is not None and r.success:
            queries[-1].update(qvec=d["qvec"], tvec=d["tvec"])
            inliers.append(r.num_inliers)
        times.append(query_seconds(r.timings))
    inliers.sort()
    summary = {
        "n_queries": len(results),
        "n_localized": sum(bool(r.success) for r in results.values()),
        "failure_reasons": summarize_failures(results),
        "median_inliers_localized": float(inliers[len(inliers) // 2]) if inliers else None,
        "seconds_per_query": sum(times) / len(times) if times else None,
    }
    summary.update(extra or {})
    return {"summary": summary, "queries": queries}


def format_outcomes(summary: Dict, title: str) -> str:
    """A plain-text table of a :func:`summarize_outcomes` dict (one row per query)."""
    rows = [title, f"{'query':40s} {'result':32s} {'inliers':>7s} {'matches':>7s}"]
    for q in summary["queries"]:
        status = "localized" if q["success"] else f"FAILED ({q['failure_reason']})"
        rows.append(f"{q['name'][-40:]:40s} {status:32s} {q['num_inliers']:7d} {q['num_matches']:7d}")
    s = summary["summary"]
    rows.append(f"localized {s['n_localized']} / {s['n_queries']}")
    return "\n".join(rows)


def localize_query_list(localizer, queries: Mapping[str, Optional[Camera]], image_dir: PathLike,
                        progress: bool = True) -> Dict:
    """Localize ``{name: Camera or None}`` with images read from ``image_dir / name``
    (None: camera guessed from EXIF / image size). Returns name -> LocalizationResult."""
    return localizer.localize_many([(n, n, cam) for n, cam in queries.items()], image_dir=image_dir,
                                   progress=progress)


def run_dataset_benchmark(
    reference: Scene,
    queries: Mapping[str, Camera],
    output: PathLike,
    title: str,
    query_dir: Optional[PathLike] = None,
    ground_truth: Optional[Mapping[str, Pose]] = None,
    mapping_conf: Union[str, Dict, None] = "default",
    loc_conf: Union[str, Dict, None] = "default",
    max_queries: Optional[int] = None,
    scale_to_cm: Optional[float] = 100.0,
    reuse_map: bool = False,
    progress: bool = True,
) -> Dict:
    """Map from the reference poses, localize the query list, evaluate, write the files.

    Args:
        reference: posed map images (cam_from_world + cameras), ``image_dir`` set.
        queries: name -> Camera of every query (hloc query list), names relative to ``query_dir``.
        output: folder for ``map/``, ``results.txt``, ``results_log.json``, ``results.json``
            and (with ground truth) ``cumulative.png``.
        title: table title.
        query_dir: folder of the query images (default ``reference.image_dir``).
        ground_truth: name -> Pose for the queries; None (Aachen): outcomes only.
        mapping_conf, loc_conf: mapping / localization presets or dicts.
        max_queries: localize only this many (evenly spaced) queries.
        scale_to_cm: scene unit -> cm (metres: 100).
        reuse_map: load ``output/map`` if it exists instead of re-triangulating. Raises
            ``MapConfigMismatch`` (a ValueError naming the differing keys) when that map was
            built with another mapping config or from other reference images.
    Returns:
        the results dict written to ``results.json`` (``{"summary", "queries"}``).
    """
    from ..localization import Localizer, write_results
    from ..mapping import MAP_FILES, Map, build_map_from_poses, check_saved_map_config, resolved_mapping_config
    from .summary import summarize, write_summary

    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    query_dir = reference.image_dir if query_dir is None else Path(query_dir)
    if query_dir is None:
        raise ValueError("run_dataset_benchmark: no query_dir and the reference scene has no image_dir")
    if not queries:
        raise ValueError("run_dataset_benchmark: the query list is empty")
    names = select_queries(list(queries), max_queries)
    if ground_truth is not None:
        missing = [n for n in names if n not in ground_truth]
        if missing:
            raise KeyError(f"{len(missing)} queries have no ground-truth pose, e.g. {missing[:3]}")
    overlap = sorted(set(names) & set(reference.names))
    if overlap:
        raise ValueError(f"{len(overlap)} queries are also map images (leak), e.g. {overlap[:3]}")

    t0 = time.time()
    map_dir = output / "map"
    if reuse_map and (map_dir / MAP_FILES["meta"]).exists():
        check_saved_map_config(map_dir, resolved_mapping_config(mapping_conf), reference.names)
        map_ = Map.load(map_dir)
        logger.info("Reusing %s", map_)
    else:
        map_ = build_map_from_poses(reference, None, mapping_conf, progress=progress)
        map_.save(map_dir)
    t_map = time.time() - t0
    stats = {k: float(v) for k, v in map_.stats().items()}
    if len(map_.points3D) == 0:
        raise RuntimeError(f"The map of {len(reference)} reference images has no 3D point: check poses/intrinsics")

    loc = Localizer(map_, loc_conf)
    t0 = time.time()
    results = localize_query_list(loc, {n: queries[n] for n in names}, query_dir, progress)
    extra = {"mapping_seconds": t_map, "localization_seconds": time.time() - t0, "map": stats,
             "n_map_images": len(reference), "n_queries_total": len(queries)}
    write_results(results, output / "results.txt")
    if ground_truth is not None:
        from ..evaluation.plot import plot_cumulative
        from ..evaluation.report import format_table

        summary = summarize(results, {n: ground_truth[n] for n in names}, scale_to_cm=scale_to_cm, extra=extra)
        plot_cumulative({"bpnp": summary["_eval"]}, output / "cumulative.png")
        print(format_table({"bpnp": summary["_eval"]}, title=title, row_header="method"))
    else:
        summary = summarize_outcomes(results, extra)
        print(format_outcomes(summary, title))
    write_summary(summary, output / "results.json")
    return {k: v for k, v in summary.items() if not k.startswith("_")}


def run_train_test_benchmark(train, test, output: PathLike, title: str, args) -> Dict:
    """Map from the posed ``train`` Scene, localize the ``test`` Scene's images with their
    cameras and evaluate against their poses (Cambridge, 7-Scenes). ``args`` carries the
    pipelines' common options: ``mapping``, ``config``, ``max_queries``, ``reuse_map``."""
    return run_dataset_benchmark(
        train, {im.name: im.camera for im in test}, output, title,
        ground_truth={im.name: im.pose for im in test}, mapping_conf=args.mapping, loc_conf=args.config,
        max_queries=args.max_queries, reuse_map=args.reuse_map)


def merge_scene_summaries(per_scene: Mapping[str, Dict]) -> Dict:
    """One ``{"summary", "queries"}`` dict over several scenes: per-scene summaries under
    ``summary["scenes"]``, totals, and every query tagged with its ``scene``."""
    queries = [{**q, "scene": s} for s, d in per_scene.items() for q in d["queries"]]
    summary = {
        "n_queries": sum(d["summary"]["n_queries"] for d in per_scene.values()),
        "n_localized": sum(d["summary"]["n_localized"] for d in per_scene.values()),
        "scenes": {s: d["summary"] for s, d in per_scene.items()},
    }
    return {"summary": summary, "queries": queries}


def resolve_scenes(dataset: Optional[PathLike], scene: Optional[PathLike], names: Optional[Sequence[str]],
                   known: Sequence[str]) -> Dict[str, Path]:
    """Scene folders to run: ``scene`` alone, or ``dataset/<name>`` for ``names`` (default:
    every folder of ``known`` present under ``dataset``)."""
    if (dataset is None) == (scene is None):
        raise ValueError("give exactly one of --dataset DIR (with scene folders) or --scene DIR")
    if scene is not None:
        scene = Path(scene)
        if not scene.is_dir():
            raise FileNotFoundError(2, "scene folder not found", str(scene))
        return {scene.name: scene}
    dataset = Path(dataset)
    if not dataset.is_dir():
        raise FileNotFoundError(2, "dataset folder not found", str(dataset))
    if names:
        missing = [n for n in names if not (dataset / n).is_dir()]
        if missing:
            raise FileNotFoundError(2, f"scene folders {missing} not found (known: {list(known)})", str(dataset))
        return {n: dataset / n for n in names}
    found = {n: dataset / n for n in known if (dataset / n).is_dir()}
    if not found:
        raise FileNotFoundError(2, f"none of the scenes {list(known)} found", str(dataset))
    return found


def run_scenes(scenes: Mapping[str, Path], output: PathLike, run_one) -> Dict:
    """Run ``run_one(scene_dir, scene_output) -> results dict`` per scene; with several
    scenes, each writes under ``output/<scene>`` and ``output/results.json`` merges them."""
    from .summary import write_summary

    output = Path(output)
    if len(scenes) == 1:
        (name, d), = scenes.items()
        return run_one(d, output)
    per_scene = {name: run_one(d, output / name) for name, d in scenes.items()}
    merged = merge_scene_summaries(per_scene)
    write_summary(merged, output / "results.json")
    return merged
