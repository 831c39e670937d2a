#!/usr/bin/env python
"""Paired leave-one-out of localization variants: every variant localizes the same queries
against the same fold maps with the same matches (``leave_one_out``'s ``loc_variants``), so the
differences come from the variant alone. Prints, per variant, the medians and the per-query
geometric mean of the error ratio against the FIRST variant (fewer queries than a median
needs to be stable: Strecha has 8 and 11).

    # the alignment templates of issue 16's last round (README, "Alignment templates at the 3D
    # points' projections"): earlier templates, then the new defaults
    python benchmarks/bench_loc_variants.py --scene ../shared/data/middlebury_templeRing_partial \\
        --mapping xfeat_refined --config fast_learned_aligned \\
        --variant keypoint '{"patch_alignment": {"template_center": "keypoint", "num_references": 1}}' \\
        --variant projection '{}'

Scenes: Strecha folders (``gt_dense_cameras/``), Middlebury folders (``*_par.txt``), or a COLMAP
model / saved ``hloc-bpnp map`` folder with ``--model-images DIR`` (an SfM map: its poses and
intrinsics are the truth, errors in its units).
"""
import argparse
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hloc_bpnp.config import load_config, merge  # noqa: E402


def read_scene(path: Path, model_images: Path = None):
    from hloc_bpnp.io.datasets import read_middlebury, read_strecha

    if model_images is not None:
        from hloc_bpnp.training.real import load_map_scene

        return load_map_scene(path, model_images)[0]
    if list(path.glob("*_par.txt")):
        return read_middlebury(path)
    if (path / "gt_dense_cameras").is_dir():
        return read_strecha(path)
    raise SystemExit(f"{path}: neither a Middlebury folder (*_par.txt) nor a Strecha folder (gt_dense_cameras/); "
                     f"a COLMAP model or saved map needs --model-images DIR")


def paired_table(results, scene, labels, scale_to_cm=100.0):
    """Rows (label, n_localized, n, median rot deg, median pos (cm; scene units with
    ``scale_to_cm`` None), geo-mean rot, geo-mean pos)."""
    from hloc_bpnp.protocols.summary import summarize

    errs, rows = {}, []
    for k in labels:
        s = summarize(results[k], {n: scene[n].pose for n in results[k]}, scale_to_cm=scale_to_cm)
        q = {r["name"]: (r["rot_err_deg"], r["pos_err_cm"]) for r in s["queries"] if r.get("success", True)}
        errs[k] = q
        rows.append([k, s["summary"]["n_localized"], len(results[k]), s["summary"]["median_rot_deg"],
                     s["summary"]["median_pos_cm"]])
    base = errs[labels[0]]
    for row, k in zip(rows, labels):
        common = [n for n in errs[k] if n in base and min(base[n]) > 0 and min(errs[k][n]) > 0]
        if not common:
            row += [float("nan"), float("nan")]
            continue
        r = np.log(np.array([errs[k][n] for n in common]) / np.array([base[n] for n in common]))
        row += list(np.exp(r.mean(0)))
    return rows


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scene", type=Path, required=True)
    p.add_argument("--model-images", type=Path, default=None,
                   help="--scene is a COLMAP model (or saved map) whose images are in this folder")
    p.add_argument("--mapping", required=True, help="mapping preset (configs/mapping)")
    p.add_argument("--mapping-overrides", default="{}", help="JSON merged over the mapping preset")
    p.add_argument("--config", default="default", help="localization preset every variant starts from")
    p.add_argument("--variant", nargs=2, action="append", metavar=("LABEL", "JSON"), required=True,
                   help="a variant: label and JSON overrides of the localization preset (repeatable; the "
                        "first is the reference of the ratios)")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    import torch

    from hloc_bpnp.protocols.leave_one_out import leave_one_out

    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(args.threads)
    try:
        variants = {label: json.loads(js) for label, js in args.variant}
        mapping = merge(load_config("mapping", args.mapping), json.loads(args.mapping_overrides))
    except json.JSONDecodeError as e:
        raise SystemExit(f"--variant / --mapping-overrides: not JSON: {e}")
    if len(variants) != len(args.variant):
        raise SystemExit("--variant labels must be unique")
    scene = read_scene(args.scene, args.model_images)
    t = time.time()
    results, timings = leave_one_out(scene, None, mapping, args.config, None, variants, progress=True)
    print(f"{args.scene.name}: mapping {args.mapping} @ {args.config}, {time.time() - t:.0f} s; timings (s) "
          + ", ".join(f"{k}={v:.3f}" for k, v in timings.items()))
    metric = args.model_images is None  # an SfM model has no metric scale
    print(f"{'variant':<16} {'loc':>7} {'med rot deg':>12} {'med pos ' + ('cm' if metric else 'unit'):>11} "
          f"{'geo rot':>8} {'geo pos':>8}")
    for label, n_ok, n, rot, pos, gr, gp in paired_table(results, scene, list(variants), 100.0 if metric else None):
        print(f"{label:<16} {n_ok:>3}/{n:<3} {rot:>12.4f} {pos:>11.4f} {gr:>8.3f} {gp:>8.3f}")


if __name__ == "__main__":
    main()
