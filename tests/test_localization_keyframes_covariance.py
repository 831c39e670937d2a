"""Any number of keyframes (no 63-keyframe bit mask), the hloc plugin uses
every paired reference, and the covariance reported belongs to the pose reported."""
import numpy as np
import pytest
import torch

from hloc_bpnp.geometry import Camera, Pose, rotation_error_deg
from hloc_bpnp.localization import gather_2d3d
from hloc_bpnp.synthetic import look_at
from map_fixtures import reconstruction_from_observations

PINHOLE = Camera("PINHOLE", 640, 480, torch.tensor([500.0, 500.0, 320.0, 240.0], dtype=torch.float64))
D = 32
N_MAP = 70


def test_gather_2d3d_more_than_63_keyframes():
    K = 100
    m = [np.array([-1, -1]) for _ in range(K)]
    s = [np.zeros(2) for _ in range(K)]
    lut = [np.array([j]) for j in range(K)]
    m[70] = np.array([0, -1])  # query kp 0 -> keyframe 70's kp 0 -> point 70
    m[3] = np.array([-1, 0])  # query kp 1 -> point 3
    m[99] = np.array([0, -1])  # query kp 0 -> point 99
    c = gather_2d3d(m, s, lut, with_frames=True)
    assert sorted(zip(c.query_idx.tolist(), c.point_idx.tolist())) == [(0, 70), (0, 99), (1, 3)]
    assert c.frames.shape == (3, 13)
    got = {int(p): c.keyframes_of(i) for i, p in enumerate(c.point_idx)}
    assert got == {70: [70], 99: [99], 3: [3]}
    assert set(c.point_idx[c.from_keyframes([70, 3])].tolist()) == {70, 3}
    assert c.select(c.from_keyframes([99])).point_idx.tolist() == [99]
    assert gather_2d3d(m, s, lut).frames is None  # not built without clustering


class _Scene:
    def __init__(self, seed=0, num_points=800):
        rng = np.random.default_rng(seed)
        self.points = rng.uniform(-2, 2, size=(num_points, 3)) * [1.0, 1.0, 0.8]
        desc = rng.normal(size=(num_points, D)).astype(np.float32)
        self.desc = desc / np.linalg.norm(desc, axis=1, keepdims=True)
        self.map_poses = {}
        for k in range(N_MAP):
            a = 2 * np.pi * k / N_MAP * 0.25
            eye = np.array([8 * np.sin(a), -8 * np.cos(a), 0.3 * np.sin(3 * a)])
            self.map_poses[f"map/{k:03d}.png"] = look_at(eye, np.zeros(3), up=(0, 0, 1))
        a = 0.4
        self.query_pose = look_at(np.array([7 * np.sin(a), -7 * np.cos(a), 0.1]), np.zeros(3), up=(0, 0, 1))

    def observe(self, pose):
        x, valid = PINHOLE.project_with_valid(pose.transform(torch.from_numpy(self.points)))
        idx = np.nonzero(valid.numpy())[0]
        return {"keypoints": x.numpy()[idx].astype(np.float32), "descriptors": self.desc[idx],
                "scores": np.ones(len(idx), np.float32),
                "image_size": np.array([PINHOLE.width, PINHOLE.height])}, idx

    def reconstruction(self):
        return reconstruction_from_observations(PINHOLE, self.map_poses, self.points, self.observe)


@pytest.fixture(scope="module")
def big():
    sc = _Scene()
    rec, feats = sc.reconstruction()
    return sc, rec, feats


def _true_matches(sc, qidx, ridx):
    """matches0 of the query keypoints into a reference's keypoints (same 3D point)."""
    pos = {int(p): k for k, p in enumerate(ridx)}
    return np.array([pos.get(int(p), -1) for p in qidx], dtype=np.int64)


def test_hloc_plugin_uses_references_beyond_63(big, tmp_path):
    """Only references 64-70 carry matches: hloc_plugin used to drop them (first 63 kept)."""
    from hloc_bpnp.io.h5store import FeatureStore, MatchStore
    from hloc_bpnp.io.hloc_text import write_pairs, write_query_list
    from hloc_bpnp.localization.hloc_plugin import localize_from_hloc

    sc, rec, feats = big
    sfm = tmp_path / "sfm"
    sfm.mkdir()
    rec.write(str(sfm))
    qf, qidx = sc.observe(sc.query_pose)
    refs = list(sc.map_poses)
    with FeatureStore.writer(tmp_path / "feats.h5") as fs:
        fs.put("query.png", qf)
        for n, f in feats.items():
            fs.put(n, f)
    with MatchStore.writer(tmp_path / "matches.h5") as ms:
        for j, r in enumerate(refs):
            if j < 63:
                m = np.full(len(qidx), -1, dtype=np.int64)
            else:
                m = _true_matches(sc, qidx, sc.observe(sc.map_poses[r])[1])
            ms.put("query.png", r, m, (m >= 0).astype(np.float32))
    write_pairs(tmp_path / "pairs.txt", [("query.png", r) for r in refs])
    write_query_list(tmp_path / "queries.txt", {"query.png": PINHOLE})
    res = localize_from_hloc(sfm, tmp_path / "feats.h5", tmp_path / "matches.h5", tmp_path / "pairs.txt",
                             tmp_path / "queries.txt", progress=False)["query.png"]
    assert res.retrieved == refs
    assert res.success, (res.failure_reason, res.info)
    assert rotation_error_deg(res.pose.R, sc.query_pose.R).item() < 1e-6


@pytest.mark.parametrize("clustering", [False, True])
def test_localize_from_matches_with_70_keyframes(big, clustering):
    from hloc_bpnp.localization.hloc_plugin import ModelLookup
    from hloc_bpnp.localization.localizer import default_conf, localize_from_matches
    from hloc_bpnp.localization.results import LocalizationResult
    from hloc_bpnp.config import merge

    sc, rec, feats = big
    lookup = ModelLookup.from_reconstruction(rec)
    qf, qidx = sc.observe(sc.query_pose)
    names = list(sc.map_poses)
    m0 = [_true_matches(sc, qidx, sc.observe(sc.map_poses[n])[1]) for n in names]
    s0 = [(m >= 0).astype(np.float64) for m in m0]
    conf = merge(default_conf, {"covisibility_clustering": clustering})
    res = localize_from_matches(qf["keypoints"].astype(np.float64), names, m0, s0, lookup, PINHOLE, conf,
                                LocalizationResult("q", camera=PINHOLE))
    assert res.success, (res.failure_reason, res.info)
    assert rotation_error_deg(res.pose.R, sc.query_pose.R).item() < 1e-6
    if clustering:
        assert res.info["num_clusters"] >= 1 and len(res.info["cluster"]) == N_MAP


def test_localizer_num_keyframes_above_63(big):
    """retrieval.num_keyframes = 70 used to raise in gather_2d3d (64-bit keyframe mask)."""
    from hloc_bpnp.localization import Localizer
    from hloc_bpnp.mapping import Map

    sc, rec, feats = big
    conf = {"features": "sift", "matcher": "mnn",
            "retrieval": {"global_descriptor": {"type": "vlad", "num_clusters": 8}}}
    mp = Map.from_reconstruction(rec, feats, conf)
    loc = Localizer(mp, {"retrieval": {"num_keyframes": 70}})
    qf, _ = sc.observe(sc.query_pose)
    res = loc.localize_features(qf, PINHOLE)
    assert len(res.retrieved) == 70
    assert res.success, (res.failure_reason, res.info)
    assert rotation_error_deg(res.pose.R, sc.query_pose.R).item() < 1e-6
    # issue 12.10: "total" sums every stage once, also for a query that fails early
    stages = {k: v for k, v in res.timings.items() if k != "total"}
    assert res.timings["total"] == pytest.approx(sum(stages.values()))
    from hloc_bpnp.localization import LocalizationResult

    empty = {k: v[:0] for k, v in qf.items() if k != "image_size"} | {"image_size": qf["image_size"]}
    bad = loc.localize_features(empty, PINHOLE, LocalizationResult("q", timings={"features": 0.25}))
    assert not bad.success and bad.timings["total"] == pytest.approx(0.25)


def _pnp_case(seed=0, n=60, noise=0.7):
    from hloc_bpnp.bpnp.testing import random_problem

    pb = random_problem(1, n, noise=noise, seed=seed)
    K = pb.K[0]
    cam = Camera("PINHOLE", 640, 480, torch.stack([K[0, 0], K[1, 1], K[0, 2], K[1, 2]]))
    return pb.points2d[0].numpy(), pb.points3d[0].numpy(), cam, pb.pose[0]


def test_rejected_refinement_reports_covariance_of_returned_pose(monkeypatch):
    """Issue 12.8: a rejected BPnP refinement kept the RANSAC pose but reported the
    covariance computed at BPnP's (rejected) solution."""
    import hloc_bpnp.bpnp as bpnp_mod
    from hloc_bpnp.localization.pose_estimation import covariance_at, default_conf, refine_bpnp

    x, X, cam, gt = _pnp_case()
    ref = dict(default_conf["refinement"])
    ransac_pose = Pose.from_aa(gt)
    real = bpnp_mod.solve_pnp
    seen = {}

    def worse_solve(*a, pose_init=None, **kw):  # a 'solution' far from the optimum, not refined
        res = real(*a, pose_init=pose_init + torch.tensor([0.05, 0, 0, 0.2, 0, 0], dtype=torch.float64),
                   max_iters=0, polish_steps=0, **{k: v for k, v in kw.items() if k not in ("max_iters", "polish_steps")})
        seen["cov"] = res.covariance
        return res

    monkeypatch.setattr(bpnp_mod, "solve_pnp", worse_solve)
    pose, cov, info = refine_bpnp(x, X, cam, ransac_pose, ref)
    assert info["refinement_rejected"] and pose is ransac_pose
    expected = covariance_at(torch.from_numpy(x), torch.from_numpy(X), cam, ransac_pose.aa_t(), None,
                             ref["loss"], float(ref["loss_scale_px"])).numpy()
    assert cov is not None and np.allclose(cov, expected, rtol=1e-10, atol=0)
    assert not np.allclose(cov, seen["cov"].numpy(), rtol=1e-3)  # the old, wrong answer


def test_accepted_refinement_covariance_matches_covariance_at():
    from hloc_bpnp.localization.pose_estimation import covariance_at, default_conf, refine_bpnp

    x, X, cam, gt = _pnp_case(seed=1)
    ref = dict(default_conf["refinement"])
    pose, cov, info = refine_bpnp(x, X, cam, Pose.from_aa(gt + 1e-3), ref)
    assert not info.get("refinement_rejected") and info["bpnp_converged"]
    expected = covariance_at(torch.from_numpy(x), torch.from_numpy(X), cam, pose.aa_t(), None,
                             ref["loss"], float(ref["loss_scale_px"])).numpy()
    assert np.allclose(cov, expected, rtol=1e-8)
