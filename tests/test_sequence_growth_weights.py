"""Sequence-mode map growth: new points re-solved with the keypoints' 1 / sigma^2 where the map's
``triangulation_weights`` says so (as a map build does)."""
import numpy as np
import torch

from hloc_bpnp.geometry import Camera, Pose
from hloc_bpnp.mapping.point_triangulation import weights_enabled
from hloc_bpnp.sequence import growth

CAM = Camera("PINHOLE", 640, 480, torch.tensor([500.0, 500.0, 320.0, 240.0], dtype=torch.float64))


def _views():
    poses = [Pose.from_aa(torch.tensor([0.0, a, 0.0, -2.0 * np.sin(a), 0.0, 0.0], dtype=torch.float64))
             for a in (-0.15, 0.0, 0.15)]
    return [CAM, CAM, CAM], poses


def test_growth_points_weighted_by_keypoint_sigmas_land_nearer_the_truth():
    rng = np.random.default_rng(0)
    cams, poses = _views()
    n = 200
    X = rng.uniform([-1, -1, 5], [1, 1, 7], (n, 3))
    sig = [np.full(n, 0.05), np.full(n, 3.0), np.full(n, 0.05)]  # the middle view is noisy, and says so
    kpts = [c.project(p.transform(torch.from_numpy(X))).numpy() + rng.normal(size=(n, 2)) * s[:, None]
            for c, p, s in zip(cams, poses, sig)]
    tracks = [[(0, i), (1, i), (2, i)] for i in range(n)]
    conf = dict(growth.default_conf, max_reprojection_px=20.0)
    tri = growth._triangulate(tracks, kpts, cams, poses, conf)
    assert len(tri) > 0.9 * n
    weighted = growth.weigh_triangulated(tri, kpts, sig, cams, poses)
    assert [t for _, t in weighted] == [t for _, t in tri]  # the same tracks, moved points
    idx = np.array([t[0][1] for _, t in tri])
    err0 = np.linalg.norm(np.stack([x for x, _ in tri]) - X[idx], axis=1)
    err1 = np.linalg.norm(np.stack([x for x, _ in weighted]) - X[idx], axis=1)
    assert np.median(err1) < 0.6 * np.median(err0), (np.median(err0), np.median(err1))
    # only the sigmas' ratios matter
    scaled = growth.weigh_triangulated(tri, kpts, [4.0 * s for s in sig], cams, poses)
    np.testing.assert_allclose(np.stack([x for x, _ in scaled]), np.stack([x for x, _ in weighted]), atol=1e-9)


def test_growth_weights_follow_the_maps_triangulation_setting():
    with_s = {"a": {"keypoints": np.zeros((2, 2)), "sigmas": np.ones(2)}, "b": {"keypoints": np.zeros((2, 2)), "sigmas": np.ones(2)}}
    without = {"a": with_s["a"], "b": {"keypoints": np.zeros((2, 2))}}
    assert weights_enabled({"triangulation_weights": "auto"}, with_s)
    assert not weights_enabled({"triangulation_weights": "auto"}, without)
    assert not weights_enabled({"triangulation_weights": "auto", "keypoint_adjustment": {"enabled": True}}, with_s)
    assert not weights_enabled({}, with_s)  # a map built before the setting existed
    assert weights_enabled({"triangulation_weights": "uncertainty", "keypoint_adjustment": {"enabled": True}}, with_s)
