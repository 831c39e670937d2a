"""Per-query inference costs of `fast_learned` with the map images: XFeat + refiner extraction
(with and without the fused backbone, alternated) and the Lucas-Kanade alignment of N points.

Prints two tables (median milliseconds over alternated repeats). The image is a Middlebury
temple view when ``--image`` is given, else a synthetic texture of the same size.

    python benchmarks/bench_inference.py [--image ../shared/data/middlebury_templeRing_partial/templeR0013.png]
        [--threads 2] [--repeats 15]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def median_ms(fns, repeats: int):
    """Median ms of each callable in ``fns`` (a dict), the callables alternated every repeat."""
    for f in fns.values():
        f()
    times = {k: [] for k in fns}
    for _ in range(repeats):
        for k, f in fns.items():
            t0 = time.perf_counter()
            f()
            times[k].append((time.perf_counter() - t0) * 1e3)
    return {k: statistics.median(v) for k, v in times.items()}


def test_image(path):
    from hloc_bpnp.io.image import read_image

    if path:
        return read_image(Path(path))
    g = np.random.default_rng(0)
    img = g.random((120, 160)).repeat(4, 0).repeat(4, 1)  # 4x4 blocks: texture with corners
    return (np.stack([img] * 3, -1) * 255).astype(np.uint8)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--image", default=None)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=15)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    from hloc_bpnp.features import build_extractor
    from hloc_bpnp.features.patch_lk import align_to_templates, gray_image, structure_tensors

    img = test_image(args.image)
    ex = build_extractor("xfeat_refined")

    def extract(fused):
        def run():
            ex.net.conf["fused_inference"] = fused
            return ex.extract(img)
        return run

    t = median_ms({"fused": extract(True), "plain": extract(False)}, args.repeats)
    ex.net.conf["fused_inference"] = True
    n_kpts = len(ex.extract(img)["keypoints"])
    print(f"XFeat + refiner (`xfeat_refined`), {img.shape[1]}x{img.shape[0]} px, {n_kpts} keypoints, "
          f"{args.threads} threads")
    print("| backbone | extraction (ms) |")
    print("| --- | --- |")
    print(f"| fused (batch norms folded, channels last; the default) | {t['fused']:.1f} |")
    print(f"| plain (`fused_inference: false`) | {t['plain']:.1f} |")

    gray = gray_image(img)
    H, W = gray.shape[-2:]
    g = torch.Generator().manual_seed(0)
    print()
    print("Lucas-Kanade (`align_to_templates`: radius 5, 5 iterations, blur 1 px, shifts <= 3 px) "
          "and `structure_tensors`")
    print("| points | alignment (ms) | structure tensors (ms) |")
    print("| --- | --- | --- |")
    for n in (200, 1200, 4000):
        pts = torch.rand(n, 2, generator=g) * torch.tensor([W - 20.0, H - 20.0]) + 10
        tmpl = torch.randn(n, 121, generator=g)
        t = median_ms({"lk": lambda: align_to_templates(gray, pts, tmpl, 5, 5, 1.0, 3.0, 0.3, return_tensors=True),
                       "st": lambda: structure_tensors(gray, pts, 5, 1.0)}, args.repeats)
        print(f"| {n} | {t['lk']:.1f} | {t['st']:.1f} |")


if __name__ == "__main__":
    main()
