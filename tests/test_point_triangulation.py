"""Points re-triangulated with the keypoints' uncertainties (hloc_bpnp/mapping/point_triangulation.py):
on synthetic tracks whose views have known, unequal keypoint noise, the 1 / sigma^2-weighted point
is nearer the truth than the unweighted one; the mapping step's modes and its errors."""
import numpy as np
import pytest
import torch

from hloc_bpnp.mapping.point_triangulation import (registered_views, retriangulate, track_observations,
                                                   weigh_points, weigh_points_if_enabled)
from hloc_bpnp.synthetic import look_at
from map_fixtures import reconstruction_from_observations
from test_patch_alignment import CAM

SIGMAS = [0.05, 0.05, 2.0, 2.0, 2.0]


def _tracks(seed=0, n_points=300):
    rng = np.random.default_rng(seed)
    points = np.concatenate([rng.uniform(-1.0, 1.0, (n_points, 2)), rng.uniform(-0.3, 0.3, (n_points, 1))], 1)
    eyes = [(-0.8, -0.5, -4.5), (0.8, -0.5, -4.5), (-0.8, 0.5, -4.5), (0.8, 0.5, -4.5), (0.0, 0.0, -4.0)]
    poses = {f"map/{i}.png": look_at(e, np.zeros(3), up=(0.0, -1.0, 0.0)) for i, e in enumerate(eyes)}
    sig = dict(zip(poses, SIGMAS))
    views = iter(poses)

    def observe(pose):
        name = next(views)
        x, valid = CAM.project_with_valid(pose.transform(torch.from_numpy(points)))
        idx = np.flatnonzero(valid.numpy())
        kp = x.numpy()[idx] + rng.normal(scale=sig[name], size=(len(idx), 2))
        return {"keypoints": kp.astype(np.float64), "sigmas": np.full(len(idx), sig[name], np.float32)}, idx

    rec, feats = reconstruction_from_observations(CAM, poses, points, observe)
    return rec, feats, points



def test_weighted_points_are_nearer_the_truth():
    rec, feats, points = _tracks()
    regs, cameras, poses = registered_views(rec)
    pids, obs_row, obs_img, idx = track_observations(rec, regs)
    truth = torch.from_numpy(np.stack([rec.points3D[p].xyz for p in pids]))  # the fixture's exact points
    uv = torch.from_numpy(np.stack([np.asarray(regs[i].points2D[k].xy) for i, k in zip(obs_img, idx)]))
    plain, _ = retriangulate(truth, obs_row, obs_img, uv, cameras, poses, 5)
    stats = weigh_points(rec, feats)
    weighted = torch.from_numpy(np.stack([rec.points3D[p].xyz for p in pids]))
    e_plain = (plain - truth).norm(dim=-1).median()
    e_weighted = (weighted - truth).norm(dim=-1).median()
    assert e_weighted < 0.25 * e_plain, (float(e_weighted), float(e_plain))
    assert stats["n_points"] == len(pids) and stats["median_move"] > 0
    # the model's errors are the observations' mean reprojection errors; equal sigmas: the plain solve
    assert all(np.isfinite(rec.points3D[p].error) for p in pids)
    rec2, feats2, _ = _tracks()
    for f in feats2.values():
        f["sigmas"] = np.full_like(f["sigmas"], 0.7)
    weigh_points(rec2, feats2)
    equal = torch.from_numpy(np.stack([rec2.points3D[p].xyz for p in pids]))
    torch.testing.assert_close(equal, plain, atol=1e-7, rtol=0)


def test_mapping_step_modes_and_errors():
    rec, feats, _ = _tracks()
    before = {p: np.array(pt.xyz) for p, pt in rec.points3D.items()}
    plain = {n: {k: v for k, v in f.items() if k != "sigmas"} for n, f in feats.items()}
    assert weigh_points_if_enabled(rec, plain, {"triangulation_weights": "auto"}) is None  # no sigmas: pycolmap's points stay
    assert weigh_points_if_enabled(rec, feats, {"triangulation_weights": False}) is None
    assert all(np.array_equal(before[p], rec.points3D[p].xyz) for p in before)
    with pytest.raises(ValueError, match=r"uncertainty needs keypoint 'sigmas'.*map/0.png"):
        weigh_points_if_enabled(rec, plain, {"triangulation_weights": "uncertainty"})
    with pytest.raises(ValueError, match="must be one of"):
        weigh_points_if_enabled(rec, feats, {"triangulation_weights": "yes"})
    bad = {n: dict(f) for n, f in feats.items()}
    bad["map/3.png"]["sigmas"] = -bad["map/3.png"]["sigmas"]
    with pytest.raises(ValueError, match=r"map/3.png.*not finite and > 0"):
        weigh_points_if_enabled(rec, bad, {"triangulation_weights": "auto"})
    bad["map/3.png"]["sigmas"] = feats["map/3.png"]["sigmas"][:-1]
    with pytest.raises(ValueError, match=r"map/3.png.*sigmas but"):
        weigh_points_if_enabled(rec, bad, {"triangulation_weights": "uncertainty"})
    # a map whose keypoints are adjusted afterwards is not weighed by auto (the sigmas describe
    # the detections), only by an explicit uncertainty
    adj = {"enabled": True}
    assert weigh_points_if_enabled(rec, feats, {"triangulation_weights": "auto", "keypoint_adjustment": adj}) is None
    assert all(np.array_equal(before[p], rec.points3D[p].xyz) for p in before)
    stats = weigh_points_if_enabled(rec, feats, {"triangulation_weights": "auto"})
    assert stats is not None and stats["n_points"] == len(before)
    assert stats["reprojection_px_after"] > 0
