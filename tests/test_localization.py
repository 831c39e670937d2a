"""Localizer end to end on an 'exact features' map: keypoints are the GT projections of
known 3D points and each 3D point has its own descriptor, so only the localization stages
(retrieval, matching, 2D-3D, RANSAC, BPnP) are under test. Plus the hloc plugin mode."""
import copy

import numpy as np
import pytest
import torch

from hloc_bpnp.geometry import Camera, center_error, rotation_error_deg
from hloc_bpnp.localization import Localizer
from hloc_bpnp.localization import results as R
from hloc_bpnp.mapping import Map
from hloc_bpnp.synthetic import look_at
from map_fixtures import reconstruction_from_observations

D = 64
PINHOLE = Camera("PINHOLE", 640, 480, torch.tensor([500.0, 500.0, 320.0, 240.0], dtype=torch.float64))
OPENCV = Camera("OPENCV", 640, 480, torch.tensor([480.0, 490.0, 322.0, 238.0, -0.08, 0.01, 0.001, -0.0005],
                                                  dtype=torch.float64))


def _views(n, radius, phase=0.0):
    poses = []
    for k in range(n):
        a = phase + 2 * np.pi * k / n * 0.25  # a 90 deg arc facing the point cloud
        eye = np.array([radius * np.sin(a), -radius * np.cos(a), 0.3 * np.sin(3 * a)])
        poses.append(look_at(eye, np.zeros(3), up=(0, 0, 1)))
    return poses


class ExactScene:
    """Random 3D points, unique descriptors, map views and query views with GT."""

    def __init__(self, seed=0, num_points=1500, num_map=5, num_query=3):
        rng = np.random.default_rng(seed)
        self.points = rng.uniform(-2, 2, size=(num_points, 3)) * [1.0, 1.0, 0.8]
        desc = rng.normal(size=(num_points, D)).astype(np.float32)
        self.desc = desc / np.linalg.norm(desc, axis=1, keepdims=True)
        self.map_poses = {f"map/{i}.png": p for i, p in enumerate(_views(num_map, 8.0))}
        self.query_poses = {f"query/{i}.png": p for i, p in enumerate(_views(num_query, 7.0, phase=0.15))}
        self.rng = rng

    def observe(self, camera, pose, noise_px=0.0, desc_noise=0.0, rng=None):
        rng = rng or self.rng
        Xc = pose.transform(torch.from_numpy(self.points))
        x, valid = camera.project_with_valid(Xc)
        idx = np.nonzero(valid.numpy())[0]
        kp = x.numpy()[idx] + rng.normal(scale=noise_px, size=(len(idx), 2)) if noise_px else x.numpy()[idx]
        d = self.desc[idx] + desc_noise * rng.normal(size=(len(idx), D)).astype(np.float32)
        d /= np.linalg.norm(d, axis=1, keepdims=True)
        feats = {"keypoints": kp.astype(np.float32), "descriptors": d.astype(np.float32),
                 "scores": np.ones(len(idx), np.float32), "image_size": np.array([camera.width, camera.height])}
        return feats, idx

    def build_map(self, matcher="mnn"):
        rec, feats = reconstruction_from_observations(PINHOLE, self.map_poses, self.points,
                                                      lambda pose: self.observe(PINHOLE, pose))
        conf = {"features": "sift", "matcher": matcher,
                "retrieval": {"global_descriptor": {"type": "vlad", "num_clusters": 16}}}
        return Map.from_reconstruction(rec, feats, conf)


@pytest.fixture(scope="module")
def scene():
    return ExactScene()


@pytest.fixture(scope="module")
def exact_map(scene):
    return scene.build_map()


def _localize(loc, scene, name, camera, **kw):
    feats, _ = scene.observe(camera, scene.query_poses[name], rng=np.random.default_rng(1), **kw)
    return loc.localize_features(feats, camera)


def _errors(res, gt):
    return rotation_error_deg(res.pose.R, gt.R).item(), center_error(res.pose, gt).item()


@pytest.mark.parametrize("camera", [PINHOLE, OPENCV], ids=["pinhole", "opencv"])
def test_exact_features_give_exact_pose(scene, exact_map, camera):
    loc = Localizer(exact_map, {"retrieval": {"num_keyframes": 3}})
    for name, gt in scene.query_poses.items():
        res = _localize(loc, scene, name, camera)
        assert res.success, res.failure_reason
        r, t = _errors(res, gt)
        assert r < 1e-6 and t < 1e-6, (name, r, t)
        assert res.covariance is not None and res.covariance.shape == (6, 6)
        assert res.num_inliers > 100 and set(res.retrieved) <= set(exact_map.image_names)
        assert {"retrieval", "matching", "pose"} <= set(res.timings)


def test_correspondences_name_their_query_keypoints(scene, exact_map):
    name = next(iter(scene.query_poses))
    feats, _ = scene.observe(PINHOLE, scene.query_poses[name], rng=np.random.default_rng(1))
    res = Localizer(exact_map, {"retrieval": {"num_keyframes": 3}}).localize_features(feats, PINHOLE)
    assert res.success and res.keypoint_ids.shape == (len(res.points2D),)
    kp = np.asarray(feats["keypoints"], np.float64)
    np.testing.assert_allclose(res.points2D, kp[res.keypoint_ids], atol=1e-5)
    assert res.to_dict(with_correspondences=True)["keypoint_ids"] == res.keypoint_ids.tolist()


def test_map_rows_of_point_ids(exact_map):
    from hloc_bpnp.io.colmap import rows_of_ids

    ids = exact_map.point3D_ids
    rows = np.array([[3, 0], [len(ids) - 1, 7]])
    np.testing.assert_array_equal(exact_map.rows_of(ids[rows]), rows)
    assert exact_map.rows_of(np.array([-1, ids.max() + 1, ids[5]])).tolist() == [-1, -1, 5]
    assert rows_of_ids(np.zeros(0, np.int64), [4, -1]).tolist() == [-1, -1]
    with pytest.raises(ValueError, match="must increase past the map's last id"):
        exact_map._append_points(np.zeros((1, 3)), np.array([ids.max()]))


def test_map_point_errors_are_track_errors_over_focal(exact_map):
    """``Map.point_errors``: pycolmap's mean track reprojection error of each point (pixels)
    divided by its cameras' focal length (an angle), row for row with ``points3D``; NaN where
    the model has none (pycolmap's -1, e.g. points added by hand as in this map)."""
    from hloc_bpnp.io.colmap import angular_point_errors

    ids = exact_map.point3D_ids
    assert len(exact_map.point_errors) == len(ids) and np.all(np.isnan(exact_map.point_errors))
    rec = exact_map.reconstruction.__class__(exact_map.reconstruction)  # a copy
    px = 0.2 + 0.01 * np.arange(len(ids))
    for i, e in zip(ids.tolist(), px):
        rec.points3D[i].error = float(e)
    rec.points3D[int(ids[3])].error = -1.0
    out = angular_point_errors(rec)
    want = px / float(PINHOLE.f.double().mean())
    want[3] = np.nan
    np.testing.assert_allclose(out, want)
    m = Map.from_reconstruction(rec, exact_map.features, exact_map.conf, exact_map.global_model,
                                exact_map.global_index)
    np.testing.assert_allclose(m.point_errors, want)
    from hloc_bpnp.localization.hloc_plugin import ModelLookup  # the hloc plugin's map reads them too

    np.testing.assert_allclose(ModelLookup.from_reconstruction(rec).point_errors, want)


def test_error_degrades_gracefully_with_noise(scene, exact_map):
    loc = Localizer(exact_map)
    name, gt = next(iter(scene.query_poses.items()))
    errs = []
    for sigma in [0.0, 0.5, 1.0, 2.0]:
        r = []
        for seed in range(3):
            feats, _ = scene.observe(PINHOLE, gt, noise_px=sigma, rng=np.random.default_rng(seed))
            res = loc.localize_features(feats, PINHOLE)
            assert res.success
            r.append(_errors(res, gt)[0])
        errs.append(np.mean(r))
    assert errs[0] < 1e-6
    # error grows with noise, roughly linearly (no breakdown)
    assert errs[1] < errs[2] < errs[3] < 0.2
    assert errs[3] / errs[1] < 8


def test_bpnp_refinement_never_worse_than_ransac(scene, exact_map):
    conf = {"refinement": {"method": "bpnp", "loss": "cauchy", "loss_scale_px": 1.0}}
    loc = Localizer(exact_map, conf)
    for seed in range(4):
        for name, gt in scene.query_poses.items():
            feats, _ = scene.observe(PINHOLE, gt, noise_px=1.0, rng=np.random.default_rng(seed))
            # 30 % outliers: scramble some keypoints
            rng = np.random.default_rng(100 + seed)
            out = rng.random(len(feats["keypoints"])) < 0.3
            feats["keypoints"][out] = rng.uniform([0, 0], [640, 480], size=(out.sum(), 2)).astype(np.float32)
            res = loc.localize_features(feats, PINHOLE)
            assert res.success
            assert res.info["cost_refined"] <= res.info["cost_ransac"]


def test_refinement_ablation_l2_matches_or_beats_ransac(scene, exact_map):
    """On outlier-free data LO-RANSAC's local least squares is already close to the ML pose;
    the L2 BPnP refinement reaches the ML optimum, so it is never meaningfully worse."""
    errs = {}
    for method in ["none", "bpnp"]:
        loc = Localizer(exact_map, {"refinement": {"method": method, "loss": "l2"}})
        e = []
        for seed in range(3):
            for name, gt in scene.query_poses.items():
                feats, _ = scene.observe(PINHOLE, gt, noise_px=1.0, rng=np.random.default_rng(seed))
                res = loc.localize_features(feats, PINHOLE)
                e.append(_errors(res, gt)[0])
                if method == "bpnp":
                    assert res.info["cost_refined"] <= res.info["cost_ransac"]
        errs[method] = np.median(e)
    assert errs["bpnp"] <= errs["none"] * 1.02


def test_failure_reasons(scene, exact_map):
    name, gt = next(iter(scene.query_poses.items()))
    feats, _ = scene.observe(PINHOLE, gt)
    empty = {k: v[:0] for k, v in feats.items() if k != "image_size"}
    empty["image_size"] = feats["image_size"]
    loc = Localizer(exact_map)
    assert loc.localize_features(empty, PINHOLE).failure_reason == R.NO_FEATURES

    loc0 = Localizer(exact_map, {"retrieval": {"num_keyframes": 0}})
    r = loc0.localize_features(feats, PINHOLE)
    assert not r.success and r.failure_reason == R.NO_RETRIEVAL and r.pose is None

    strict = {"model": "nearest_neighbor", "mutual": True, "distance_threshold": 0.05}
    loc_strict = Localizer(exact_map, {"matcher": strict})
    rnd = copy.deepcopy(feats)
    rng = np.random.default_rng(0)
    d = rng.normal(size=rnd["descriptors"].shape).astype(np.float32)
    rnd["descriptors"] = d / np.linalg.norm(d, axis=1, keepdims=True)
    r = loc_strict.localize_features(rnd, PINHOLE)
    assert not r.success and r.failure_reason == R.NO_MATCHES and r.pose is None

    # right descriptors, keypoints scrambled: matches and 2D-3D exist, no consistent pose
    bad = copy.deepcopy(feats)
    bad["keypoints"] = rng.uniform([0, 0], [640, 480], size=bad["keypoints"].shape).astype(np.float32)
    r = loc.localize_features(bad, PINHOLE)
    assert not r.success and r.pose is None
    assert r.failure_reason in (R.RANSAC_FAILED, R.TOO_FEW_INLIERS)
    assert r.num_matches > 0


def test_covisibility_clustering_runs(scene, exact_map):
    loc = Localizer(exact_map, "clustering")
    name, gt = next(iter(scene.query_poses.items()))
    res = _localize(loc, scene, name, PINHOLE)
    assert res.success and res.info["num_clusters"] >= 1
    assert _errors(res, gt)[0] < 1e-6


def test_localize_many_records_image_errors(exact_map, tmp_path):
    loc = Localizer(exact_map)
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"not an image")
    out = loc.localize_many([("broken.jpg", "broken.jpg", PINHOLE), ("missing.png", "missing.png", None)],
                            image_dir=tmp_path, progress=False)
    assert out["broken.jpg"].failure_reason == R.IMAGE_ERROR and "broken.jpg" in out["broken.jpg"].info["failure_detail"]
    assert out["missing.png"].failure_reason == R.IMAGE_ERROR


def test_hloc_plugin_mode(scene, exact_map, tmp_path):
    """Artefacts in hloc's layout (written by our stores) -> our RANSAC + BPnP localization."""
    from hloc_bpnp.io.h5store import FeatureStore, MatchStore
    from hloc_bpnp.io.hloc_text import read_results, write_pairs, write_query_list
    from hloc_bpnp.localization import write_results as write_loc_results
    from hloc_bpnp.localization.hloc_plugin import localize_from_hloc
    from hloc_bpnp.matching import build_matcher

    sfm = tmp_path / "sfm"
    sfm.mkdir()
    exact_map.reconstruction.write(str(sfm))
    matcher = build_matcher("mnn")
    qfeats = {n: scene.observe(PINHOLE, p, rng=np.random.default_rng(2))[0] for n, p in scene.query_poses.items()}
    pairs = [(q, r) for q in qfeats for r in exact_map.image_names[:3]]
    with FeatureStore.writer(tmp_path / "feats.h5") as fs:
        for n, f in {**exact_map.features, **qfeats}.items():
            fs.put(n, f)
    with MatchStore.writer(tmp_path / "matches.h5") as ms:
        for q, r in pairs:
            m = matcher.match({k: torch.from_numpy(np.asarray(v)) for k, v in qfeats[q].items()},
                              {k: torch.from_numpy(np.asarray(v)) for k, v in exact_map.features[r].items()})
            ms.put(q, r, m["matches0"].numpy(), m["matching_scores0"].numpy())
    write_pairs(tmp_path / "pairs.txt", pairs)
    write_query_list(tmp_path / "queries.txt", {n: PINHOLE for n in qfeats} | {"query/missing.png": PINHOLE})
    results = localize_from_hloc(sfm, tmp_path / "feats.h5", tmp_path / "matches.h5", tmp_path / "pairs.txt",
                                 tmp_path / "queries.txt", progress=False)
    assert results["query/missing.png"].failure_reason == R.NO_FEATURES
    for n, gt in scene.query_poses.items():
        assert results[n].success
        assert _errors(results[n], gt)[0] < 1e-6
    write_loc_results(results, tmp_path / "res.txt")

    assert set(read_results(tmp_path / "res.txt")) == set(scene.query_poses)
    # CLI plugin mode end to end
    from hloc_bpnp.cli import main

    rc = main(["localize", "--hloc-reference", str(sfm), "--hloc-features", str(tmp_path / "feats.h5"),
               "--hloc-matches", str(tmp_path / "matches.h5"), "--hloc-pairs", str(tmp_path / "pairs.txt"),
               "--queries", str(tmp_path / "queries.txt"), "--output", str(tmp_path / "cli.txt")])
    assert rc == 0 and len(read_results(tmp_path / "cli.txt")) == len(scene.query_poses)
    # patch alignment needs images the plugin mode never reads: an error, not a silent no-op
    with pytest.raises(ValueError, match="plugin mode"):
        localize_from_hloc(sfm, tmp_path / "feats.h5", tmp_path / "matches.h5", tmp_path / "pairs.txt",
                           tmp_path / "queries.txt", conf="aligned", progress=False)
    # anisotropic keypoint noise reads the query images: refused upfront without them; with
    # them every query is localized, and one whose image is missing is a recorded failure
    args = (sfm, tmp_path / "feats.h5", tmp_path / "matches.h5", tmp_path / "pairs.txt", tmp_path / "queries.txt")
    st = {"refinement": {"keypoint_covariance": {"method": "structure_tensor"}}}
    with pytest.raises(ValueError, match="needs the query images"):
        localize_from_hloc(*args, conf=st, progress=False)
    from PIL import Image

    names = list(scene.query_poses)
    for n in names[1:]:
        (tmp_path / "qimages" / n).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.random.default_rng(0).integers(0, 255, (int(PINHOLE.height), int(PINHOLE.width)),
                                                          dtype=np.uint8)).save(tmp_path / "qimages" / n)
    res_st = localize_from_hloc(*args, conf=st, progress=False, query_images=tmp_path / "qimages")
    assert res_st[names[0]].failure_reason == R.IMAGE_ERROR
    assert names[0] in res_st[names[0]].info["failure_detail"]  # the message names the missing file
    # an image of another size than its camera: a recorded failure naming both sizes
    Image.fromarray(np.zeros((10, 12), np.uint8)).save(tmp_path / "qimages" / names[1])
    bad = localize_from_hloc(*args, conf=st, progress=False, query_images=tmp_path / "qimages")[names[1]]
    assert bad.failure_reason == R.IMAGE_ERROR and "12x10 px but its camera" in bad.info["failure_detail"]
    for n in names[1:]:
        assert res_st[n].success and _errors(res_st[n], scene.query_poses[n])[0] < 1e-3
    # use_weights 'auto': no sigmas in the file -> no weights; a refiner's sigmas -> 1 / sigma^2
    auto = {"refinement": {"use_weights": "auto"}}
    res_auto = localize_from_hloc(*args, conf=auto, progress=False)
    assert all(res_auto[n].info["correspondence_weights"] is False for n in names)
    with FeatureStore.writer(tmp_path / "feats_sig.h5") as fs:
        for n, f in {**exact_map.features, **qfeats}.items():
            fs.put(n, {**f, "sigmas": np.full(len(f["keypoints"]), 0.5, np.float32)} if n in qfeats else f)
    res_sig = localize_from_hloc(sfm, tmp_path / "feats_sig.h5", *args[2:], conf=auto, progress=False)
    for n in names:
        assert res_sig[n].success and res_sig[n].info["correspondence_weights"] == "uncertainty"


def test_match_3d_only_equivalent_and_fast_preset(scene, exact_map):
    name, gt = next(iter(scene.query_poses.items()))
    feats, _ = scene.observe(PINHOLE, gt, rng=np.random.default_rng(3))
    out = {}
    for flag in (False, True):
        res = Localizer(exact_map, {"match_3d_only": flag}).localize_features(feats, PINHOLE)
        assert res.success and _errors(res, gt)[0] < 1e-6
        out[flag] = res
    # same 2D-3D candidates: restricting the reference keypoints only drops matches that
    # could never reach a 3D point (exact features: the nearest neighbours are the same)
    assert set(out[True].point3D_ids.tolist()) == set(out[False].point3D_ids.tolist())
    loc = Localizer(exact_map, "fast")
    assert loc.conf["retrieval"]["num_keyframes"] == 3 and loc.extractor.conf["resize_max"] == 800
