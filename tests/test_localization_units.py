"""Unit tests of the localizer's building blocks (no map needed)."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

from hloc_bpnp.geometry import Camera, Pose
from hloc_bpnp.localization import LocalizationResult, covisibility_clusters, gather_2d3d, guess_camera
from hloc_bpnp.localization import results as R


def test_gather_2d3d_dedup_and_max_score():
    # query kp 0 matches kf0 kp 2 (point 5) and kf1 kp 0 (point 5): one pair, best score
    # query kp 1 matches kf0 kp 0 (no point) -> dropped; kf1 kp 1 (point 7)
    m = [np.array([2, 0, -1]), np.array([0, 1, -1])]
    s = [np.array([0.5, 0.9, 0.0]), np.array([0.8, 0.6, 0.0])]
    lut = [np.array([-1, 3, 5]), np.array([5, 7])]
    c = gather_2d3d(m, s, lut, with_frames=True)
    pairs = sorted(zip(c.query_idx.tolist(), c.point_idx.tolist(), c.weight.tolist(),
                       [c.keyframes_of(i) for i in range(len(c))]))
    assert pairs == [(0, 5, 0.8, [0, 1]), (1, 7, 0.6, [1])]
    assert gather_2d3d(m, s, lut).frames is None  # only built for covisibility clustering


def test_gather_2d3d_keeps_multiple_points_per_keypoint():
    m = [np.array([0]), np.array([0])]
    s = [np.array([1.0]), np.array([0.5])]
    lut = [np.array([1]), np.array([2])]
    c = gather_2d3d(m, s, lut)
    assert sorted(c.point_idx.tolist()) == [1, 2] and c.query_idx.tolist() == [0, 0]


def test_gather_2d3d_empty_and_errors():
    c = gather_2d3d([np.array([-1, -1])], [np.zeros(2)], [np.array([0])])
    assert len(c) == 0
    with pytest.raises(ValueError, match="per keyframe"):
        gather_2d3d([np.array([0])], [], [np.array([0])])


def test_covisibility_clusters():
    sets = [np.array([1, 2]), np.array([2, 3]), np.array([10]), np.array([3, 4]), np.array([], dtype=int)]
    assert covisibility_clusters(sets) == [[0, 1, 3], [2], [4]]


def test_guess_camera_from_size_and_exif(tmp_path):
    cam, src = guess_camera(640, 480)
    assert src == "image_size" and cam.model == "SIMPLE_RADIAL"
    assert torch.allclose(cam.params, torch.tensor([1.2 * 640, 320.0, 240.0, 0.0], dtype=torch.float64))
    path = tmp_path / "exif.jpg"
    img = Image.new("RGB", (640, 480))
    exif = Image.Exif()
    exif.get_ifd(0x8769)[0xA405] = 36  # 36 mm equivalent focal length: f = max(W, H)
    img.save(path, exif=exif)
    cam, src = guess_camera(640, 480, path)
    assert src == "exif" and abs(cam.params[0].item() - 640.0) < 1e-9


def test_result_json_roundtrip():
    r = LocalizationResult(name="q/1.jpg", camera=Camera("PINHOLE", 10, 10, torch.tensor([5.0, 5.0, 5.0, 5.0])))
    r.success, r.pose = True, Pose.from_aa(torch.tensor([0.1, 0.2, 0.3, 1.0, 2.0, 3.0], dtype=torch.float64))
    r.points2D, r.point3D_ids, r.inlier_mask = np.zeros((2, 2)), np.array([4, 5]), np.array([True, False])
    r.covariance = np.eye(6)
    r.info["costs"] = np.float64(1.5)
    d = json.loads(json.dumps(r.to_dict()))
    assert d["success"] and d["point3D_ids"] == [4, 5] and d["inlier_mask"] == [True, False]
    assert np.allclose(Pose.from_qt(torch.tensor(d["qvec"]), torch.tensor(d["tvec"])).R.double(), r.pose.R, atol=1e-6)
    f = LocalizationResult(name="x").fail(R.NO_MATCHES, "detail")
    assert f.to_dict()["failure_reason"] == "no_matches" and "qvec" not in f.to_dict()


def test_misspelt_config_keys_are_errors_naming_them():
    """Localizer and SequenceLocalizer merge their config strictly (issue 18): a typo such as
    ``gate_pix`` is an error naming it and the known keys, never silently ignored."""
    from hloc_bpnp.localization import Localizer
    from hloc_bpnp.sequence import SequenceLocalizer

    with pytest.raises(KeyError, match=r"gate_pix.*known keys"):
        Localizer(None, {"gate_pix": 3.0})
    with pytest.raises(KeyError, match=r"retrieval\.num_keyframe.*known keys"):
        Localizer(None, {"retrieval": {"num_keyframe": 3}})
    with pytest.raises(KeyError, match=r"motion_prior\.sigma_rot.*known keys"):
        SequenceLocalizer(None, {"motion_prior": {"sigma_rot": 1.0}})


def test_pycolmap_refinement_failure_is_reported_as_such(monkeypatch):
    """A refinement that returns nothing is ``refinement_failed`` (was reported as RANSAC's)."""
    import pycolmap

    from hloc_bpnp.localization.localizer import default_conf
    from hloc_bpnp.localization.pose_estimation import estimate_pose
    from hloc_bpnp.config import merge

    rng = np.random.default_rng(0)
    cam = Camera("PINHOLE", 640, 480, torch.tensor([500.0, 500.0, 320.0, 240.0], dtype=torch.float64))
    X = rng.uniform([-2, -2, 4], [2, 2, 8], (200, 3))
    x = cam.project(torch.from_numpy(X)).numpy()
    conf = merge(default_conf, {"refinement": {"method": "pycolmap"}})
    assert estimate_pose(x, X, cam, conf).success
    monkeypatch.setattr(pycolmap, "refine_absolute_pose", lambda *a, **k: None)
    est = estimate_pose(x, X, cam, conf)
    assert not est.success and est.failure_reason == R.REFINEMENT_FAILED and est.num_inliers == 200


def test_uncertainty_weights_add_the_points_track_error():
    """Inverse variances ``1 / (sigma_q^2 + point_noise (f e_X)^2)`` per candidate, divided by
    their median: ``point_noise`` 0 (or no point errors) is the keypoints' ``1 / sigma^2``; an
    unknown (NaN) point error takes the median of the known ones; bad input is an error."""
    from types import SimpleNamespace

    from hloc_bpnp.localization.correspondences import Correspondences
    from hloc_bpnp.localization.localizer import uncertainty_weights

    cam = SimpleNamespace(f=torch.tensor([200.0, 200.0]))
    corr = Correspondences(np.array([0, 1, 2, 2]), np.array([0, 1, 2, 3]), np.ones(4))
    sig = torch.tensor([1.0, 2.0, 0.5])
    inv_kp = np.array([1.0, 0.25, 4.0, 4.0]) / 2.5  # the median of 1 / sigma^2 is 2.5
    assert np.allclose(uncertainty_weights(sig, corr, None, cam, 0.5), inv_kp)
    err = np.array([0.0, 0.01, 0.005, np.nan])  # radians: 0, 2 and 1 px at f = 200; NaN -> 1 px
    assert np.allclose(uncertainty_weights(sig, corr, err, cam, 0.0), inv_kp)
    var = np.array([1.0, 4.0 + 0.5 * 4.0, 0.25 + 0.5, 0.25 + 0.5])
    assert np.allclose(uncertainty_weights(sig, corr, err, cam, 0.5), (1 / var) / np.median(1 / var))
    with pytest.raises(ValueError, match="finite and > 0"):
        uncertainty_weights(np.array([1.0, 0.0, 1.0]), corr, err, cam, 0.5)
    for bad in (-1.0, "high", None, True):
        with pytest.raises(ValueError, match="point_noise must be"):
            uncertainty_weights(sig, corr, err, cam, bad)


def test_track_weights_need_no_keypoint_sigmas():
    """``use_weights: track``: ``1 / (median(v) + v)``, ``v = point_noise (f e_X)^2``, divided by
    the median; a map without any track error is an error naming the query."""
    from types import SimpleNamespace

    from hloc_bpnp.localization.correspondences import Correspondences
    from hloc_bpnp.localization.localizer import track_weights

    cam = SimpleNamespace(f=torch.tensor([100.0, 100.0]))
    corr = Correspondences(np.array([0, 1, 2]), np.array([0, 1, 2]), np.ones(3))
    e = np.array([0.01, 0.02, 0.04])  # 1, 2, 4 px -> v = 0.5, 2, 8; median 2
    w = 1 / (2.0 + np.array([0.5, 2.0, 8.0]))
    assert np.allclose(track_weights(corr, e, cam, 0.5), w / np.median(w))
    assert np.allclose(track_weights(corr, e, cam, 0.0), 1.0)
    with pytest.raises(ValueError, match="'q7'.*no track errors"):
        track_weights(corr, np.full(3, np.nan), cam, 0.5, "q7")


def test_points_with_large_track_errors_weigh_less():
    """Half of the map's points displaced (their track errors say so), every keypoint equally
    precise: ``point_noise`` brings the pose closer to the truth than the keypoints' sigmas alone,
    and so do ``track`` weights, which need no sigmas."""
    from hloc_bpnp.config import merge
    from hloc_bpnp.localization.localizer import default_conf, localize_from_matches

    errs = {}
    for pn in (0.0, 0.5, "track"):
        e = []
        for seed in range(3):
            cam, xq, sig, lookup = _uncertainty_problem(seed)
            rng = np.random.default_rng(10 + seed)
            n = len(xq)
            xq = cam.project(torch.from_numpy(lookup.points3D)).numpy() + rng.normal(size=(n, 2)) * 0.1
            bad = np.arange(n) % 2 == 1
            X = lookup.points3D.copy()
            X[bad] += rng.normal(size=(bad.sum(), 3)) * 0.02  # ~2 px at 500 px focal and 4-8 m
            lookup.points3D = X
            lookup.point_errors = np.where(bad, 2.0, 0.1) / 500.0
            mode = "track" if pn == "track" else "uncertainty"
            conf = merge(default_conf, {"refinement": {"use_weights": mode, "point_noise": 0.5 if pn == "track" else pn}})
            res = localize_from_matches(xq, ["kf"], [np.arange(n)], [np.ones(n)], lookup, cam, conf,
                                        LocalizationResult(name="q", camera=cam), sigmas=np.full(n, 0.1))
            assert res.success
            e.append(float(res.pose.t.norm()) + float(res.pose.R.sub(torch.eye(3, dtype=res.pose.R.dtype)).norm()))
        errs[pn] = np.median(e)
    assert errs[0.5] < 0.6 * errs[0.0], errs
    assert errs["track"] < 0.6 * errs[0.0], errs  # the same without keypoint sigmas


def _uncertainty_problem(seed=0, n=300):
    from types import SimpleNamespace

    rng = np.random.default_rng(seed)
    cam = Camera("PINHOLE", 640, 480, torch.tensor([500.0, 500.0, 320.0, 240.0], dtype=torch.float64))
    X = rng.uniform([-2, -2, 4], [2, 2, 8], (n, 3))
    x = cam.project(torch.from_numpy(X)).numpy()
    sig = np.where(np.arange(n) % 2 == 0, 0.05, 2.0)  # half precise, half noisy keypoints
    xq = x + rng.normal(size=x.shape) * sig[:, None]
    lookup = SimpleNamespace(kp_to_point={"kf": np.arange(n)}, points3D=X, point3D_ids=np.arange(n) + 100)
    return cam, xq, sig, lookup


def test_uncertainty_weights_reach_the_bpnp_refinement():
    """``use_weights: uncertainty`` weighs each correspondence by its query keypoint's 1/sigma^2:
    with half the keypoints 40x noisier, the weighted pose is much closer to the truth."""
    from hloc_bpnp.config import merge
    from hloc_bpnp.localization.localizer import default_conf, localize_from_matches

    errs = {}
    for mode in (False, "uncertainty"):
        e = []
        for seed in range(3):
            cam, xq, sig, lookup = _uncertainty_problem(seed)
            conf = merge(default_conf, {"refinement": {"use_weights": mode}})
            m0 = [np.arange(len(xq))]
            res = localize_from_matches(xq, ["kf"], m0, [np.ones(len(xq))], lookup, cam, conf,
                                        LocalizationResult(name="q", camera=cam), sigmas=sig)
            assert res.success
            e.append(float(res.pose.t.norm()) + float(res.pose.R.sub(torch.eye(3, dtype=res.pose.R.dtype)).norm()))
            if mode:
                assert np.allclose(res.weights, (1 / sig ** 2 / np.median(1 / sig ** 2))[:len(res.weights)])
        errs[mode] = np.median(e)
    assert errs["uncertainty"] < 0.5 * errs[False], errs
    cam, xq, sig, lookup = _uncertainty_problem()
    conf = merge(default_conf, {"refinement": {"use_weights": "uncertainty"}})
    with pytest.raises(ValueError, match="no keypoint 'sigmas'"):
        localize_from_matches(xq, ["kf"], [np.arange(len(xq))], [np.ones(len(xq))], lookup, cam, conf,
                              LocalizationResult(name="q", camera=cam))
    with pytest.raises(ValueError, match="use_weights must be"):
        localize_from_matches(xq, ["kf"], [np.arange(len(xq))], [np.ones(len(xq))], lookup, cam,
                              merge(default_conf, {"refinement": {"use_weights": "unsure"}}),
                              LocalizationResult(name="q", camera=cam), sigmas=sig)


def test_auto_weights_use_sigmas_where_the_features_have_them():
    """``use_weights: auto`` is ``uncertainty`` for features with ``sigmas`` (a refiner's) and no
    weights without them -- never the match scores -- and the result records which it used."""
    from hloc_bpnp.config import merge
    from hloc_bpnp.localization.localizer import default_conf, localize_from_matches, weight_mode

    cam, xq, sig, lookup = _uncertainty_problem(1)
    m0 = [np.arange(len(xq))]
    scores = [np.random.default_rng(0).uniform(0.05, 1.0, len(xq))]  # distinguishable from no weights

    def run(mode, sigmas):
        conf = merge(default_conf, {"refinement": {"use_weights": mode}})
        return localize_from_matches(xq, ["kf"], m0, scores, lookup, cam, conf,
                                     LocalizationResult(name="q", camera=cam), sigmas=sigmas)

    auto_s, unc = run("auto", sig), run("uncertainty", sig)
    auto_n, none, by_scores = run("auto", None), run(False, None), run(True, None)
    assert auto_s.info["correspondence_weights"] == "uncertainty"
    assert auto_n.info["correspondence_weights"] is False
    assert torch.equal(auto_s.pose.t, unc.pose.t) and torch.equal(auto_s.pose.R, unc.pose.R)
    assert torch.equal(auto_n.pose.t, none.pose.t) and torch.equal(auto_n.pose.R, none.pose.R)
    assert not torch.equal(auto_n.pose.t, by_scores.pose.t)  # the scores would have moved it
    assert not torch.equal(auto_s.pose.t, none.pose.t)
    conf = merge(default_conf, {"refinement": {"use_weights": "auto"}})
    assert weight_mode(conf, True) == "uncertainty" and weight_mode(conf, False) is False
    # the `default` preset (what `hloc-bpnp localize` uses) weighs a refiner's keypoints and
    # leaves features without sigmas (SIFT) unweighted; the base conf never weighs
    from hloc_bpnp.localization.localizer import localization_config

    preset = localization_config("default")
    assert weight_mode(preset, True) == "uncertainty" and weight_mode(preset, False) is False
    assert weight_mode(localization_config(None), True) is False


def test_adaptive_loss_scale_follows_the_residual_noise():
    """``loss_scale_px: adaptive``: 2.385 sigma (Cauchy) of the residuals at the initial pose,
    sigma from their median norm; clamped; used by the BPnP refinement and recorded; a scale
    that is neither a number nor 'adaptive' is an error."""
    from hloc_bpnp.localization.pose_estimation import adaptive_loss_scale, default_conf, refine_bpnp

    rng = np.random.default_rng(0)
    cam = Camera("PINHOLE", 640, 480, torch.tensor([500.0, 500.0, 320.0, 240.0], dtype=torch.float64))
    X = torch.from_numpy(np.c_[rng.uniform(-1, 1, (4000, 2)), rng.uniform(4, 6, 4000)])
    pose = Pose.identity(dtype=torch.float64)
    x_true = cam.project(X)
    y0 = torch.zeros(6, dtype=torch.float64)
    for sigma in (0.1, 0.5, 1.5):
        x = x_true + sigma * torch.from_numpy(rng.standard_normal((4000, 2)))
        c = adaptive_loss_scale(x, X, cam, y0, "cauchy")
        assert abs(c / (2.385 * sigma) - 1) < 0.05, (sigma, c)
        # whitening by L = 2 I doubles the residuals, and the scale with them
        L = 2 * torch.eye(2, dtype=torch.float64).expand(4000, 2, 2)
        assert adaptive_loss_scale(x, X, cam, y0, "cauchy", L) == pytest.approx(min(2 * c, 4.0), rel=1e-6)
    assert adaptive_loss_scale(x_true, X, cam, y0, "cauchy") == 0.05  # clamped below
    ref = {**default_conf["refinement"], "loss_scale_px": "adaptive"}
    x = x_true + 0.2 * torch.from_numpy(rng.standard_normal((4000, 2)))
    _, _, info = refine_bpnp(x.cpu().numpy(), X.cpu().numpy(), cam, pose, ref)
    assert abs(info["loss_scale_px"] / (2.385 * 0.2) - 1) < 0.05
    with pytest.raises(ValueError, match="loss_scale_px must be a number of pixels or 'adaptive'"):
        refine_bpnp(x.cpu().numpy(), X.cpu().numpy(), cam, pose, {**ref, "loss_scale_px": "auto"})


def test_adaptive_loss_scale_is_refused_by_pycolmaps_refinement():
    """pycolmap's refinement (method 'pycolmap', or refine_intrinsics) takes pixels only."""
    import copy

    from hloc_bpnp.localization.pose_estimation import default_conf, estimate_pose

    rng = np.random.default_rng(1)
    cam = Camera("PINHOLE", 640, 480, torch.tensor([500.0, 500.0, 320.0, 240.0], dtype=torch.float64))
    X = torch.from_numpy(np.c_[rng.uniform(-1, 1, (200, 2)), rng.uniform(4, 6, 200)])
    x = cam.project(X) + 0.3 * torch.from_numpy(rng.standard_normal((200, 2)))
    for ref in ({"method": "pycolmap"}, {"method": "bpnp", "refine_intrinsics": True}):
        conf = copy.deepcopy(default_conf)
        conf["refinement"].update(ref, loss_scale_px="adaptive")
        with pytest.raises(ValueError, match="pycolmap's refinement .* takes a number of pixels"):
            estimate_pose(x.cpu().numpy(), X.cpu().numpy(), cam, conf)
    conf = copy.deepcopy(default_conf)
    conf["refinement"]["loss_scale_px"] = "adaptive"
    est = estimate_pose(x.cpu().numpy(), X.cpu().numpy(), cam, conf)
    assert est.success and 0.05 <= est.info["loss_scale_px"] <= 4.0
