"""Nearest-neighbour matching benchmark: one query against k references, the unit-norm path
computed in similarity blocks of query rows (``SIMILARITY_BLOCK`` entries) against one block.

Prints a table of milliseconds per query for mutual NN + ratio test (``fast_learned``'s XFeat
matcher: 4096 query keypoints, 3 keyframes of about 1500 keypoints with a 3D point).

    python benchmarks/bench_matching.py [--threads 2] [--repeats 20]
"""
from __future__ import annotations

import argparse
import time

import torch

import hloc_bpnp.matching.nearest_neighbor as NN


def time_ms(fn, repeats: int) -> float:
    fn()
    t0 = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - t0) / repeats * 1e3


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=20)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(0)
    default_block = NN.SIMILARITY_BLOCK
    print(f"| query kpts | refs x kpts | dim | one block (ms) | blocks of {default_block} (ms) |")
    print("| --- | --- | --- | --- | --- |")
    for n0, k, n1, d in ((4096, 3, 1500, 64), (4096, 10, 1500, 64), (2048, 3, 1000, 128), (8192, 3, 3000, 64)):
        q = torch.nn.functional.normalize(torch.randn(n0, d, generator=g), dim=-1)
        r = torch.nn.functional.normalize(torch.randn(k, n1, d, generator=g), dim=-1)
        run = lambda: NN.nn_match_batched(q, r, None, True, 0.95, None, False, True)  # noqa: E731
        try:
            NN.SIMILARITY_BLOCK = 1 << 40
            one = time_ms(run, args.repeats)
        finally:
            NN.SIMILARITY_BLOCK = default_block
        blocks = time_ms(run, args.repeats)
        print(f"| {n0} | {k} x {n1} | {d} | {one:.1f} | {blocks:.1f} |")


if __name__ == "__main__":
    main()
