"""Inlier re-selection at the refined pose (``refinement.reselect_rounds``,
hloc_bpnp/localization/pose_estimation.py): RANSAC's inlier set depends on its random seed where
correspondences sit near the threshold; classifying them again at the refined pose brings the
seeds to the few inlier sets that select themselves, on the plain and on the patch-aligned path."""
import numpy as np
import torch

from hloc_bpnp.config import merge
from hloc_bpnp.geometry import Camera, Pose
from hloc_bpnp.localization.pose_estimation import default_conf, estimate_pose, reselect_inliers

CAM = Camera("PINHOLE", 640, 480, torch.tensor([500.0, 500.0, 320.0, 240.0], dtype=torch.float64))


def _borderline_problem(seed=0, n=400):
    """(x (n, 2), X (n, 3)) at the identity pose: 1.2 px noise, a quarter of the keypoints moved
    3-5 px (around RANSAC's 4 px threshold) and a tenth gross outliers."""
    rng = np.random.default_rng(seed)
    X = rng.uniform([-2, -2, 4], [2, 2, 8], (n, 3))
    x = CAM.project(torch.from_numpy(X)).cpu().numpy() + rng.normal(size=(n, 2)) * 1.2
    k = rng.permutation(n)
    far, gross = k[: n // 4], k[n // 4: n // 4 + n // 10]
    ang = rng.uniform(0, 2 * np.pi, far.size)
    x[far] += rng.uniform(3, 5, far.size)[:, None] * np.stack([np.cos(ang), np.sin(ang)], 1)
    x[gross] = rng.uniform([0, 0], [640, 480], (gross.size, 2))
    return x, X


def _conf(rounds, seed):
    return merge(default_conf, {"ransac": {"max_error_px": 4.0, "seed": seed},
                                "refinement": {"reselect_rounds": rounds}})


def test_reselect_inliers_is_ransacs_test_at_a_given_pose():
    X = np.array([[0.0, 0.0, 5.0], [0.0, 0.0, 5.0], [0.0, 0.0, 5.0], [0.0, 0.0, -5.0]])
    x = CAM.project(torch.from_numpy(X)).cpu().numpy()
    x[1, 0] += 3.9
    x[2, 1] += 4.1
    pose = Pose(torch.eye(3, dtype=torch.float64), torch.zeros(3, dtype=torch.float64))
    assert reselect_inliers(x, X, CAM, pose, 4.0).tolist() == [True, True, False, False]  # the last is behind
    assert reselect_inliers(x, X, CAM, pose, 5.0).tolist() == [True, True, True, False]


def _poses(rounds):
    x, X = _borderline_problem()
    out = []
    for seed in range(5):
        est = estimate_pose(x, X, CAM, _conf(rounds, seed))
        assert est.success
        out.append((est.pose.aa_t().cpu().numpy(), est))
    return x, X, out


def test_reselection_makes_the_pose_independent_of_the_ransac_seed():
    _, _, plain = _poses(0)
    x, X, resel = _poses(3)
    spread = lambda ps: max(np.abs(p[0] - ps[0][0]).max() for p in ps)  # noqa: E731
    # without re-selection the seeds give different inlier sets, hence different poses
    assert len({tuple(np.flatnonzero(p[1].inlier_mask)) for p in plain}) > 1
    assert spread(plain) > 1e-5, spread(plain)
    # with it they reach a few self-consistent sets (here a quarter of the points sit at 3-5 px)
    distinct = lambda ps: len({tuple(np.round(p[0], 9)) for p in ps})  # noqa: E731
    assert distinct(resel) < distinct(plain), (distinct(resel), distinct(plain))
    assert spread(resel) < 0.2 * spread(plain), (spread(resel), spread(plain))
    for _, est in resel:
        assert est.info["reselect_rounds"] >= 1
        assert est.num_inliers == int(est.inlier_mask.sum())
        if est.info["reselect_rounds"] < 3:  # converged: the set is the one its own pose selects
            assert np.array_equal(est.inlier_mask, reselect_inliers(x, X, CAM, est.pose, 4.0))


def test_aligned_path_reselects_from_the_detected_keypoints():
    """Patch alignment (Localizer.align_inliers): after the aligned refinement the correspondences
    are classified again from their detected positions; the seeds' poses draw together."""
    from test_patch_alignment import CAM as PCAM, _noisy_query_scene

    from hloc_bpnp.localization import Localizer

    map_, images, query, qimage, feats = _noisy_query_scene()
    rng = np.random.default_rng(0)
    kp = np.asarray(feats["keypoints"], np.float64).copy()
    far = rng.permutation(len(kp))[: len(kp) // 4]
    ang = rng.uniform(0, 2 * np.pi, far.size)
    kp[far] += rng.uniform(3, 5, far.size)[:, None] * np.stack([np.cos(ang), np.sin(ang)], 1)
    feats = {**feats, "keypoints": kp}
    poses = {}
    for rounds in (0, 3):
        poses[rounds] = []
        for seed in range(5):
            conf = {"retrieval": {"num_keyframes": 4}, "ransac": {"max_error_px": 4.0, "seed": seed},
                    "refinement": {"reselect_rounds": rounds}, "patch_alignment": {"enabled": True}}
            res = Localizer(map_, conf, map_images=images).localize_features(feats, PCAM, image=qimage)
            assert res.success
            info = res.info["patch_alignment"]
            assert info["reselect_rounds"] <= rounds
            assert res.num_inliers == int(np.asarray(res.inlier_mask).sum())
            poses[rounds].append(res.pose.aa_t().cpu().numpy())
    spread = {r: max(np.abs(p - ps[0]).max() for p in ps) for r, ps in poses.items()}
    assert spread[3] < 0.2 * spread[0], spread


def test_reported_refinement_outcome_is_the_last_rounds(monkeypatch):
    """``info["refinement_rejected"]`` describes the pose returned: a first refinement rejected,
    then a re-selection round accepted, leaves no stale flag."""
    import hloc_bpnp.localization.pose_estimation as PE

    real, calls = PE.refine_bpnp, []

    def first_rejected(*a, **k):
        pose, cov, info = real(*a, **k)
        calls.append(1)
        return (pose, cov, {**info, "refinement_rejected": True}) if len(calls) == 1 else (pose, cov, info)

    monkeypatch.setattr(PE, "refine_bpnp", first_rejected)
    x, X = _borderline_problem()
    est = estimate_pose(x, X, CAM, _conf(3, 0))
    assert est.success and est.info["reselect_rounds"] >= 1 and len(calls) >= 2
    assert "refinement_rejected" not in est.info
