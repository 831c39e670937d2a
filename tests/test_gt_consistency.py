"""protocols.gt_consistency: the corrections a bundle adjustment asks of ground-truth poses."""
import math

import numpy as np
import pytest
import torch

from hloc_bpnp.geometry.metrics import rotation_error_vectors
from hloc_bpnp.geometry.pose import Pose, so3_exp
from hloc_bpnp.protocols.gt_consistency import (
    bundle_adjust_fixed_intrinsics, correction_agreement, ground_truth_corrections, remove_similarity_gauge,
    scene_ground_truth_corrections)

DEG = math.pi / 180


def ring_poses(n=6, radius=4.0):
    """(n,) cam_from_world poses on a circle, all looking at the origin."""
    Rs, ts = [], []
    for i in range(n):
        a = 2 * math.pi * i / n * 0.4  # an arc, as the Strecha and Middlebury images
        c = torch.tensor([radius * math.sin(a), 0.3 * i, -radius * math.cos(a)], dtype=torch.float64)
        z = -c / c.norm()
        x = torch.linalg.cross(torch.tensor([0.0, 1.0, 0.0], dtype=torch.float64), z)
        x = x / x.norm()
        y = torch.linalg.cross(z, x)
        R = torch.stack([x, y, z])
        Rs.append(R)
        ts.append(-R @ c)
    return Pose(torch.stack(Rs), torch.stack(ts))


def perturb(poses, rot_deg_vectors, center_shift=None):
    """Rotate each camera by its (3,) vector (camera frame, degrees), keeping or shifting its centre."""
    dR = so3_exp(torch.as_tensor(rot_deg_vectors, dtype=torch.float64) * DEG)
    R = dR @ poses.R
    c = poses.center if center_shift is None else poses.center + center_shift
    return Pose.from_center(R, c)


def in_other_frame(poses, Q, s, u):
    """The same cameras in a world X' = s Q X + u."""
    return Pose.from_center(poses.R @ Q.T, s * poses.center @ Q.T + u)


def test_gauge_removed_exactly():
    P = ring_poses()
    Q = so3_exp(torch.tensor([0.3, -1.1, 0.5], dtype=torch.float64))
    out = remove_similarity_gauge(P, in_other_frame(P, Q, 2.5, torch.tensor([1.0, -3.0, 7.0], dtype=torch.float64)))
    assert out["rotation_error_deg"].max() < 1e-9
    assert out["center_error"].max() < 1e-9
    assert float(out["scale"]) == pytest.approx(2.5, rel=1e-12)
    assert torch.allclose(out["world_rotation"], Q, atol=1e-12)
    assert torch.allclose(out["aligned"].R, P.R, atol=1e-12) and torch.allclose(out["aligned"].t, P.t, atol=1e-9)


def test_one_camera_off_is_found():
    P = ring_poses()
    delta = torch.zeros(6, 3, dtype=torch.float64)
    delta[2] = torch.tensor([0.02, -0.05, 0.01], dtype=torch.float64)  # degrees, camera frame
    shift = torch.zeros(6, 3, dtype=torch.float64)
    shift[4] = torch.tensor([0.0, 0.01, 0.0], dtype=torch.float64)
    Q = so3_exp(torch.tensor([0.2, 0.4, -0.3], dtype=torch.float64))
    adj = in_other_frame(perturb(P, delta, shift), Q, 0.7, torch.tensor([0.5, 0.0, -1.0], dtype=torch.float64))
    out = remove_similarity_gauge(P, adj)
    found = out["rotation_deg"][2]
    cos = float(found @ delta[2] / (found.norm() * delta[2].norm()))
    assert cos > 0.95
    # the chordal mean spreads 1/6 of the one rotation over the gauge
    assert 0.75 < float(found.norm() / delta[2].norm()) <= 1.0 + 1e-9
    others = torch.cat([out["rotation_error_deg"][:2], out["rotation_error_deg"][3:]])
    assert float(others.max()) < 0.25 * float(delta[2].norm())
    assert int(out["center_error"].argmax()) == 4
    back = rotation_error_vectors(out["aligned"].R, P.R)
    torch.testing.assert_close(back, out["rotation_deg"], atol=1e-9, rtol=0)


def test_bad_inputs_are_errors():
    P = ring_poses()
    with pytest.raises(ValueError, match="at least 3"):
        remove_similarity_gauge(P[:2], P[:2])
    with pytest.raises(ValueError, match="two"):
        remove_similarity_gauge(P, P[:4])
    same = Pose(P.R, torch.zeros_like(P.t))  # every centre at the origin
    with pytest.raises(ValueError, match="coincide"):
        remove_similarity_gauge(same, same)


def synthetic_reconstruction(gt: Pose, true: Pose, noise_px=0.1, n_points=400, seed=0):
    """A pycolmap model whose image poses are ``gt`` while its observations are projections at
    ``true`` (plus noise); the points are triangulated where ``true`` puts them."""
    import pycolmap

    from hloc_bpnp.geometry.camera import Camera

    rng = np.random.default_rng(seed)
    cam = Camera("PINHOLE", 640, 480, torch.tensor([500.0, 500.0, 320.0, 240.0], dtype=torch.float64))
    X = torch.from_numpy(rng.uniform([-1.5, -1.0, -1.0], [1.5, 2.5, 1.0], size=(n_points, 3)))
    rec = pycolmap.Reconstruction()
    pc = cam.to_pycolmap()
    pc.camera_id = 1
    rec.add_camera_with_trivial_rig(pc)
    obs = []
    for i in range(gt.shape[0]):
        x = cam.project(true[i].transform(X)).numpy() + rng.normal(scale=noise_px, size=(n_points, 2))
        obs.append(x)
        img = pycolmap.Image(name=f"{i:04d}.png", camera_id=1, image_id=i + 1)
        img.points2D = pycolmap.Point2DList([pycolmap.Point2D(xy) for xy in x])
        rec.add_image_with_trivial_frame(img, gt[i].to_pycolmap())
    for j in range(n_points):
        track = pycolmap.Track()
        for i in range(gt.shape[0]):
            track.add_element(i + 1, j)
        rec.add_point3D(X[j].numpy(), track)
    return rec


def test_bundle_adjustment_finds_a_wrong_ground_truth_rotation():
    true = ring_poses()
    delta = torch.zeros(6, 3, dtype=torch.float64)
    delta[3] = torch.tensor([0.0, 0.15, 0.05], dtype=torch.float64)
    gt = perturb(true, delta)
    out = ground_truth_corrections(synthetic_reconstruction(gt, true))
    assert out["names"] == [f"{i:04d}.png" for i in range(6)]
    found = torch.from_numpy(out["rotation_deg"][3])
    # the images ask to undo the perturbation: R_true R_gt^T = dR^T
    cos = float(-found @ delta[3] / (found.norm() * delta[3].norm()))
    assert cos > 0.95
    assert 0.7 < float(found.norm() / delta[3].norm()) < 1.1
    others = np.delete(out["rotation_error_deg"], 3)
    assert others.max() < 0.3 * float(delta[3].norm())
    assert out["reprojection_adjusted"]["mean_px"] < 0.5 * out["reprojection_gt"]["mean_px"]


def test_consistent_ground_truth_asks_for_nothing():
    true = ring_poses()
    exact = ground_truth_corrections(synthetic_reconstruction(true, true, noise_px=0.0))
    assert exact["rotation_error_deg"].max() < 1e-7
    assert exact["center_error"].max() < 1e-7
    noisy = ground_truth_corrections(synthetic_reconstruction(true, true, noise_px=0.05))
    # keypoint noise alone moves these narrow-baseline poses by up to ~0.005 deg (measured: linear
    # in the noise), far below the 0.15 deg perturbation the test above finds
    assert noisy["rotation_error_deg"].max() < 0.01
    assert noisy["reprojection_adjusted"]["mean_px"] <= noisy["reprojection_gt"]["mean_px"] + 1e-9


def test_bundle_adjustment_inputs():
    import pycolmap

    with pytest.raises(ValueError, match="registered images"):
        bundle_adjust_fixed_intrinsics(pycolmap.Reconstruction())
    rec = synthetic_reconstruction(ring_poses(), ring_poses(), n_points=30)
    with pytest.raises(ValueError, match="loss"):
        bundle_adjust_fixed_intrinsics(rec, loss="l3")
    with pytest.raises(ValueError, match="not registered"):
        ground_truth_corrections(rec, names=["0000.png", "missing.png", "0001.png"])


def test_agreement():
    a = {"names": ["a", "b", "c"], "rotation_deg": np.array([[1.0, 0, 0], [0, 1.0, 0], [0, 0, 2.0]])}
    b = {"names": ["c", "b", "x"], "rotation_deg": np.array([[0, 0, 1.0], [0, -1.0, 0], [5.0, 0, 0]])}
    ag = correction_agreement(a, b)
    assert ag["names"] == ["b", "c"]
    np.testing.assert_allclose(ag["cosine"], [-1.0, 1.0])
    np.testing.assert_allclose(ag["difference_deg"], [2.0, 1.0])
    with pytest.raises(ValueError, match="no image"):
        correction_agreement(a, {"names": ["z"], "rotation_deg": np.zeros((1, 3))})


def test_keypoint_adjusting_preset_refused():
    from hloc_bpnp.io.scene import Scene

    with pytest.raises(ValueError, match="keypoint_adjustment"):
        scene_ground_truth_corrections(Scene([]), "xfeat_refined_adjusted")


def test_consensus_and_pseudo_ground_truth():
    from hloc_bpnp.geometry.camera import Camera
    from hloc_bpnp.io.scene import Scene, SceneImage
    from hloc_bpnp.protocols.gt_consistency import consensus_poses, pseudo_ground_truth

    P = ring_poses()
    d = torch.zeros(6, 3, dtype=torch.float64)
    d[1] = torch.tensor([0.0, 0.1, 0.0], dtype=torch.float64)
    shift = torch.zeros(6, 3, dtype=torch.float64)
    shift[5, 2] = 0.02
    a, b = perturb(P, d, shift), perturb(P, 3 * d, -3 * shift)
    mean = consensus_poses(P, [a, b])
    torch.testing.assert_close(rotation_error_vectors(mean.R, P.R), 2 * d, atol=1e-9, rtol=0)
    torch.testing.assert_close(mean.center, P.center - shift, atol=1e-12, rtol=0)
    with pytest.raises(ValueError, match="at least one"):
        consensus_poses(P, [])
    with pytest.raises(ValueError, match="shape"):
        consensus_poses(P, [P[:3]])

    cam = Camera("PINHOLE", 640, 480, torch.tensor([500.0, 500.0, 320.0, 240.0], dtype=torch.float64))
    scene = Scene([SceneImage(f"{i}.png", cam, P[i]) for i in range(6)])
    new, corr = pseudo_ground_truth(scene, ["x", "y"], corrections=[{"adjusted": a}, {"adjusted": b}])
    assert new.names == scene.names and new.metadata["pseudo_ground_truth"] == ["x", "y"]
    torch.testing.assert_close(rotation_error_vectors(new["1.png"].pose[None].R, P[1:2].R), 2 * d[1:2], atol=1e-9, rtol=0)
    assert scene["1.png"].pose is not new["1.png"].pose  # the input scene is unchanged
    with pytest.raises(ValueError, match="corrections for"):
        pseudo_ground_truth(scene, ["x"], corrections=[{"adjusted": a}, {"adjusted": b}])
    scene.images[2] = SceneImage("2.png", cam, None)
    with pytest.raises(ValueError, match="ground-truth pose"):
        pseudo_ground_truth(scene, ["x"], corrections=[{"adjusted": a}])
