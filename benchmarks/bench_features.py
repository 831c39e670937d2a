"""Benchmark: SIFT extraction time per image and NN matching time per pair (batched vs one-by-one).

    python benchmarks/bench_features.py [--repeat 3] [--data ../shared/data]

Prints a table. Extraction runs on a synthetic textured image at 640x480 and 1600 px, and on
two Strecha images at full 3072x2048 when the shared data folder exists.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from hloc_bpnp.features import build_extractor
from hloc_bpnp.matching import build_matcher

ROOT = Path(__file__).resolve().parents[1]


def textured(h: int, w: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    img = torch.zeros(1, 1, h, w)
    for s, a in ((2, 0.5), (6, 0.35), (16, 0.25)):
        n = torch.rand(1, 1, h // s + 2, w // s + 2, generator=g)
        img += a * torch.nn.functional.interpolate(n, size=(h, w), mode="bicubic", align_corners=False)
    return ((img - img.min()) / (img.max() - img.min()))[0]


def best_time(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    ap.add_argument("--k", type=int, default=10)
    args = ap.parse_args()
    print(f"torch threads: {torch.get_num_threads()}")

    print("\n| extraction (sift preset, 4096 kpts) | image | s/image | keypoints |")
    print("| --- | --- | --- | --- |")
    ex = build_extractor("sift", resize_max=None)
    for h, w in ((480, 640), (1067, 1600)):
        img = textured(h, w)
        ex.extract(img)  # warm-up
        t = best_time(lambda: ex.extract(img), args.repeat)
        print(f"| synthetic | {w}x{h} | {t:.3f} | {ex.extract(img)['keypoints'].shape[0]} |")
    strecha = args.data / "strecha_fountain_P11" / "images"
    if strecha.is_dir():
        paths = sorted(strecha.glob("*.jpg"))[:2]
        for name, conf in (("full res", {"resize_max": None}), ("resize_max 1600", {"resize_max": 1600})):
            e = build_extractor("sift", **conf)
            for p in paths:
                t = best_time(lambda: e.extract_path(p), 1)
                n = e.extract_path(p)["keypoints"].shape[0]
                print(f"| Strecha {p.name} ({name}) | 3072x2048 | {t:.3f} | {n} |")

    print(f"\n| matcher | N0 x N1 | one-by-one ms/pair | batched k={args.k} ms/pair | speed-up |")
    print("| --- | --- | --- | --- | --- |")
    g = torch.Generator().manual_seed(0)
    for n in (4096, 2048):
        base = torch.nn.functional.normalize(torch.randn(n, 128, generator=g), dim=-1)
        q = {"descriptors": base, "keypoints": torch.rand(n, 2)}
        refs = []
        for i in range(args.k):
            d = torch.nn.functional.normalize(base + 0.5 * torch.randn(n, 128, generator=g), dim=-1)
            refs.append({"descriptors": d, "keypoints": torch.rand(n, 2)})
        for preset in ("mnn", "ratio", "mnn_ratio", "smnn"):
            m = build_matcher(preset)
            m.match(q, refs[0])
            t1 = best_time(lambda: [m.match(q, r) for r in refs], args.repeat) / args.k
            tb = best_time(lambda: m.match_many(q, refs), args.repeat) / args.k
            print(f"| {preset} | {n}x{n} | {1e3 * t1:.1f} | {1e3 * tb:.1f} | {t1 / tb:.2f}x |")


if __name__ == "__main__":
    main()
