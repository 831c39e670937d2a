"""Benchmark the BPnP layer: forward/backward time per problem, against autograd through an
unrolled Gauss-Newton loop and pycolmap's refinement (forward only), plus gradient accuracy
(float64, vs central finite differences) and the relative difference to the published
(depth-weighted) BPnP gradient. Backward: exact (full Hessian) and Gauss-Newton.

    python benchmarks/bench_bpnp.py [--quick] [--threads 2] [--device cpu]
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from hloc_bpnp.bpnp import solve_pnp
from hloc_bpnp.bpnp.reference import depth_weighted_grad, unrolled_pose
from hloc_bpnp.bpnp.testing import random_problem
from hloc_bpnp.geometry import Camera, Pose


def _timeit(fn, repeat):
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def bench_case(B, N, device, repeat, unrolled_iters=10):
    pb = random_problem(B, N, noise=1.0, seed=B * 1000 + N, device=device)
    init = pb.pose + 0.01
    leaves = [t.clone().requires_grad_(True) for t in (pb.points2d, pb.points3d, pb.K)]

    def fwd():
        with torch.no_grad():
            solve_pnp(pb.points2d, pb.points3d, pb.K, pose_init=init)

    def bwd_time(exact):
        best = float("inf")
        for _ in range(repeat):
            y = solve_pnp(*leaves, pose_init=init, exact=exact).pose
            t0 = time.perf_counter()
            y.sum().backward()
            best = min(best, time.perf_counter() - t0)
        return best

    t_fwd = _timeit(fwd, repeat)
    t_bwd, t_gn = bwd_time(True), bwd_time(False)

    def unrolled():
        y = unrolled_pose(init, *leaves, iters=unrolled_iters)
        y.sum().backward()

    t_unr = _timeit(unrolled, max(1, repeat // 2))
    t_col = float("nan")
    if B <= 256:
        import pycolmap

        opts = pycolmap.AbsolutePoseRefinementOptions(loss_function_scale=1e8, gradient_tolerance=1e-12)
        probs = []
        for b in range(B):
            K = pb.K[b].cpu()
            cam = Camera("PINHOLE", 640, 480, torch.stack([K[0, 0], K[1, 1], K[0, 2], K[1, 2]])).to_pycolmap()
            probs.append((Pose.from_aa(init[b].cpu()).to_pycolmap(), pb.points2d[b].cpu().numpy(),
                          pb.points3d[b].cpu().numpy(), np.ones(N, dtype=bool), cam))

        def colmap():
            for p in probs:
                pycolmap.refine_absolute_pose(*p, opts)

        t_col = _timeit(colmap, 1)
    return t_fwd / B, t_bwd / B, t_gn / B, t_unr / B, t_col / B


def accuracy(N, seed=0):
    """(relative error of our gradient vs central FD, relative difference to depth-weighted)."""
    pb = random_problem(1, N, noise=1.0, seed=seed)
    v = torch.randn(1, 6, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    X = pb.points3d.clone().requires_grad_(True)
    pose = solve_pnp(pb.points2d, X, pb.K).pose
    (g,) = torch.autograd.grad((pose * v).sum(), X)
    d = torch.randn(X.shape, generator=torch.Generator().manual_seed(seed + 1), dtype=torch.float64)
    f = lambda a: (solve_pnp(pb.points2d, a, pb.K).pose * v).sum()  # noqa: E731
    eps = 1e-5
    fd = (f(pb.points3d + eps * d) - f(pb.points3d - eps * d)) / (2 * eps)
    rel_fd = float(abs((g * d).sum() - fd) / abs(fd))
    dw = depth_weighted_grad(pose, v, pb.points2d, pb.points3d, pb.K)[1]
    rel_dw = float((g - dw).norm() / g.norm())
    return rel_fd, rel_dw


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="reduced grid")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--repeat", type=int, default=3)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    Bs, Ns = ([1, 64, 256], [20, 100]) if args.quick else ([1, 64, 256, 1024], [20, 100, 1000])
    print(f"device={args.device} threads={torch.get_num_threads()} float64, times per problem in ms; "
          "bwd = implicit backward with the exact Hessian, bwd GN = with the Gauss-Newton Hessian; "
          "unrolled = 10 GN iterations fwd+bwd; pycolmap = refine_absolute_pose loop (fwd only)")
    hdr = (f"{'B':>5} {'N':>5} | {'fwd':>8} {'bwd':>8} {'bwd GN':>8} | {'unrolled':>9} | {'pycolmap':>9} | "
           f"{'FD relerr':>9} {'vs DW':>8}")
    print(hdr)
    print("-" * len(hdr))
    acc = {N: accuracy(N) for N in Ns}
    for N in Ns:
        for B in Bs:
            if B * N > 256 * 1000 and args.device == "cpu":
                continue  # > 256k points: skipped on CPU to keep the run short
            f, b, gn, u, c = bench_case(B, N, args.device, args.repeat)
            ra, rd = acc[N]
            print(f"{B:>5} {N:>5} | {f * 1e3:8.3f} {b * 1e3:8.4f} {gn * 1e3:8.4f} | {u * 1e3:9.3f} | {c * 1e3:9.3f} | "
                  f"{ra:9.1e} {rd:8.1e}", flush=True)


if __name__ == "__main__":
    main()
