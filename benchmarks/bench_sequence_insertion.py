#!/usr/bin/env python
"""Keyframe insertion cost against map size (issue 17): a map of 100 and of 2,000 images.

A corridor map (:func:`corridor_map`): cameras every metre along a textured wall, each seeing
~300 triangulated points (each point seen by ~4 cameras) and ~100 untriangulated keypoints
of a second layer; 64-D descriptors per point with per-view noise. New keyframes between two
map cameras are inserted with :func:`hloc_bpnp.sequence.growth.insert_keyframe` (what the
mapping thread runs: half their points tracked, the rest matched to 3 neighbouring keyframes,
new points triangulated from the second layer, then ``Map.add_keyframe``), and compared with
what the previous design did per keyframe (copy the reconstruction and rebuild the map's
lookups and retrieval index: ``Map.from_reconstruction``).

    OMP_NUM_THREADS=1 python benchmarks/bench_sequence_insertion.py [--sizes 100 2000] [--keyframes 10]
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from hloc_bpnp.geometry import Camera, Pose
from hloc_bpnp.synthetic import look_at

CAMERA = Camera("PINHOLE", 640, 480, torch.tensor([400.0, 400.0, 320.0, 240.0], dtype=torch.float64))
D = 64


class Corridor:
    """Wall points (triangulated layer at y=5, untriangulated layer at y=4.5), cameras on y=0."""

    def __init__(self, num_images: int, seed: int = 0):
        rng = np.random.default_rng(seed)
        length = num_images + 4.0
        n_a, n_b = int(75 * length), int(25 * length)
        self.A = np.stack([rng.uniform(-2, length + 2, n_a), np.full(n_a, 5.0), rng.uniform(-1.5, 1.5, n_a)], 1)
        self.B = np.stack([rng.uniform(-2, length + 2, n_b), np.full(n_b, 4.5), rng.uniform(-1.5, 1.5, n_b)], 1)
        d = rng.normal(size=(n_a + n_b, D)).astype(np.float32)
        self.desc = d / np.linalg.norm(d, axis=1, keepdims=True)
        self.rng = rng

    @staticmethod
    def pose(x: float) -> Pose:
        return look_at(np.array([x, 0.0, 0.0]), np.array([x, 5.0, 0.0]), up=(0, 0, 1))

    def observe(self, pose: Pose):
        """features, index into A (or -1), index into B (or -1) per keypoint."""
        P = np.concatenate([self.A, self.B])
        x, valid = CAMERA.project_with_valid(pose.transform(torch.from_numpy(P)))
        idx = np.flatnonzero(valid.numpy())
        kp = x.numpy()[idx] + self.rng.normal(scale=0.3, size=(len(idx), 2))
        d = self.desc[idx] + 0.05 * self.rng.normal(size=(len(idx), D)).astype(np.float32)
        d /= np.linalg.norm(d, axis=1, keepdims=True)
        feats = {"keypoints": kp.astype(np.float32), "descriptors": d.astype(np.float32),
                 "scores": np.ones(len(idx), np.float32), "image_size": np.array([640, 480])}
        na = len(self.A)
        return feats, np.where(idx < na, idx, -1), np.where(idx >= na, idx - na, -1)


def corridor_map(num_images: int, seed: int = 0):
    """(Map of ``num_images`` cameras with layer A triangulated, the Corridor)."""
    import pycolmap

    from hloc_bpnp.mapping import Map

    cor = Corridor(num_images, seed)
    rec = pycolmap.Reconstruction()
    cam = CAMERA.to_pycolmap()
    cam.camera_id = 1
    rec.add_camera_with_trivial_rig(cam)
    feats, tracks = {}, {}
    for i in range(num_images):
        name = f"map/{i:05d}.png"
        f, ia, _ = cor.observe(cor.pose(float(i) + 2.0))
        feats[name] = f
        rec.add_image_with_trivial_frame(
            pycolmap.Image(name=name, keypoints=f["keypoints"].astype(np.float64), camera_id=1, image_id=i + 1),
            cor.pose(float(i) + 2.0).to_pycolmap())
        for k in np.flatnonzero(ia >= 0):
            tracks.setdefault(int(ia[k]), []).append(pycolmap.TrackElement(i + 1, int(k)))
    for p, els in tracks.items():
        if len(els) >= 2:
            rec.add_point3D(cor.A[p], pycolmap.Track(els))
    conf = {"features": "sift", "matcher": {"model": "nearest_neighbor", "mutual": True, "ratio_threshold": 0.9},
            "retrieval": {"global_descriptor": {"type": "vlad", "num_clusters": 16, "pca_dim": None},
                          "index": {"type": "flat", "use_gpu": False}}}
    return Map.from_reconstruction(rec, feats, conf), cor


def keyframe_job(map_, cor: Corridor, x: float, name: str):
    """(features, tracked keypoints, their rows, neighbours) of a new keyframe at position x."""
    pose = cor.pose(x)
    f, ia, _ = cor.observe(pose)
    xyz_row = {tuple(np.round(p, 9)): r for r, p in enumerate(map_.points3D)}
    kp, rows = [], []
    for k in np.flatnonzero(ia >= 0)[::2]:  # half of its points tracked
        r = xyz_row.get(tuple(np.round(cor.A[ia[k]], 9)))
        if r is not None:
            kp.append(int(k))
            rows.append(r)
    i0 = int(np.floor(x - 2.0))
    neighbours = [f"map/{i:05d}.png" for i in (i0, i0 + 1, i0 - 1) if 0 <= i < len(map_.image_names)]
    return pose, f, np.array(kp), np.array(rows), neighbours


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=[100, 2000])
    p.add_argument("--keyframes", type=int, default=10, help="insertions timed per map size")
    p.add_argument("--threads", type=int, default=1, help="torch threads (the mapping thread uses 1)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    import faiss
    import pycolmap

    from hloc_bpnp.matching import build_matcher
    from hloc_bpnp.mapping import Map
    from hloc_bpnp.sequence.growth import default_conf, insert_keyframe

    faiss.omp_set_num_threads(args.threads)
    rows = []
    for n in args.sizes:
        t = time.perf_counter()
        map_, cor = corridor_map(n)
        t_build = time.perf_counter() - t
        matcher = build_matcher(map_.conf["matcher"])
        n_img0, n_pts0 = len(map_.image_names), len(map_.points3D)
        # the previous design, once: copy the reconstruction and rebuild lookups + index
        t = time.perf_counter()
        Map.from_reconstruction(pycolmap.Reconstruction(map_.reconstruction), map_.features, map_.conf,
                                global_model=map_.global_model)
        t_rebuild = time.perf_counter() - t
        ins, new_pts, add_only = [], [], []
        xs = np.linspace(2.5, n + 1.5, args.keyframes)  # spread over the whole corridor
        for j, x in enumerate(xs):
            pose, f, kp, r, nbs = keyframe_job(map_, cor, float(x), f"kf/{j:03d}.png")
            t = time.perf_counter()
            info = insert_keyframe(map_, f"kf/{j:03d}.png", CAMERA, pose, f, kp, r, nbs, matcher, default_conf)
            ins.append(time.perf_counter() - t)
            new_pts.append(info["num_new_points"])
        # Map.add_keyframe alone (observations only), the part that touches the map's structures
        for j, x in enumerate(xs):
            pose, f, kp, r, _ = keyframe_job(map_, cor, float(x) + 0.3, f"kf2/{j:03d}.png")
            t = time.perf_counter()
            map_.add_keyframe(f"kf2/{j:03d}.png", CAMERA, pose, f, kp, r)
            add_only.append(time.perf_counter() - t)
        rows.append((n, n_pts0, t_build, np.median(ins) * 1e3, np.max(ins) * 1e3, np.median(add_only) * 1e3,
                     np.mean(new_pts), t_rebuild * 1e3))
        print(f"done {n} images ({n_img0} -> {len(map_.image_names)})", flush=True)
    print("\nKeyframe insertion vs map size (median over insertions; one thread)")
    print("| map images | map points | insert_keyframe median (ms) | max (ms) | Map.add_keyframe median (ms) | "
          "new points / keyframe | old: copy + rebuild per keyframe (ms) |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for n, pts, _, med, mx, add, npts, reb in rows:
        print(f"| {n} | {pts} | {med:.1f} | {mx:.1f} | {add:.2f} | {npts:.0f} | {reb:.0f} |")


if __name__ == "__main__":
    main()
