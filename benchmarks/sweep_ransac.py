#!/usr/bin/env python
"""Choose the localizer's RANSAC threshold and robust loss by measurement.

Leave-one-out on a Strecha-format scene; every fold's map and the query features are
shared by all variants, so only the pose stage differs. Prints median errors and recall
per (RANSAC max error, refinement loss, loss scale).

    python benchmarks/sweep_ransac.py --scene ../shared/data/strecha_fountain_P11
"""
import argparse
import logging
from pathlib import Path

from hloc_bpnp.evaluation import format_table
from hloc_bpnp.protocols.summary import summarize
from hloc_bpnp.protocols.leave_one_out import leave_one_out
from hloc_bpnp.io.datasets import read_strecha


def variants(thresholds, losses):
    out = {}
    for thr in thresholds:
        for loss, scale in losses:
            out[f"thr {thr:g}px {loss} {scale:g}"] = {
                "ransac": {"max_error_px": thr},
                "refinement": {"method": "bpnp", "loss": loss, "loss_scale_px": scale},
            }
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scene", type=Path, required=True)
    p.add_argument("--mapping", default="default")
    p.add_argument("--thresholds", type=float, nargs="+", default=[1.0, 2.0, 4.0, 8.0, 12.0])
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    scene = read_strecha(args.scene)
    losses = [("cauchy", 1.0), ("cauchy", 2.0), ("huber", 1.0), ("l2", 1.0)]
    var = variants(args.thresholds, losses[:1]) | variants([4.0], losses[1:])
    results, _ = leave_one_out(scene, mapping_conf=args.mapping, loc_variants=var)
    gt = {n: scene[n].pose for n in scene.names}
    evals = {label: summarize(res, gt)["_eval"] for label, res in results.items()}
    print(format_table(evals, title=f"RANSAC threshold / loss sweep on {args.scene.name}", row_header="variant"))


if __name__ == "__main__":
    main()
