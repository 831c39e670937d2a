#!/usr/bin/env python
"""Sacre Coeur (hloc demo subset): full SfM, query localization, leave-one-out.

1. incremental SfM on ``mapping/`` (10 photos, mixed cameras, no EXIF: intrinsics unknown,
   SIMPLE_RADIAL with a 1.2 max(W, H) focal prior refined by bundle adjustment);
2. localize the photos of ``query/`` (and ``query_extra_lightglue/`` if present) with cameras
   guessed from the image size and the focal refined; no GT: the outcome (localized or the
   failure reason, inliers, refined focal) is reported -- a pose is reported only if it passes
   the localizer's acceptance test (min inliers, sane refined focal);
3. leave-one-out on the registered mapping photos against the SfM poses and intrinsics
   (errors in SfM units: the model has no metric scale), BPnP vs the ablations.

    python pipelines/sacre_coeur.py --data ../shared/data/sacre_coeur --output outputs/sacre_coeur

Writes OUTPUT/map/, OUTPUT/results.txt + results_log.json (queries), OUTPUT/results.json
({"summary": {"sfm", "queries", "leave_one_out"}, "queries": [...]}) and OUTPUT/leave_one_out/.
"""
import argparse
import logging
import time
from pathlib import Path

from hloc_bpnp.config import load_config, merge
from hloc_bpnp.protocols.summary import write_summary
from hloc_bpnp.protocols.datasets import format_outcomes, localize_query_list, summarize_outcomes
from hloc_bpnp.protocols.leave_one_out import run_leave_one_out_benchmark
from hloc_bpnp.io.scene import Scene
from hloc_bpnp.localization import Localizer, write_results
from hloc_bpnp.mapping import build_map_sfm, list_images

QUERY_DIRS = ("query", "query_extra_lightglue")
logger = logging.getLogger("pipelines.sacre_coeur")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", "--dataset", dest="data", type=Path, required=True, help="folder with mapping/ and query/")
    p.add_argument("--output", type=Path, required=True)
    p.add_argument("--config", default="default", help="localization preset (configs/localization)")
    p.add_argument("--mapping", default="sfm", help="SfM mapping preset (configs/mapping)")
    p.add_argument("--loo-mapping", default="default", help="mapping preset of the leave-one-out folds")
    p.add_argument("--no-loo", action="store_true", help="skip the leave-one-out stage")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s %(name)s] %(message)s", datefmt="%H:%M:%S")
    args.output.mkdir(parents=True, exist_ok=True)

    t0 = time.time()
    names = list_images(args.data / "mapping")
    map_ = build_map_sfm(args.data / "mapping", args.mapping)
    map_.save(args.output / "map")
    registered = sorted(map_.image_names)
    sfm = {"n_images": len(names), "n_registered": len(registered), "registered": registered,
           "not_registered": sorted(set(names) - set(registered)), "seconds": time.time() - t0,
           **{k: float(v) for k, v in map_.stats().items()}}
    logger.info("SfM registered %d / %d mapping photos", len(registered), len(names))

    # queries: no intrinsics (guessed from the image size), focal refined at localization
    queries = {f"{d}/{f}": None for d in QUERY_DIRS if (args.data / d).is_dir() for f in list_images(args.data / d)}
    conf = merge(load_config("localization", args.config), {"refinement": {"refine_intrinsics": True}})
    results = localize_query_list(Localizer(map_, conf), queries, args.data)
    write_results(results, args.output / "results.txt")
    out = summarize_outcomes(results)
    print(format_outcomes(out, f"Sacre Coeur queries against the SfM map ({len(registered)}/{len(names)} registered)"))

    loo = None
    if not args.no_loo and len(registered) >= 4:
        scene = Scene.from_reconstruction(map_.reconstruction, args.data / "mapping")
        scene = scene.subset([im.name for im in scene if im.pose is not None])
        loo = run_leave_one_out_benchmark(scene, args.output / "leave_one_out",
                                          "Sacre Coeur leave-one-out vs SfM poses (SfM units)",
                                          args.loo_mapping, args.config, scale_to_cm=None)
        loo = {k: v["summary"] for k, v in loo.items()}
    summary = {"sfm": sfm, "queries": out["summary"], "leave_one_out": loo}
    write_summary({"summary": summary, "queries": out["queries"]}, args.output / "results.json")
    return {"summary": summary, "queries": out["queries"]}


if __name__ == "__main__":
    main()
