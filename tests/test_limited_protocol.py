"""The ``limited`` protocol's draws: paired across variants through the query keypoint ids."""
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from hloc_bpnp.geometry.camera import Camera
from hloc_bpnp.geometry.pose import Pose
from hloc_bpnp.protocols.limited import limited_pose_errors, paired_draws


def test_paired_draws_follow_the_keypoints_not_the_candidate_order():
    rng = np.random.default_rng(3)
    kid = rng.permutation(500)[:300]
    d = paired_draws(kid, 50, 20, seed=0)
    assert d.shape == (20, 50)
    assert all(len(set(row)) == 50 for row in d)
    assert len({tuple(sorted(kid[row])) for row in d}) == 20  # the draws differ
    # the same keypoints in another order: the same keypoints drawn
    perm = rng.permutation(300)
    dp = paired_draws(kid[perm], 50, 20, seed=0)
    assert all(set(kid[a]) == set(kid[perm][b]) for a, b in zip(d, dp))
    # one inlier more or less changes a draw only where that keypoint was (or would be) drawn
    drop = kid[d[0][0]]
    fewer = kid[kid != drop]
    df = paired_draws(fewer, 50, 20, seed=0)
    changed = sum(set(kid[a]) != set(fewer[b]) for a, b in zip(d, df))
    assert changed == sum(drop in kid[a] for a in d)
    assert 1 <= changed < 20
    assert not np.array_equal(paired_draws(kid, 50, 20, seed=1), d)
    with pytest.raises(ValueError, match="fewer than n"):
        paired_draws(kid[:10], 50, 2)


def test_limited_errors_of_two_variants_draw_the_same_keypoints():
    cam = Camera.from_K(torch.tensor([[500.0, 0, 320], [0, 500.0, 240], [0, 0, 1]], dtype=torch.float64), 640, 480)
    g = torch.Generator().manual_seed(0)
    X = torch.rand(200, 3, generator=g, dtype=torch.float64) * 2 + torch.tensor([-1, -1, 5.0], dtype=torch.float64)
    pose = Pose.identity()
    x = cam.project(pose.transform(X)).numpy()
    fmap = SimpleNamespace(point3D_ids=np.arange(200), points3D=X.numpy())
    noise = np.random.default_rng(0).normal(0, 1.0, (200, 2))

    def res(order, inliers):
        return SimpleNamespace(success=True, inlier_mask=inliers[order], points2D=(x + noise)[order],
                               point3D_ids=np.arange(200)[order], keypoint_ids=np.arange(200)[order],
                               pose=pose, camera=cam, name="q", weights=None)

    inl = np.ones(200, bool)
    a = limited_pose_errors(res(np.arange(200), inl), fmap, pose)
    b = limited_pose_errors(res(np.random.default_rng(1).permutation(200), inl), fmap, pose)
    np.testing.assert_allclose(a["pos_cm"], b["pos_cm"], rtol=1e-6)
    # without keypoint ids (an older result) the draws follow the inliers' order
    r = res(np.random.default_rng(1).permutation(200), inl)
    r.keypoint_ids = None
    c = limited_pose_errors(r, fmap, pose)
    assert not np.allclose(a["pos_cm"], c["pos_cm"])
