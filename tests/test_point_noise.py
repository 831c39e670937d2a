"""A correspondence's noise as its query keypoint's plus its 3D point's
(hloc_bpnp/geometry/point_uncertainty.py, Map.point_covariances, localization/point_noise.py)."""
import numpy as np
import pytest
import torch

from hloc_bpnp.geometry.point_uncertainty import (covariances_from_information, point_information,
                                                  projected_covariances)
from hloc_bpnp.localization import Localizer
from hloc_bpnp.localization.point_noise import correspondence_sqrt_info, point_uncertainty_on
from hloc_bpnp.mapping import Map
from map_fixtures import reconstruction_from_observations
from test_localization import PINHOLE, ExactScene


def _map(scene, sigma=0.5):
    def observe(pose):
        f, idx = scene.observe(PINHOLE, pose)
        if sigma is not None:
            f["sigmas"] = np.full(len(idx), sigma, np.float32)
        return f, idx

    rec, feats = reconstruction_from_observations(PINHOLE, scene.map_poses, scene.points, observe)
    return Map.from_reconstruction(rec, feats, {"features": "sift", "matcher": "mnn",
                                                "retrieval": {"global_descriptor": {"type": "vlad", "num_clusters": 16}}})


@pytest.fixture(scope="module")
def scene():
    return ExactScene(num_points=600)


def test_two_view_point_is_uncertain_in_depth():
    """Two views 10 degrees apart: the point's covariance is long along the rays, and it scales
    with the keypoints' variance."""
    from hloc_bpnp.synthetic import look_at

    X = torch.zeros(1, 3, dtype=torch.float64)
    poses = [look_at(np.array([np.sin(a), 0.0, -np.cos(a)]) * 5, np.zeros(3), up=(0, -1, 0)) for a in (-0.0873, 0.0873)]
    R = torch.stack([p.R.to(torch.float64) for p in poses])
    t = torch.stack([p.t.to(torch.float64).reshape(3) for p in poses])
    f = torch.full((2, 2), 500.0, dtype=torch.float64)
    info = point_information(1, X.expand(2, 3), torch.zeros(2, dtype=torch.long), R, t, f, torch.ones(2))
    C = covariances_from_information(info)[0]
    ev = torch.linalg.eigvalsh(C).sqrt()
    assert ev[-1] > 8 * ev[0]  # depth (z) is the poor direction
    assert abs(float(torch.linalg.eigh(C)[1][2, -1])) > 0.99
    info2 = point_information(1, X.expand(2, 3), torch.zeros(2, dtype=torch.long), R, t, f, 2 * torch.ones(2))
    torch.testing.assert_close(covariances_from_information(info2)[0], 4 * C, rtol=1e-6, atol=0)
    # a third view seeing the point from the side sees the depth error as a pixel error along x
    side = look_at(np.array([5.0, 0.0, 0.0]), np.zeros(3), up=(0, -1, 0))
    Cq = projected_covariances(X, C[None], side, PINHOLE)[0]
    assert Cq[0, 0] > 20 * Cq[1, 1]


def test_map_point_covariances_from_the_observations_sigmas(scene):
    m = _map(scene, sigma=0.5)
    assert m.has_point_uncertainty
    rows = np.arange(0, len(m.points3D), 7)
    C = m.point_covariances(rows)
    assert C.shape == (len(rows), 3, 3) and torch.isfinite(C).all()
    assert (torch.linalg.eigvalsh(C) > 0).all()
    m2 = _map(scene, sigma=1.0)
    torch.testing.assert_close(m2.point_covariances(rows), 4 * C, rtol=1e-6, atol=1e-12)
    plain = _map(scene, sigma=None)
    assert not plain.has_point_uncertainty
    with pytest.raises(ValueError, match=r"map image 'map/0.png' has no keypoint 'sigmas'"):
        plain.point_covariances(rows)
    with pytest.raises(IndexError, match="out of range"):
        m.point_covariances(np.array([len(m.points3D)]))


def test_correspondence_weights_add_the_points_noise(scene):
    pose = scene.query_poses["query/0.png"]
    X = torch.from_numpy(scene.points[:4])
    var = np.array([0.25, 0.25, 1.0, 1.0])
    # no point noise: isotropic weights 1 / sigma^2, normalised by their (lower) median
    L = correspondence_sqrt_info(var, torch.zeros(4, 3, 3, dtype=torch.float64), X, pose, PINHOLE)
    W = L.transpose(-1, -2) @ L
    torch.testing.assert_close(W[:, 0, 0], torch.tensor([4.0, 4.0, 1.0, 1.0], dtype=torch.float64))
    assert float(W[:, 0, 1].abs().max()) < 1e-12
    # a point known poorly along one world direction: its correspondence weighs less, anisotropically
    cov = torch.zeros(4, 3, 3, dtype=torch.float64)
    cov[0] = torch.diag(torch.tensor([0.05, 1e-8, 1e-8], dtype=torch.float64))
    L = correspondence_sqrt_info(var, cov, X, pose, PINHOLE)
    W = L.transpose(-1, -2) @ L
    ev = torch.linalg.eigvalsh(W[0])
    assert ev[0] < 0.2 * ev[1]
    torch.testing.assert_close(W[1], W[1, 0, 0] * torch.eye(2, dtype=torch.float64))


def test_modes_and_the_localizer(scene):
    m = _map(scene)
    conf = {"refinement": {"method": "bpnp", "point_uncertainty": "auto"}}
    assert point_uncertainty_on(conf, "uncertainty", m)
    assert not point_uncertainty_on(conf, False, m)
    assert not point_uncertainty_on(conf, "uncertainty", object())  # the hloc plugin's lookup
    conf["refinement"]["point_uncertainty"] = True
    with pytest.raises(ValueError, match="'q'.*needs a map whose features carry keypoint sigmas"):
        point_uncertainty_on(conf, "uncertainty", object(), "q")
    with pytest.raises(ValueError, match="needs use_weights 'uncertainty'"):
        point_uncertainty_on(conf, False, m, "q")
    conf["refinement"]["point_uncertainty"] = "yes"
    with pytest.raises(ValueError, match="must be 'auto', true or false"):
        point_uncertainty_on(conf, "uncertainty", m)

    name, gt = next(iter(scene.query_poses.items()))
    rng = np.random.default_rng(0)
    feats, _ = scene.observe(PINHOLE, gt, noise_px=0.5, rng=rng)
    feats["sigmas"] = np.full(len(feats["keypoints"]), 0.5, np.float32)
    on = Localizer(m, {"retrieval": {"num_keyframes": 3}, "refinement": {"use_weights": "auto"}}).localize_features(
        feats, PINHOLE)
    off = Localizer(m, {"retrieval": {"num_keyframes": 3}, "refinement": {"use_weights": "auto",
                                                                          "point_uncertainty": False}}
                    ).localize_features(feats, PINHOLE)
    assert on.success and off.success
    assert on.info["point_uncertainty"] and not off.info["point_uncertainty"]
    assert on.sqrt_info.shape == (len(on.points2D), 2, 2) and off.sqrt_info is None
    from hloc_bpnp.geometry import center_error
    assert float(center_error(on.pose, gt)) < 0.05 and float(center_error(off.pose, gt)) < 0.05
