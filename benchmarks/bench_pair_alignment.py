#!/usr/bin/env python
"""How far can keypoint positions go on a posed scene? Prints the median Sampson error (original
px) of the scene's fixed verified matches (the ``sampson_px`` match set of
``pipelines/finetune_real.py``: pretrained XFeat, mutual NN, inliers under the known poses)
when the positions come from

* the pretrained detector, and the shipped refiner (one offset per keypoint);
* photometric alignment of one side of each match to the other, from the detector's and from the
  refiner's positions (:func:`hloc_bpnp.training.match_alignment.align_match_sides`, the
  localizer's Lucas-Kanade settings): a position per MATCH, what a query aligned to a fixed map
  observation gets (``sampson_aligned_px`` of ``pipelines/finetune_real.py``);
* a consensus over all matches of each keypoint (``--rounds`` Jacobi rounds of the mean pairwise
  shift, damped): one position per KEYPOINT, from the detector's or the refiner's positions. It
  keeps :func:`~hloc_bpnp.features.patch_lk.align_patches`' own defaults (NCC >= 0.5, not the
  localizer's 0.3), the settings of the round that measured it (README, "query patch
  alignment").

This is the measurement behind the localizer's ``patch_alignment`` stage (README, fine-tuning,
"query patch alignment"). No pose is used by the alignment; the poses only score.

Every row is also split into the matches that touch the silhouette (a keypoint whose refiner
patch, 9 x 9 network px, is more than ``--dark-fraction`` background darker than
``--dark-level``: the Middlebury objects stand on black) and the interior ones. A silhouette
point is where the surface turns away from the camera, not a fixed point of the surface.

``--relative-pose`` also estimates each pair's relative pose from its matches with each set of
positions (pycolmap LO-RANSAC, then refined on its inliers) and prints the rotation errors.

    python benchmarks/bench_pair_alignment.py --scene ../shared/data/middlebury_templeRing_partial [--relative-pose]
"""
import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hloc_bpnp.config import load_config  # noqa: E402
from hloc_bpnp.features.refiner import load_refiner  # noqa: E402
from hloc_bpnp.localization.patch_alignment import align_patches  # noqa: E402
from hloc_bpnp.training.real import load_real_scene  # noqa: E402
from hloc_bpnp.training.match_alignment import align_match_sides, scene_gray_images  # noqa: E402
from hloc_bpnp.training.refiner_data import cached_refiner_scene  # noqa: E402
from hloc_bpnp.training.refiner_train import match_errors, refiner_outputs  # noqa: E402
from hloc_bpnp.weights import resolve_refiner  # noqa: E402


def consensus(rs, images, pos0, radius, rounds, damping=0.5):
    """One position per keypoint: mean pairwise shift over its matches, ``rounds`` times."""
    m = rs.matches
    pos = pos0.clone()
    for _ in range(rounds):
        S = torch.zeros_like(pos)
        C = torch.zeros(pos.shape[0], dtype=torch.float64)
        for p in torch.unique(rs.match_pair).tolist():
            k = (rs.match_pair == p).nonzero()[:, 0]
            a, b = m[k, 0], m[k, 1]
            ia, ib = images[int(rs.image[a[0]])], images[int(rs.image[b[0]])]
            db, _ = align_patches(ia, ib, pos[a], pos[b], radius=radius)
            da, _ = align_patches(ib, ia, pos[b], pos[a], radius=radius)
            S.index_add_(0, b, db)
            S.index_add_(0, a, da)
            one = torch.ones(k.numel(), dtype=torch.float64)
            C.index_add_(0, a, one)
            C.index_add_(0, b, one)
        pos = pos + damping * S / C.clamp_min(1)[:, None]
    return pos


def pair_problems(scene, rs):
    """Per pair of ``rs``: (its match rows, the two pycolmap cameras, the true relative rotation)."""
    out = []
    for i, (a, b) in enumerate(rs.pairs):
        gt = scene[b].pose.to(torch.float64) @ scene[a].pose.to(torch.float64).inv()
        out.append(((rs.match_pair == i).nonzero()[:, 0], scene[a].camera.to_pycolmap(),
                    scene[b].camera.to_pycolmap(), gt.R))
    return out


def relative_rotation_errors(problems, side_a: torch.Tensor, side_b: torch.Tensor, max_error: float,
                             seed: int = 0) -> np.ndarray:
    """(P,) rotation error (deg) of each pair's relative pose (:func:`pair_problems`) estimated
    from its matches at positions ``side_a``, ``side_b`` (M, 2) original px: pycolmap's
    LO-RANSAC (``max_error`` px, random seed ``seed``), then ``refine_relative_pose`` on its
    inliers; NaN where no pose was found."""
    import pycolmap

    from hloc_bpnp.geometry.metrics import rotation_error_deg
    from hloc_bpnp.geometry.pose import Pose

    opts = pycolmap.RANSACOptions()
    opts.max_error = float(max_error)
    opts.random_seed = int(seed)  # the same draws for every set of positions
    out = np.full(len(problems), np.nan)
    for i, (k, ca, cb, R_gt) in enumerate(problems):
        xa, xb = side_a[k].numpy(), side_b[k].numpy()
        r = pycolmap.estimate_relative_pose(ca, xa, cb, xb, opts)
        if r is None:
            continue
        inl = np.asarray(r["inlier_mask"], bool).reshape(-1, 1)
        r = pycolmap.refine_relative_pose(r["cam2_from_cam1"], ca, xa, cb, xb, inl) or r
        out[i] = float(rotation_error_deg(Pose.from_pycolmap(r["cam2_from_cam1"]).R, R_gt))
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scene", type=Path, required=True, help="Strecha or Middlebury scene folder")
    ap.add_argument("--features", default="xfeat", help="feature preset (its detector, unrefined)")
    ap.add_argument("--refiner", default="xfeat_refiner", help="refiner weights (shipped name or path)")
    ap.add_argument("--radius", type=int, default=5, help="patch half-size, original pixels")
    ap.add_argument("--rounds", type=int, default=4, help="consensus rounds")
    ap.add_argument("--dark-level", type=float, default=0.05, help="background intensity (image in [0, 1])")
    ap.add_argument("--dark-fraction", type=float, default=0.05,
                    help="a keypoint touches the silhouette when more of its patch is darker than --dark-level")
    ap.add_argument("--relative-pose", action="store_true",
                    help="also estimate every pair's relative pose from its matches, per keypoint and per match")
    ap.add_argument("--ransac-px", type=float, default=1.0, help="--relative-pose: RANSAC threshold, px")
    ap.add_argument("--seeds", type=int, default=3, help="--relative-pose: RANSAC seeds (errors: median over them)")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    scene = load_real_scene(args.scene)
    rs = cached_refiner_scene(args.scene, load_config("features", args.features), 9, None, scene=scene,
                              pose_problems=False)
    images = scene_gray_images(rs, scene.image_dir)
    sel = torch.arange(rs.matches.shape[0])
    m = rs.matches
    zero = torch.zeros(m.shape[0], 2, dtype=torch.float64)

    def sampson(pos):  # positions (N_keypoints, 2) original px -> per-match errors
        off = (pos - rs.base) / rs.scale
        return match_errors(rs, sel, {0: off[m[:, 0]], 1: off[m[:, 1]]}).numpy()

    rows = []
    e0 = match_errors(rs, sel, {0: zero, 1: zero}).numpy()
    rows.append(("pretrained detector", e0, 0.0))
    ref = load_refiner(resolve_refiner(args.refiner, None))
    with torch.no_grad():
        off, _ = refiner_outputs(ref, rs, torch.arange(rs.base.shape[0]))
    pos_ref = rs.base + off.double() * rs.scale
    rows.append(("refiner (one offset per keypoint)", sampson(pos_ref), 0.0))
    t = time.time()
    lk = {"radius": args.radius}
    D0, _ = align_match_sides(rs, images, rs.base, lk)
    rows.append(("one side of each match aligned to the other", match_errors(
        rs, sel, {0: zero, 1: D0 / rs.scale[m[:, 1]]}).numpy(), time.time() - t))
    t = time.time()
    D1, _ = align_match_sides(rs, images, pos_ref, lk)
    rows.append(("the same from the refiner's positions", match_errors(
        rs, sel, {0: off[m[:, 0]].double(), 1: off[m[:, 1]].double() + D1 / rs.scale[m[:, 1]]}).numpy(),
        time.time() - t))
    sides = {"pretrained detector": (rs.base[m[:, 0]], rs.base[m[:, 1]]),
             "refiner": (pos_ref[m[:, 0]], pos_ref[m[:, 1]]),
             "detector, one side aligned": (rs.base[m[:, 0]], rs.base[m[:, 1]] + D0),
             "refiner, one side aligned": (pos_ref[m[:, 0]], pos_ref[m[:, 1]] + D1)}
    for label, start in (("detector", rs.base), ("refiner", pos_ref)):
        t = time.time()
        pos = consensus(rs, images, start, args.radius, args.rounds)
        rows.append((f"consensus per keypoint from the {label}, {args.rounds} rounds", sampson(pos), time.time() - t))

    dark = (rs.patches[:, 0] < args.dark_level).float().mean((1, 2)) > args.dark_fraction
    sil = (dark[m[:, 0]] | dark[m[:, 1]]).cpu().numpy()
    print(f"\n{scene.name if hasattr(scene, 'name') else args.scene.name}: {m.shape[0]} matches, "
          f"{len(images)} images, patches {2 * args.radius + 1}x{2 * args.radius + 1}; "
          f"{sil.mean():.1%} of the matches touch the silhouette")
    print(f"{'positions':58s} {'median Sampson px':>18s} {'ratio':>7s} {'interior':>9s} {'ratio':>7s} "
          f"{'silhouette':>10s} {'ratio':>7s} {'seconds':>8s}")
    for label, e, s in rows:
        parts = [(np.median(x) if x.size else float("nan"), np.median(x0) if x0.size else float("nan"))
                 for x, x0 in ((e, e0), (e[~sil], e0[~sil]), (e[sil], e0[sil]))]
        cells = " ".join(f"{a:{w}.4f} {a / b:7.3f}" for (a, b), w in zip(parts, (18, 9, 10)))
        print(f"{label:58s} {cells} {s:8.1f}")
    if args.relative_pose:
        problems = pair_problems(scene, rs)
        errs = {k: np.median([relative_rotation_errors(problems, a, b, args.ransac_px, seed)
                              for seed in range(args.seeds)], axis=0) for k, (a, b) in sides.items()}
        r0 = errs["pretrained detector"]
        print(f"\nrelative pose of each of the {len(rs.pairs)} pairs from its matches (LO-RANSAC at "
              f"{args.ransac_px:g} px, then refined on its inliers; per pair the median over {args.seeds} "
              f"seeds), rotation error:")
        print(f"{'positions':30s} {'median deg':>11s} {'geometric mean of the ratio per pair':>37s} {'better on':>10s}")
        for k, e in errs.items():
            ok = np.isfinite(e) & np.isfinite(r0) & (r0 > 0) & (e > 0)
            print(f"{k:30s} {np.nanmedian(e):11.4f} {np.exp(np.mean(np.log(e[ok] / r0[ok]))):37.3f} "
                  f"{int((e[ok] < r0[ok]).sum()):>4d} / {int(ok.sum())}")


if __name__ == "__main__":
    main()
