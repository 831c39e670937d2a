#!/usr/bin/env python
"""Keypoint precision under random homographic warps: prints a table of the median transfer
error (network px of the warped image) per keypoint method.

Each image is warped twice (:func:`hloc_bpnp.training.homography_data.random_homography`), both
warps are extracted, mutual-NN matches whose unrefined transfer error is under 3 px are scored
by ``|H(p_a) - p_b|``. Methods: pretrained XFeat, XFeat + a refiner (default: the shipped one),
kornia SIFT. This is the sensitivity check behind the refiner's ``homography`` term (README,
fine-tuning).

    python benchmarks/bench_homography_consistency.py IMAGE... [--refiner PATH] [--warps 2]
"""
import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hloc_bpnp.config import load_config, merge  # noqa: E402
from hloc_bpnp.features import build_extractor  # noqa: E402
from hloc_bpnp.features.refiner import load_refiner  # noqa: E402
from hloc_bpnp.io.image import read_image  # noqa: E402
from hloc_bpnp.training.homography_data import (DEFAULT_CONF, apply_homography, colmap_homography,  # noqa: E402
                                                random_homography, shrink_image, warp_image)
from hloc_bpnp.training.refiner_data import mutual_nn  # noqa: E402
from hloc_bpnp.weights import resolve_refiner  # noqa: E402


def transfer(fa, fb, H, pa=None, pb=None, max_error=3.0):
    m = mutual_nn(fa["descriptors"], fb["descriptors"])
    if m.shape[0] == 0:
        return torch.zeros(0, dtype=torch.float64)
    e0 = (apply_homography(H, fa["keypoints"][m[:, 0]].double()) - fb["keypoints"][m[:, 1]].double()).norm(dim=-1)
    ok = e0 < max_error
    if pa is None:
        return e0[ok]
    return (apply_homography(H, pa[m[:, 0]].double()) - pb[m[:, 1]].double()).norm(dim=-1)[ok]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("images", type=Path, nargs="+")
    p.add_argument("--refiner", default=None, help="refiner weights (default: the shipped xfeat_refiner)")
    p.add_argument("--warps", type=int, default=2, help="warp pairs per image")
    p.add_argument("--resize-max", type=int, default=640)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    from tqdm import tqdm

    rconf = load_config("features", "xfeat_refined")
    xconf = merge(load_config("features", "xfeat"), {"refiner": None, "resize_max": args.resize_max})
    xf = build_extractor(xconf)
    ref = load_refiner(args.refiner or resolve_refiner(rconf["refiner"], "xfeat_refined"), rconf.get("refiner_conf"))
    sift = build_extractor(merge(load_config("features", "sift"), {"resize_max": args.resize_max}))
    g = torch.Generator().manual_seed(args.seed)
    errs = {"XFeat": [], "XFeat + refiner": [], "kornia SIFT": []}
    for path in tqdm(args.images, desc="warps"):
        src = shrink_image(read_image(path), args.resize_max)
        h, w = src.shape[:2]
        for _ in range(args.warps):
            H1, H2 = random_homography(w, h, g, DEFAULT_CONF), random_homography(w, h, g, DEFAULT_CONF)
            a, b = warp_image(src, H1), warp_image(src, H2)
            H = colmap_homography(H2 @ torch.linalg.inv(H1))
            fa, fb = xf.extract_with_patches(a, ref.patch_size), xf.extract_with_patches(b, ref.patch_size)
            with torch.no_grad():
                ra = fa["keypoints"] + ref(fa["patches"])["offset"] * fa["scale"]
                rb = fb["keypoints"] + ref(fb["patches"])["offset"] * fb["scale"]
            errs["XFeat"].append(transfer(fa, fb, H))
            errs["XFeat + refiner"].append(transfer(fa, fb, H, ra, rb))
            errs["kornia SIFT"].append(transfer(sift.extract(a), sift.extract(b), H))
    print(f"\n{len(args.images)} images x {args.warps} warp pairs (resize_max {args.resize_max})")
    print(f"{'keypoints':18s} {'matches':>8s} {'median px':>10s} {'mean px':>8s}")
    for k, v in errs.items():
        e = torch.cat(v)
        print(f"{k:18s} {e.numel():8d} {float(e.median()):10.3f} {float(e.mean()):8.3f}")


if __name__ == "__main__":
    main()
