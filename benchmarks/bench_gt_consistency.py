#!/usr/bin/env python
"""Can a scene's ground truth rank two localization methods? (``protocols.gt_consistency``)

For each ``--mapping`` preset, a map of all the scene's images is triangulated at the
ground-truth poses and bundle-adjusted with the intrinsics constant; the table gives the
reprojection error before and after, and the median correction the images ask of the
ground-truth poses (rotation, centre) once the adjustment's similarity gauge is removed. With
two presets, the second table says whether they ask for the same corrections image by image
(the cosine of their rotation vectors): two unrelated detectors that agree measure an error of
the ground truth, not of either of them.

With ``--setup MAPPING@CONFIG`` (repeatable), every image is also localized leave-one-out
(RANSAC seed 0) and the third table gives, per setup, the median rotation error, how its error
directions line up with the mean correction, and, against the first setup, the median angle
between the two methods' poses. When the methods' poses are closer to each other than to the
ground truth, and the ground truth's own corrections are as large as the errors, the scene's
medians cannot rank the methods. With ``--pseudo-gt`` every setup runs again on the scene whose
poses are the consensus of the presets' bundle adjustments (maps rebuilt from them, errors
against them; ``protocols.gt_consistency.pseudo_ground_truth``): a test of how much of the
scene's error is its ground truth's, not a neutral referee, since the consensus comes from the
same images and features.

    python benchmarks/bench_gt_consistency.py --scene ../shared/data/strecha_fountain_P11 \\
        --mapping default --mapping xfeat_refined \\
        --setup default@default --setup xfeat_refined_adjusted@fast_learned
"""
import argparse
import json
import logging
import sys
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_loc_variants import read_scene  # noqa: E402
from bench_loc_warm import fold_maps  # noqa: E402


def setup_errors(scene, mapping: str, config: str, seed: int = 0, built=None):
    """{"names", "rotation_deg" (N, 3) error vectors, "rotation_error_deg", "center_error"} of a
    leave-one-out run of every image (one fold map per image). ``built``: a dict {mapping: fold
    maps} of this scene, filled and reused, so that setups sharing a mapping preset localize
    against the same maps, built once."""
    from hloc_bpnp.config import load_config
    from hloc_bpnp.geometry.metrics import center_error, rotation_error_vectors
    from hloc_bpnp.geometry.pose import Pose
    from hloc_bpnp.io.image import read_image
    from hloc_bpnp.localization import Localizer
    from hloc_bpnp.localization.patch_alignment import MapImages

    queries = scene.names
    built = {} if built is None else built
    if mapping not in built:
        built[mapping] = fold_maps(scene, mapping, config, queries)
    maps = built[mapping]
    images = MapImages(scene.image_dir)
    conf = load_config("localization", config)
    est, gt = [], []
    for q in tqdm(queries, desc=f"{mapping}@{config}", leave=False):
        loc = Localizer(maps[q], conf, map_images=images)
        loc.conf["ransac"]["seed"] = seed
        res = loc.localize(read_image(Path(scene.image_dir) / q), scene[q].camera, name=q)
        if not res.success:
            raise SystemExit(f"{q}: not localized ({res.failure_reason}) with {mapping} @ {config}")
        est.append(res.pose.to(torch.float64))
        gt.append(scene[q].pose.to(torch.float64))
    E, G = Pose.stack(est).to("cpu"), Pose.stack(gt).to("cpu")
    vec = rotation_error_vectors(E.R, G.R)
    return {"names": queries, "rotation_deg": vec.numpy(), "rotation_error_deg": vec.norm(dim=-1).numpy(),
            "center_error": center_error(E, G).numpy(), "poses": E}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scene", type=Path, required=True, help="Middlebury or Strecha folder")
    p.add_argument("--mapping", action="append", required=True,
                   help="a mapping preset without keypoint adjustment (repeatable), e.g. default, xfeat_refined")
    p.add_argument("--setup", action="append", default=[], metavar="MAPPING@CONFIG",
                   help="also localize every image leave-one-out with this setup (repeatable)")
    p.add_argument("--pseudo-gt", action="store_true",
                   help="also run every setup against the consensus of the presets' bundle adjustments")
    p.add_argument("--loss", default="soft_l1", help="bundle adjustment loss (1 px scale)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", type=Path, default=None, help="write every per-image number here")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(args.threads)
    from hloc_bpnp.protocols.gt_consistency import (correction_agreement, pseudo_ground_truth,
                                                    scene_ground_truth_corrections)

    scene = read_scene(args.scene)
    corr = {m: scene_ground_truth_corrections(scene, m, loss=args.loss) for m in args.mapping}
    print(f"{args.scene.name}: {len(scene)} images; bundle adjustment of a map at the ground-truth poses, "
          f"intrinsics constant, {args.loss} loss")
    print("| mapping preset | 3D points | reprojection px at GT: mean / median | after adjustment | "
          "median correction: rot deg / centre x100 |")
    print("| --- | --- | --- | --- | --- |")
    for m, c in corr.items():
        print(f"| {m} | {c['n_points']} | {c['reprojection_gt']['mean_px']:.3f} / {c['reprojection_gt']['median_px']:.3f}"
              f" | {c['reprojection_adjusted']['mean_px']:.3f} / {c['reprojection_adjusted']['median_px']:.3f}"
              f" | {np.median(c['rotation_error_deg']):.4f} / {100 * np.median(c['center_error']):.4f} |")
    out = {"scene": args.scene.name, "corrections": {m: {k: (v.tolist() if isinstance(v, np.ndarray) else v)
                                                          for k, v in c.items() if k != "adjusted"} for m, c in corr.items()}}
    presets = list(corr)
    if len(presets) > 1:
        print("\n| presets | median cosine of the rotation corrections | median difference deg | per image cosine |")
        print("| --- | --- | --- | --- |")
        for b in presets[1:]:
            ag = correction_agreement(corr[presets[0]], corr[b])
            print(f"| {presets[0]} / {b} | {ag['median_cosine']:.3f} | {ag['median_difference_deg']:.4f} | "
                  f"{' '.join(f'{x:.2f}' for x in ag['cosine'])} |")
    if args.setup:
        mean_corr = {"names": corr[presets[0]]["names"],
                     "rotation_deg": np.mean([c["rotation_deg"] for c in corr.values()], axis=0)}
        errs, built = {}, {}
        for s in args.setup:
            mapping, _, config = s.partition("@")
            if not config:
                raise SystemExit(f"--setup {s!r}: expected MAPPING@CONFIG")
            errs[s] = setup_errors(scene, mapping, config, built=built)
        first = args.setup[0]
        print(f"\n| setup | median rot deg / pos x100 | median cosine with the mean correction | "
              f"against {first}: median cosine of the errors | median angle between the poses deg |")
        print("| --- | --- | --- | --- | --- |")
        for s, e in errs.items():
            ag = correction_agreement(e, mean_corr)
            row = f"| {s} | {np.median(e['rotation_error_deg']):.5f} / {100 * np.median(e['center_error']):.4f} | " \
                  f"{ag['median_cosine']:.2f} |"
            if s == first:
                row += " | |"
            else:
                pa = correction_agreement(e, errs[first])
                row += f" {pa['median_cosine']:.2f} | {pa['median_difference_deg']:.5f} |"
            print(row)
        out["setups"] = {s: {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in e.items() if k != "poses"}
                         for s, e in errs.items()}
        if args.pseudo_gt:
            pseudo, _ = pseudo_ground_truth(scene, presets, corrections=[corr[m] for m in presets])
            built = {}  # the pseudo ground truth's own fold maps
            perr = {s: setup_errors(pseudo, *s.split("@", 1), built=built) for s in args.setup}
            print(f"\nAgainst the pseudo ground truth (the consensus of {', '.join(presets)}; maps rebuilt from it):")
            print(f"| setup | median rot deg / pos x100 | median ratio to {first}: rot / pos | better than it on |")
            print("| --- | --- | --- | --- |")
            for s, e in perr.items():
                r0, p0 = perr[first]["rotation_error_deg"], perr[first]["center_error"]
                print(f"| {s} | {np.median(e['rotation_error_deg']):.5f} / {100 * np.median(e['center_error']):.4f} | "
                      f"{np.median(e['rotation_error_deg']) / np.median(r0):.3f} / "
                      f"{np.median(e['center_error']) / np.median(p0):.3f} | "
                      f"{int((e['rotation_error_deg'] < r0).sum())} / {int((e['center_error'] < p0).sum())} "
                      f"of {len(r0)} |")
            out["pseudo_gt_setups"] = {s: {k: (v.tolist() if isinstance(v, np.ndarray) else v)
                                           for k, v in e.items() if k != "poses"} for s, e in perr.items()}
    if args.json:
        from hloc_bpnp.io.atomic import atomic_write_text

        atomic_write_text(args.json, json.dumps(out, allow_nan=False))


if __name__ == "__main__":
    main()
