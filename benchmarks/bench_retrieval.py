"""Retrieval benchmark: exact (flat) vs IVF-PQ search, and VLAD encoding time.

Database: random-but-clustered unit vectors (D=128 by default); queries are held-out draws
from the same distribution; ground truth is the exact top-k. Prints a table of build time,
queries/s, recall@10 (overlap of the top 10 with the exact top 10) and 1-recall@1.

    python benchmarks/bench_retrieval.py            # 1e5 and 1e6 vectors
    python benchmarks/bench_retrieval.py --quick    # 1e5 only
"""
from __future__ import annotations

import argparse
import logging
import time

import numpy as np

from hloc_bpnp.retrieval import VLAD, GlobalIndex


def clustered(n: int, d: int, num_centres: int, noise: float, rng) -> np.ndarray:
    centres = rng.standard_normal((num_centres, d)).astype(np.float32)
    out = np.empty((n, d), np.float32)
    step = 200_000
    for s in range(0, n, step):  # chunks keep the temporary memory small
        m = min(step, n - s)
        x = centres[rng.integers(0, num_centres, m)] + noise * rng.standard_normal((m, d)).astype(np.float32)
        out[s:s + m] = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out


def bench_index(n: int, d: int, num_queries: int, k: int, ivf_confs, seed: int = 0):
    rng = np.random.default_rng(seed)
    x = clustered(n + num_queries, d, max(100, n // 100), 0.6, rng)
    db, q = x[:n], x[n:]
    names = [str(i) for i in range(n)]
    rows = []

    t0 = time.perf_counter()
    flat = GlobalIndex(d, {"type": "flat"})
    flat.add(names, db)
    build = time.perf_counter() - t0
    t0 = time.perf_counter()
    _, gt = flat.search_ids(q, k)
    dt = time.perf_counter() - t0
    rows.append((n, "flat (exact)", build, num_queries / dt, 1.0, 1.0))
    del flat

    for conf in ivf_confs:
        t0 = time.perf_counter()
        conf = dict(conf)
        nprobes = conf.pop("nprobes", [conf["nprobe"]])
        ivf = GlobalIndex(d, {"type": "ivfpq", **conf})
        ivf.add(names, db)
        build = time.perf_counter() - t0
        for nprobe in nprobes:
            ivf.set_nprobe(nprobe)
            t0 = time.perf_counter()
            _, ids = ivf.search_ids(q, k)
            dt = time.perf_counter() - t0
            recall = np.mean([len(set(a) & set(b)) / k for a, b in zip(ids, gt)])
            r1 = np.mean(ids[:, 0] == gt[:, 0])
            label = f"ivfpq nlist={conf['nlist']} m={conf['m']} nprobe={nprobe}"
            if conf.get("refine_factor"):
                label += f" +refine x{conf['refine_factor']}"
            rows.append((n, label, build, num_queries / dt, recall, r1))
            build = float("nan")  # built once for all nprobe values
        del ivf
    return rows


def bench_vlad(num_images: int = 20, n_desc: int = 2000, k: int = 64, pca_dim: int = 256, seed: int = 0):
    rng = np.random.default_rng(seed)
    train = [rng.gamma(0.6, 1.0, (300, 128)).astype(np.float32) * 100 for _ in range(pca_dim + 64)]
    vlad = VLAD({"num_clusters": k, "pca_dim": pca_dim}).fit(train)
    descs = [rng.gamma(0.6, 1.0, (n_desc, 128)).astype(np.float32) * 100 for _ in range(num_images)]
    vlad.encode(descs[0])  # warm-up
    t0 = time.perf_counter()
    for dsc in descs:
        vlad.encode(dsc)
    return (time.perf_counter() - t0) / num_images, vlad.dim


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="1e5 vectors only")
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--threads", type=int, default=0,
                        help="faiss OpenMP threads (0 = faiss default; 1 is faster on a busy machine)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if args.threads > 0:
        import faiss

        faiss.omp_set_num_threads(args.threads)

    sizes = [100_000] if args.quick else [100_000, 1_000_000]
    ivf_for = {
        100_000: [{"nlist": 1024, "m": 16, "nbits": 8, "nprobe": 16, "nprobes": [8, 32], "train_size": 65_536},
                  {"nlist": 1024, "m": 16, "nbits": 8, "nprobe": 16, "nprobes": [8, 32], "train_size": 65_536,
                   "refine_factor": 10}],
        1_000_000: [{"nlist": 4096, "m": 16, "nbits": 8, "nprobe": 16, "nprobes": [16, 64], "train_size": 200_000},
                    {"nlist": 4096, "m": 16, "nbits": 8, "nprobe": 16, "nprobes": [16, 64], "train_size": 200_000,
                     "refine_factor": 10}],
    }
    t, dim = bench_vlad()
    print(f"VLAD encode (K=64, 2000 x 128-D RootSIFT, PCA-whitened to {dim}-D): {t * 1e3:.1f} ms/image",
          flush=True)
    print(f"\nD={args.dim}, {args.queries} queries, k={args.k} (build includes IVF-PQ training)")
    print(f"{'N':>9} | {'index':<44} | {'build s':>8} | {'queries/s':>10} | {'recall@10':>9} | {'1-R@1':>6}")
    print("-" * 102, flush=True)
    for n in sizes:
        for _, label, build, qps, rec, r1 in bench_index(n, args.dim, args.queries, args.k, ivf_for[n]):
            b = "" if np.isnan(build) else f"{build:8.1f}"
            print(f"{n:>9} | {label:<44} | {b:>8} | {qps:10.0f} | {rec:9.3f} | {r1:6.3f}", flush=True)


if __name__ == "__main__":
    main()
