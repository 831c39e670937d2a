#!/usr/bin/env python
"""The README demo: a synthetic scene end to end, with exact ground truth.

1. generate a seeded textured scene (map views + held-out query views, GT poses/intrinsics);
2. build a map from the map views' GT poses (features -> pairs -> matches -> verification
   -> pycolmap triangulation, poses fixed) and a VLAD/FAISS retrieval index;
3. localize every query (retrieval -> matching -> 2D-3D -> LO-RANSAC -> BPnP refinement),
   and, as an ablation on the same map and query features, without refinement and with
   pycolmap's refinement;
4. print the error table and write ``results.txt`` (hloc format), ``results_log.json``,
   ``results.json`` (summary + per query), ``cumulative.png``.

    python pipelines/synthetic.py --output outputs/demo [--preset facades] [--seed 0]
"""
from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

from hloc_bpnp.config import load_config, merge
from hloc_bpnp.evaluation import format_table, plot_cumulative
from hloc_bpnp.protocols.summary import summarize, write_summary
from hloc_bpnp.localization import LocalizationResult, Localizer, write_results
from hloc_bpnp.mapping import build_map_from_poses
from hloc_bpnp.synthetic import generate_scene

logger = logging.getLogger("pipelines.synthetic")

ABLATIONS = {"bpnp": "bpnp", "ransac only": "none", "pycolmap refine": "pycolmap"}


def run(output: Path, preset: str = "facades", seed: int = 0, mapping_conf="default",
        loc_conf="default", ablation: bool = True, progress: bool = True):
    """Run the demo; returns {method: summary dict} (see hloc_bpnp.protocols.summary)."""
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    syn = generate_scene(preset, seed=seed, progress=progress)
    t_gen = time.time() - t0
    logger.info("Scene %s seed %d: %d map + %d query views (%.1f s)", preset, seed,
                len(syn.map_names), len(syn.query_names), t_gen)
    t0 = time.time()
    map_ = build_map_from_poses(syn.map_scene, syn.images, mapping_conf, progress=progress)
    t_map = time.time() - t0
    map_.save(output / "map")

    base = load_config("localization", loc_conf)
    loc = Localizer(map_, base)
    cams = syn.query_cameras()
    gt = {n: syn.scene[n].pose for n in syn.query_names}
    qfeats = {}
    for n in syn.query_names:
        t = time.perf_counter()
        f = loc.extractor.extract(syn.images[n])
        qfeats[n] = ({k: (v.detach().cpu().numpy() if hasattr(v, "detach") else v) for k, v in f.items()},
                     time.perf_counter() - t)

    methods = ABLATIONS if ablation else {"bpnp": "bpnp"}
    summaries, evals = {}, {}
    for label, method in methods.items():
        loc.conf = merge(loc.conf, {"refinement": {"method": method}})
        results = {}
        for n in syn.query_names:
            feats, t_feat = qfeats[n]
            res = LocalizationResult(name=n, timings={"features": t_feat})
            results[n] = loc.localize_features(feats, cams[n], res, image=syn.images[n])
        summ = summarize(results, gt, scale_to_cm=None,
                         extra={"mapping_seconds": t_map, "scene_seconds": t_gen,
                                "map_points": int(len(map_.points3D))})
        summaries[label], evals[label] = summ, summ["_eval"]
        if method == "bpnp":
            write_results(results, output / "results.txt")
            write_summary(summ, output / "results.json")
    print(format_table(evals, title=f"Synthetic '{preset}' seed {seed}: {len(gt)} held-out queries "
                                    f"(errors in scene units; map of {len(map_.points3D)} points)",
                       row_header="method"))
    plot_cumulative(evals, output / "cumulative.png")
    write_summary({"methods": {k: {kk: vv for kk, vv in v.items() if not kk.startswith("_")}
                               for k, v in summaries.items()}}, output / "ablation.json")
    return summaries


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output", type=Path, default=Path("outputs/demo"))
    p.add_argument("--preset", default="facades", help="synthetic preset (configs/synthetic)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--mapping", default="default", help="mapping preset (configs/mapping)")
    p.add_argument("--config", default="default", help="localization preset (configs/localization)")
    p.add_argument("--no-ablation", action="store_true", help="only the BPnP-refined localizer")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s %(name)s] %(message)s", datefmt="%H:%M:%S")
    run(args.output, args.preset, args.seed, args.mapping, args.config, not args.no_ablation)


if __name__ == "__main__":
    main()
