"""The real-time pieces of sequence mode: the numpy tracking solver, search by projection,
in-place keyframe insertion (Map.add_keyframe), the mapping thread, the public localization
API the tracker is built on."""
import threading

import numpy as np
import pytest
import torch

from hloc_bpnp.bpnp import solve_pnp
from hloc_bpnp.geometry import Pose
from hloc_bpnp.localization import Localizer
from hloc_bpnp.mapping import Map
from hloc_bpnp.sequence.fast_pose import refine_pose
from hloc_bpnp.sequence.local_map import LocalMap, LocalMapBuilder, search_by_projection
from test_localization import PINHOLE, ExactScene


# ---------------------------------------------------------------------------- numpy solver
def _pnp_problem(seed=0, n=200, noise=0.7, outliers=0.2):
    g = np.random.default_rng(seed)
    X = g.normal(size=(n, 3)) + [0, 0, 6.0]
    y = np.array([0.1, -0.05, 0.02, 0.2, -0.1, 0.3])
    pose = Pose.from_aa(torch.tensor(y))
    uv = PINHOLE.project(pose.transform(torch.tensor(X))).numpy()
    x = uv + g.normal(scale=noise, size=uv.shape)
    bad = g.random(n) < outliers
    x[bad] += g.uniform(-30, 30, size=(bad.sum(), 2))
    return x, X, y


@pytest.mark.parametrize("with_prior", [False, True])
def test_numpy_solver_reaches_the_bpnp_optimum(with_prior):
    x, X, y = _pnp_problem()
    y0 = torch.tensor(y) + torch.tensor([0.02, -0.01, 0.015, 0.1, 0.05, -0.1])
    yp = torch.tensor(y) + torch.tensor([0.01, 0.0, -0.01, 0.05, 0.0, 0.02])
    info = torch.diag(torch.tensor([1e5, 1e5, 1e5, 1e3, 1e3, 1e3], dtype=torch.float64))
    prior = (yp, info) if with_prior else None
    with torch.no_grad():
        ref = solve_pnp(torch.tensor(x), torch.tensor(X), PINHOLE, pose_init=y0, loss="cauchy",
                        loss_scale=1.0, pose_prior=prior)
    p0 = Pose.from_aa(y0)
    fprior = None
    if with_prior:
        pp = Pose.from_aa(yp)
        fprior = (pp.R.numpy(), pp.t.numpy(), info.numpy())
    fx, fy, cx, cy = PINHOLE.params.numpy()
    R, t, cov, valid = refine_pose(x, X, fx, fy, cx, cy, p0.R.numpy(), p0.t.numpy(), "cauchy", 1.0, fprior,
                                   max_iters=300, tol=1e-16)
    assert valid and cov is not None and np.all(np.linalg.eigvalsh(cov) > 0)
    ref_pose = Pose.from_aa(ref.pose)
    assert np.abs(R - ref_pose.R.numpy()).max() < 1e-8
    assert np.abs(t - ref_pose.t.numpy()).max() < 1e-7
    # and the prior moved the optimum (the comparison is not vacuous)
    if with_prior:
        R2, t2, _, _ = refine_pose(x, X, fx, fy, cx, cy, p0.R.numpy(), p0.t.numpy(), "cauchy", 1.0, None)
        assert np.abs(t2 - t).max() > 1e-4


def test_numpy_solver_rejects_degenerate_input():
    x, X, y = _pnp_problem(n=30, outliers=0)
    p = Pose.from_aa(torch.tensor(y))
    fx, fy, cx, cy = PINHOLE.params.numpy()
    Xdeg = np.repeat(X[:1], 30, axis=0)  # one point repeated: no pose
    _, _, _, valid = refine_pose(x, Xdeg, fx, fy, cx, cy, p.R.numpy(), p.t.numpy())
    assert not valid


# ---------------------------------------------------------------------------- search by projection
def test_search_by_projection_matches_near_the_projection_only():
    from scipy.spatial import cKDTree

    g = np.random.default_rng(0)
    M, D = 300, 32
    desc = g.normal(size=(M, D)).astype(np.float32)
    desc /= np.linalg.norm(desc, axis=1, keepdims=True)
    uv = g.uniform([10, 10], [630, 470], size=(M, 2))
    # keypoints: the true ones shifted by 3 px, plus distractors with random descriptors
    kp = np.concatenate([uv + [3.0, 0.0], g.uniform([0, 0], [640, 480], size=(300, 2))])
    dk = np.concatenate([desc + 0.05 * g.normal(size=(M, D)).astype(np.float32),
                         g.normal(size=(300, D)).astype(np.float32)])
    dk /= np.linalg.norm(dk, axis=1, keepdims=True)
    local = LocalMap(np.arange(M) + 1000, np.zeros((M, 3)), desc, ["kf"])
    depth = np.ones(M)
    depth[:10] = -1  # behind the camera: never matched
    q, rows, dist = search_by_projection(kp, dk, cKDTree(kp), local, uv, depth, (640, 480), radius=8.0,
                                         max_distance=0.7, ratio=0.9)
    assert len(q) > 0.9 * (M - 10)
    assert np.all(q == rows - 1000)  # every match is the right keypoint
    assert not np.any(np.isin(rows, np.arange(10) + 1000))
    assert len(np.unique(q)) == len(q) and len(np.unique(rows)) == len(rows)
    # a radius smaller than the 3-px shift finds nothing; far descriptors find nothing
    q2, _, _ = search_by_projection(kp, dk, cKDTree(kp), local, uv, depth, (640, 480), 2.0, 0.7, 0.9)
    assert len(q2) == 0
    q3, _, _ = search_by_projection(kp, dk, cKDTree(kp), local, uv, depth, (640, 480), 8.0, 0.01, 0.9)
    assert len(q3) == 0


# ---------------------------------------------------------------------------- in-place growth
@pytest.fixture()
def exact():
    scene = ExactScene(seed=3, num_points=600, num_map=4, num_query=2)
    return scene, scene.build_map()


def _new_keyframe(scene, map_, name="query/0.png"):
    """A query view with its observations of existing points and two-view new points."""
    feats, idx = scene.observe(PINHOLE, scene.query_poses[name])
    # map rows of the scene points (the map holds the points seen at least twice)
    lookup = {tuple(np.round(x, 9)): r for r, x in enumerate(map_.points3D)}
    obs_kp, obs_rows, free = [], [], []
    for k, p in enumerate(idx):
        r = lookup.get(tuple(np.round(scene.points[p], 9)))
        if r is None:
            free.append(k)
        else:
            obs_kp.append(k)
            obs_rows.append(r)
    return feats, np.array(obs_kp), np.array(obs_rows), free


def test_add_keyframe_grows_every_lookup_in_place(exact, tmp_path):
    scene, map_ = exact
    name = "query/0.png"
    feats, obs_kp, obs_rows, _ = _new_keyframe(scene, map_)
    assert len(obs_kp) > 50
    rec_before = map_.reconstruction
    tables_before = {n: map_.kp_to_point[n] for n in map_.image_names}
    n_points, n_images = len(map_.points3D), len(map_.image_names)
    # one new point observed by the new image (keypoint 0 made free) and by a map image's free keypoint
    nb = map_.image_names[0]
    free_nb = int(np.flatnonzero(map_.kp_to_point[nb] < 0)[0]) if (map_.kp_to_point[nb] < 0).any() else None
    k_new = int(obs_kp[0])
    keep = obs_kp != k_new
    tracks, new_xyz = [], np.zeros((0, 3))
    if free_nb is not None:
        tracks = [[(name, k_new), (nb, free_nb)]]
        new_xyz = np.array([[0.1, 0.2, 0.3]])
    rows = map_.add_keyframe(name, PINHOLE, scene.query_poses[name], feats, obs_kp[keep], obs_rows[keep],
                             new_xyz, tracks)
    assert map_.reconstruction is rec_before  # extended, never copied
    assert name in map_.image_names and map_.image_names == sorted(map_.image_names)
    assert len(map_.image_names) == n_images + 1 and len(map_.points3D) == n_points + len(rows)
    assert map_.point_normals.shape == (len(map_.points3D), 3) and np.isnan(map_.point_normals[rows]).all()
    assert np.all(map_.kp_to_point[name][obs_kp[keep]] == obs_rows[keep])
    untouched = [n for n in tables_before if n != nb or free_nb is None]
    assert all(map_.kp_to_point[n] is tables_before[n] for n in untouched)  # no copies of other images
    # covisibility and point -> image lookups see the new image
    assert name in map_.covisible_images(map_.image_names[1])
    assert (name, len(obs_rows[keep])) in map_.images_observing(obs_rows[keep])
    if free_nb is not None:
        assert map_.kp_to_point[nb][free_nb] == rows[0] and map_.kp_to_point[name][k_new] == rows[0]
        assert map_.image_version(nb) == 1
        assert {n for n, _ in map_.images_observing(rows)} == {name, nb}
    # retrieval finds it; the reconstruction holds its observations
    assert name in map_.global_index.names
    img = map_.reconstruction.find_image_with_name(name)
    assert img.num_points3D == len(obs_rows[keep]) + len(rows)
    if free_nb is not None:  # the new point's track error: its mean reprojection error / focal
        r = [np.linalg.norm(PINHOLE.project(p.transform(torch.tensor(new_xyz))).numpy()[0] - kp)
             for p, kp in ((scene.query_poses[name], feats["keypoints"][k_new]),
                           (map_.pose(nb), map_.features[nb]["keypoints"][free_nb]))]
        assert np.isclose(map_.point_errors[rows[0]], np.mean(r) / float(PINHOLE.f.double().mean()))
    # save / load: the same map
    m2 = Map.load(map_.save(tmp_path / "m"))
    assert m2.image_names == map_.image_names and np.allclose(m2.points3D, map_.points3D)
    np.testing.assert_allclose(m2.point_errors, map_.point_errors, rtol=1e-9, atol=1e-15)
    assert all(np.array_equal(m2.kp_to_point[n], map_.kp_to_point[n]) for n in m2.image_names)
    assert m2.images_observing(obs_rows[keep])[0] == map_.images_observing(obs_rows[keep])[0]
    with pytest.raises(ValueError, match="already a map image"):
        map_.add_keyframe(name, PINHOLE, scene.query_poses[name], feats, [], [])


def test_localizer_public_api_sees_the_grown_map(exact):
    scene, map_ = exact
    loc = Localizer(map_, {"retrieval": {"num_keyframes": 4}})
    name = "query/1.png"
    feats, obs_kp, obs_rows, _ = _new_keyframe(scene, map_, name)
    names = list(map_.image_names)
    corr = loc.match_2d3d(feats, names)
    assert len(corr) > 50
    # the 2D-3D pairs are right: keypoint k of the query sees the point of its map row
    right = {int(k): int(r) for k, r in zip(obs_kp, obs_rows)}
    assert np.mean([right.get(int(q)) == int(p) for q, p in zip(corr.query_idx, corr.point_idx)]) > 0.95
    # subsets restrict the match to those map keypoints
    sub = [np.flatnonzero(map_.kp_to_point[n] >= 0)[:10] for n in names]
    c_sub = loc.match_2d3d(feats, names, sub)
    allowed = set(np.concatenate([map_.kp_to_point[n][s] for n, s in zip(names, sub)]).tolist())
    assert len(c_sub) > 0 and set(c_sub.point_idx.tolist()) <= allowed
    # the cache follows an in-place change of an image's points
    ref0, keep0 = loc.reference_features(names[0])
    map_.add_keyframe(name, PINHOLE, scene.query_poses[name], feats, obs_kp, obs_rows)
    ref1, _ = loc.reference_features(names[0])
    assert ref1 is ref0  # names[0] did not change: same cached tensors
    assert loc.localize_features(feats, PINHOLE).success
    other = Map.from_reconstruction(map_.reconstruction, map_.features, map_.conf, global_model=map_.global_model)
    loc.set_map(other)
    assert loc.map is other and loc.reference_features(names[0])[0] is not ref0


# ---------------------------------------------------------------------------- mapping thread
class _GateMatcher:
    """A matcher that blocks until released (to hold the mapping thread mid-insertion)."""

    def __init__(self, inner):
        self.inner = inner
        self.gate = threading.Event()
        self.entered = threading.Event()

    def match_many(self, q, refs):
        self.entered.set()
        assert self.gate.wait(timeout=60), "test gate never released"
        return self.inner.match_many(q, refs)


def _jobs(scene, map_):
    from hloc_bpnp.sequence import KeyframeJob

    jobs = []
    for name in scene.query_poses:
        feats, obs_kp, obs_rows, _ = _new_keyframe(scene, map_, name)
        # half of the tracked points: the other keypoints are matched to neighbours on the worker
        jobs.append(KeyframeJob(name, PINHOLE, scene.query_poses[name], feats, obs_kp[::2], obs_rows[::2]))
    return jobs


def test_mapping_thread_never_blocks_the_submitter_and_drains(exact):
    from hloc_bpnp.matching import build_matcher
    from hloc_bpnp.sequence import MappingThread
    from hloc_bpnp.sequence.growth import default_conf

    scene, map_ = exact
    gate = _GateMatcher(build_matcher("mnn"))
    mt = MappingThread(map_, gate, {**default_conf, "max_queue": 2})
    jobs = _jobs(scene, map_)
    n_images = len(map_.image_names)
    mt.submit(jobs[0])
    assert gate.entered.wait(timeout=60)  # the worker is inside the first insertion, held there
    mt.submit(jobs[1])  # returns although the worker is blocked: the tracker never waits
    assert mt.pending == 2 and mt.busy()
    assert len(map_.image_names) == n_images  # nothing inserted yet
    gate.gate.set()
    mt.drain()
    assert mt.pending == 0 and not mt.busy()
    assert mt.inserted == [j.name for j in jobs]
    assert all(j.name in map_.image_names for j in jobs)
    assert sum(i["num_extra_observations"] for i in mt.infos) > 0  # the matching did add observations
    mt.close()
    assert not mt._thread.is_alive()
    with pytest.raises(RuntimeError, match="closed"):
        mt.submit(jobs[0])


def test_mapping_thread_reports_a_failed_insertion(exact):
    from hloc_bpnp.matching import build_matcher
    from hloc_bpnp.sequence import MappingThread
    from hloc_bpnp.sequence.growth import default_conf

    scene, map_ = exact
    job = _jobs(scene, map_)[0]
    job.name = map_.image_names[0]  # already a map image: the insertion raises on the worker
    mt = MappingThread(map_, build_matcher("mnn"), default_conf)
    mt.submit(job)
    with pytest.raises(RuntimeError, match="mapping thread"):
        mt.drain()
    mt.close()


def test_inline_and_threaded_mapping_build_the_same_map(exact):
    from hloc_bpnp.matching import build_matcher
    from hloc_bpnp.sequence import MappingThread
    from hloc_bpnp.sequence.growth import default_conf

    scene, _ = exact
    maps = []
    for threaded in (False, True):
        m = scene.build_map()
        with MappingThread(m, build_matcher("mnn"), {**default_conf, "threaded": threaded}) as mt:
            for j in _jobs(scene, m):
                mt.submit(j)
        maps.append(m)
    a, b = maps
    assert a.image_names == b.image_names and np.allclose(a.points3D, b.points3D)
    assert all(np.array_equal(a.kp_to_point[n], b.kp_to_point[n]) for n in a.image_names)


def test_local_map_cache_follows_the_map(exact):
    scene, map_ = exact
    lm = LocalMapBuilder()
    names = map_.image_names[:2]
    a = lm.build(map_, names)
    rows = np.concatenate([map_.kp_to_point[n][map_.kp_to_point[n] >= 0] for n in names])
    assert len(a) == len(np.unique(rows)) and len(np.unique(a.rows)) == len(a)  # one entry per point
    assert np.allclose(a.xyz, map_.points3D[a.rows])
    nb = names[0]
    free = np.flatnonzero(map_.kp_to_point[nb] < 0)
    feats, obs_kp, obs_rows, _ = _new_keyframe(scene, map_)
    k_new = int(obs_kp[0])
    keep = obs_kp != k_new
    if len(free):
        map_.add_keyframe("query/0.png", PINHOLE, scene.query_poses["query/0.png"], feats, obs_kp[keep],
                          obs_rows[keep], np.array([[0.0, 0.0, 0.0]]), [[("query/0.png", k_new), (nb, int(free[0]))]])
        b = lm.build(map_, names)
        assert len(b) == len(a) + 1


def test_transfer_keypoints_keeps_the_nearest_one_to_one():
    from hloc_bpnp.sequence.mapping_thread import transfer_keypoints

    pts = np.array([[10.0, 10.0], [10.5, 10.0], [50.0, 50.0], [90.0, 90.0]])
    rows = np.array([7, 8, 9, 10])
    new = np.array([[10.2, 10.0], [50.0, 51.5], [200.0, 200.0]])
    kp, r = transfer_keypoints(pts, rows, new, max_px=2.0)
    # new keypoint 0 is nearest to both first points: the nearer (0.2 px vs 0.3 px) keeps it; 90,90 is too far
    assert dict(zip(kp.tolist(), r.tolist())) == {0: 7, 1: 9}


def test_keyframes_tracked_with_lighter_features_join_the_map_at_its_resolution(tmp_path):
    """A SIFT map at 320 px, frames tracked at 160 px: keyframes are re-extracted at 320 px."""
    from hloc_bpnp.mapping import build_map_from_poses
    from hloc_bpnp.sequence import SequenceLocalizer
    from hloc_bpnp.sequence.synthetic import generate_sequence
    from test_sequence import SMALL_SEQ

    seq = generate_sequence(SMALL_SEQ, seed=0)
    map_ = build_map_from_poses(seq.scene.map_scene, seq.scene.images, "default", progress=False)
    sl = SequenceLocalizer(Localizer(map_, "default"), {"tracking": {"features": {"resize_max": 240}},
                                                        "growth": {"threaded": False}})
    assert sl.track_extractor is not sl.localizer.extractor
    frames = seq.frames()[:5]
    out = sl.run(frames, seq.camera, progress=False)
    sl.close()
    assert all(f.status != "lost" for f in out) and sl.keyframes
    light = sl.track_extractor.extract(np.asarray(frames[1][1]))
    for kf in sl.keyframes:
        info = next(i for i in sl.mapper.infos if i["name"] == kf)
        assert info["reextracted"]
        full = sl.localizer.extractor.extract(np.asarray(dict((n, im) for n, im, _ in frames)[kf]))
        assert len(map_.features[kf]["keypoints"]) == len(full["keypoints"]) != len(light["keypoints"])
        assert (map_.kp_to_point[kf] >= 0).sum() > 30  # the tracking inliers were carried over


def _assert_localizes_as_well(res, rel=1.25, rot_deg=0.01, pos_cm=0.1):
    """The map grown with tracking features (``res["tracking"]``) localizes the held-out
    queries as well as the one grown at the map's resolution (``res["map"]``): every frame
    tracked, every query the latter localizes localized, medians within ``rel`` x + tolerance."""
    full, mixed = res["map"], res["tracking"]
    for r in (full, mixed):
        assert r["keyframes"] and r["sequence"]["n_localized"] == r["sequence"]["n_frames"]
    assert mixed["queries"]["n_localized"] >= full["queries"]["n_localized"] > 0
    for key, tol in (("median_rot_deg", rot_deg), ("median_pos_cm", pos_cm)):
        assert mixed["queries"][key] <= rel * full["queries"][key] + tol, (key, full["queries"], mixed["queries"])


def test_keyframes_with_their_tracking_features_localize_as_well(tmp_path):
    """Mixed resolutions (issue 17): a 480x360 SIFT map of the first 120 deg of an orbit,
    frames tracked at 240 px on to 170 deg (every other one), keyframes joining the map either
    re-extracted at 480 px (``growth.reextract``) or with their 240-px tracking features; the
    held-out frames beyond the map's last view (125-165 deg: localized on the keyframes' points)
    are then localized on their own against each grown map. Keypoints of the tracking features
    stored at the wrong scale (x0.5) lose 5 of 14 frames and 4 of these 5 queries."""
    from hloc_bpnp.config import load_config, merge
    from hloc_bpnp.mapping import build_map_from_poses
    from hloc_bpnp.sequence.benchmark import compare_keyframe_features
    from hloc_bpnp.sequence.synthetic import generate_sequence

    scene = merge(load_config("synthetic", "small"), {"camera": {"width": 480, "height": 360}})
    seq = generate_sequence({"preset": scene, "map_arc_deg": [0, 120], "num_map": 5, "path_arc_deg": [40, 170],
                             "step_deg": 5, "cut_arc_deg": [50, 60]}, seed=0)
    map_dir = build_map_from_poses(seq.scene.map_scene, seq.scene.images, "default", progress=False).save(
        tmp_path / "map")
    frames = seq.frames()[: seq.cut_index]
    queries = [f for i, f in enumerate(frames) if i % 2 and seq.path_deg[i] > 120]
    conf = merge(load_config("sequence", "default"), {"tracking": {"features": {"resize_max": 240}}})
    res = compare_keyframe_features(map_dir, frames[::2], {n: seq.camera for n in seq.names}, queries, seq.poses,
                                    "default", conf)
    assert len(queries) == 5
    _assert_localizes_as_well(res)
    # the keyframes of the mixed map hold the 240-px tracking features: fewer keypoints
    assert res["tracking"]["new_points"] < res["map"]["new_points"]


@pytest.mark.slow
@pytest.mark.data
def test_keyframes_with_their_tracking_features_localize_as_well_on_fountain(shared_data, tmp_path):
    """The same on real images (benchmarks/bench_keyframe_features.py, ~2 min): fountain-P11's
    first 4 images make the map, images 4, 6, 8, 10 are tracked at 800 px (the default preset)
    and grow it, images 5, 7, 9 are localized against the map grown with 1600-px re-extracted
    keyframes and with the 800-px tracking features."""
    from hloc_bpnp.config import load_config
    from hloc_bpnp.io.datasets import read_strecha
    from hloc_bpnp.mapping import build_map_from_poses
    from hloc_bpnp.sequence.benchmark import compare_keyframe_features

    scene = read_strecha(shared_data / "strecha_fountain_P11")
    names = scene.names
    map_dir = build_map_from_poses(scene.subset(names[:4]), scene.image_dir, "default", progress=False).save(
        tmp_path / "map")
    frames = [(n, scene.image_dir / n, float(i)) for i, n in enumerate(names) if i >= 4 and i % 2 == 0]
    queries = [(n, scene.image_dir / n, float(i)) for i, n in enumerate(names) if i >= 4 and i % 2 == 1]
    res = compare_keyframe_features(map_dir, frames, {n: scene[n].camera for n in names}, queries,
                                    {n: scene[n].pose for n in names}, "default", load_config("sequence", "default"))
    _assert_localizes_as_well(res, rel=1.5)


# ---------------------------------------------------------------------------- tracker fallback
def _fallback_tracker(X, conf=None, loc_preset=None):
    """A SequenceLocalizer holding only what ``_track_by_keyframes`` reads: one keyframe
    ``kf`` whose keypoint i observes points3D row i, matched one-to-one to the frame; the
    localizer's conf is the default or ``loc_preset`` merged into it."""
    from types import SimpleNamespace

    from hloc_bpnp.config import merge
    from hloc_bpnp.localization.correspondences import Correspondences
    from hloc_bpnp.localization.localizer import default_conf as loc_conf
    from hloc_bpnp.sequence.tracker import SequenceLocalizer, default_conf

    n = len(X)
    sl = object.__new__(SequenceLocalizer)
    sl.conf = merge(default_conf, {"tracking": {"guided_margin_px": 1e4, **(conf or {})}})
    sl._pending_cov = None
    map_ = SimpleNamespace(lock=threading.Lock(), kp_to_point={"kf": np.arange(n)}, points3D=X)
    from hloc_bpnp.config import load_config

    lconf = merge(loc_conf, load_config("localization", loc_preset)) if loc_preset else loc_conf
    sl.localizer = SimpleNamespace(
        conf=lconf, map=map_,
        match_2d3d=lambda feats, names, subsets: Correspondences(
            np.arange(n), np.arange(n), np.ones(n, np.float32)))
    return sl


@pytest.mark.parametrize("ratio,loc_preset", [(0.5, None), (0.2, None), (0.5, "fast_learned")])
def test_fallback_checks_a_gated_pose_explaining_few_pairs_with_ransac(ratio, loc_preset):
    """200 pairs fit the true pose, 80 fit the (wrong) prediction: the gated BPnP from the
    prediction converges there with 80 of 280 inliers; under tracking.min_inlier_ratio_projection
    (0.5) LO-RANSAC finds the true pose with more inliers and it wins; with the check at 0.2 the
    gated pose is kept (the check is what moves the pose). With ``fast_learned`` (the
    ``realtime`` sequence preset's localization: ``use_weights: auto``) the fallback's LO-RANSAC
    must run too: it once passed the unresolved ``auto`` to a BPnP refinement that refused it
    and stopped the whole sequence run."""
    rng = np.random.default_rng(0)
    f, cx, cy = 500.0, 320.0, 240.0
    truth = Pose(torch.eye(3, dtype=torch.float64), torch.zeros(3, dtype=torch.float64))
    pred = Pose(torch.eye(3, dtype=torch.float64), torch.tensor([1.5, 0.0, 0.0], dtype=torch.float64))

    def lift(uv, z, t):  # world points seen at pixels uv, depth z, by the camera R = I, t
        return np.stack([(uv[:, 0] - cx) * z / f, (uv[:, 1] - cy) * z / f, z], 1) - t

    uv_a = rng.uniform([40, 40], [600, 440], (200, 2))
    uv_b = rng.uniform([40, 40], [600, 440], (80, 2))
    X = np.concatenate([lift(uv_a, rng.uniform(4, 8, 200), np.zeros(3)),
                        lift(uv_b, rng.uniform(4, 8, 80), np.array([1.5, 0.0, 0.0]))])
    kpts = np.concatenate([uv_a, uv_b])
    sl = _fallback_tracker(X, {"min_inlier_ratio_projection": ratio}, loc_preset)
    info = {}
    out, reason = sl._track_by_keyframes(kpts, {}, PINHOLE, pred, None, ["kf"], info)
    assert out is not None, reason
    pose, _, _, inl = out
    assert info["num_gated"] == 80
    if ratio == 0.5:
        assert info["ransac"] and info["ransac_over_gated"]
        assert int(inl.sum()) == 200 and inl[:200].all()
        assert float(torch.linalg.norm(pose.t - truth.t)) < 1e-3
    else:
        assert not info["ransac"]
        assert int(inl.sum()) == 80 and inl[200:].all()
        assert float(torch.linalg.norm(pose.t - pred.t)) < 1e-3


# ---------------------------------------------------------------------------- final search rounds
def _projection_tracker(X, D, rounds):
    """A SequenceLocalizer holding only what ``_track_by_projection`` reads: a local map of
    the points X (rows 0..n-1, descriptors D), all prebuilt."""
    from types import SimpleNamespace

    from hloc_bpnp.config import merge
    from hloc_bpnp.localization.localizer import default_conf as loc_conf
    from hloc_bpnp.sequence.tracker import SequenceLocalizer, default_conf

    n = len(X)
    sl = object.__new__(SequenceLocalizer)
    sl.conf = merge(default_conf, {"tracking": {"search_radius_final": 0.025, "search_final_rounds": rounds}})
    sl._pending_cov = None
    sl._n_prebuilt_points = n
    sl.localizer = SimpleNamespace(conf=loc_conf, map=SimpleNamespace(lock=threading.Lock(), points3D=X))
    sl._local = SimpleNamespace(build=lambda map_, names: LocalMap(np.arange(n), X, D, list(names)))
    return sl


def test_final_search_repeats_while_it_finds_more():
    """Points at 1.5-40 m, the prediction 0.6 m off sideways: the first search (16 px) finds
    only the far points (parallax under the radius) and the pose refined on them, held by the
    motion prior, is still off; one search at it finds more of the view, and repeating the
    search at each refined pose (tracking.search_final_rounds) finds all of it."""
    from hloc_bpnp.localization.results import LocalizationResult

    rng = np.random.default_rng(0)
    n = 1500
    f, cx, cy = 500.0, 320.0, 240.0
    uv = rng.uniform([10, 10], [630, 470], (n, 2))
    z = np.exp(rng.uniform(np.log(1.5), np.log(40.0), n))
    X = np.stack([(uv[:, 0] - cx) * z / f, (uv[:, 1] - cy) * z / f, z], 1)  # true pose: identity
    D = rng.normal(size=(n, 64)).astype(np.float32)
    D /= np.linalg.norm(D, axis=1, keepdims=True)
    kpts = uv + rng.normal(0, 0.5, uv.shape)
    pred = Pose(torch.eye(3, dtype=torch.float64), torch.tensor([0.6, 0.0, 0.0], dtype=torch.float64))
    prior = (pred, np.diag([1e4] * 3 + [1 / 0.03 ** 2] * 3))
    out = {}
    for rounds in (1, 3, 5):
        sl = _projection_tracker(X, D, rounds)
        info = {}
        res = LocalizationResult(name="f", camera=PINHOLE)
        found, reason = sl._track_by_projection({"descriptors": D}, kpts, PINHOLE, pred, prior, ["kf"], res, info)
        assert found is not None, reason
        pose, q, rows, inl = found
        out[rounds] = (float(torch.linalg.norm(pose.t)), int(inl.sum()), info)
    assert out[1][2]["num_projection_matches"] < 0.5 * n  # the first search sees part of the view
    assert out[1][2]["final_searches"] == 1 and out[1][1] < 0.8 * n and out[1][0] > 0.01
    assert out[3][1] == n and out[3][0] < 1e-3 and out[3][2]["final_searches"] > 1
    # the rounds stop once a search adds under search_final_min_gain of the inliers
    assert out[5][2]["final_searches"] < 5 and out[5][1] == n


# ---------------------------------------------------------------------------- keyframe re-extraction
def test_same_extraction_compares_the_size_each_extractor_sees():
    from hloc_bpnp.features import build_extractor
    from hloc_bpnp.sequence.mapping_thread import same_extraction

    full, track = build_extractor("sift", resize_max=1600), build_extractor("sift", resize_max=800)
    assert same_extraction(track, full, (640, 480))       # neither resizes a VGA frame
    assert not same_extraction(track, full, (3072, 2048))  # 800 vs 1600 px
    assert not same_extraction(build_extractor("sift", resize_max=800, max_keypoints=1024), full, (640, 480))


def test_keyframes_already_at_the_map_resolution_are_not_extracted_again():
    """A 1600-px-capped SIFT map, frames tracked under a 400-px cap: the 320-px frames are the
    same for both extractors, so keyframes keep the tracking features (no second extraction)."""
    from hloc_bpnp.mapping import build_map_from_poses
    from hloc_bpnp.sequence import SequenceLocalizer
    from hloc_bpnp.sequence.synthetic import generate_sequence
    from test_sequence import SMALL_SEQ

    seq = generate_sequence(SMALL_SEQ, seed=0)
    map_ = build_map_from_poses(seq.scene.map_scene, seq.scene.images, "default", progress=False)
    sl = SequenceLocalizer(Localizer(map_, "default"), {"tracking": {"features": {"resize_max": 400}},
                                                        "growth": {"threaded": False}})
    assert sl.track_extractor is not sl.localizer.extractor and sl._reextract
    out = sl.run(seq.frames()[:5], seq.camera, progress=False)
    sl.close()
    kfs = [f for f in out if f.keyframe]
    assert kfs and all(f.info["reextract"] is False for f in kfs)
    assert all(not i["reextracted"] for i in sl.mapper.infos)
    for f in kfs:
        full = sl.localizer.extractor.extract(np.asarray(seq.images[f.name]))
        assert np.allclose(map_.features[f.name]["keypoints"], full["keypoints"].numpy())


# ---------------------------------------------------------------------------- mapping threads
def test_mapping_thread_uses_the_waiting_submitters_threads(exact):
    """A keyframe nobody waits for is inserted with torch_threads, one started while a drain()
    waits with torch_threads_waited; an urgent one on the submitter's thread."""
    from hloc_bpnp.matching import build_matcher
    from hloc_bpnp.sequence import MappingThread
    from hloc_bpnp.sequence.growth import default_conf

    scene, map_ = exact
    jobs = _jobs(scene, map_)
    gate = _GateMatcher(build_matcher("mnn"))
    mt = MappingThread(map_, gate, {**default_conf, "torch_threads": 1, "torch_threads_waited": 2})
    mt.submit(jobs[0])  # not waited for: held inside its matching by the gate
    assert gate.entered.wait(timeout=60)
    mt.submit(jobs[1])  # starts while the drain below waits
    drainer = threading.Thread(target=mt.drain)
    drainer.start()
    for _ in range(200):  # until the drain is blocked
        if mt._waiting:
            break
        threading.Event().wait(0.01)
    assert mt._waiting == 1
    gate.gate.set()
    drainer.join(timeout=60)
    assert not drainer.is_alive() and mt.pending == 0
    threads = {i["name"]: i["torch_threads"] for i in mt.infos}
    assert threads[jobs[0].name] == [1, 1] and threads[jobs[1].name] == [2, 2]
    mt.close()
    # an urgent job (the submitter waits for it) is inserted on the submitter's thread, after
    # the queued ones
    m2 = scene.build_map()
    j0, j1 = _jobs(scene, m2)
    j1.urgent = True
    gate2 = _GateMatcher(build_matcher("mnn"))
    with MappingThread(m2, gate2, {**default_conf, "torch_threads": 1, "torch_threads_waited": 2}) as mt2:
        mt2.submit(j0)
        assert gate2.entered.wait(timeout=60)
        threading.Timer(0.2, gate2.gate.set).start()
        mt2.submit(j1)  # returns once both are in
        assert mt2.pending == 0 and mt2.inserted == [j0.name, j1.name]
        assert mt2.infos[0]["thread"] == "hloc_bpnp-mapping"
        assert mt2.infos[1]["thread"] == threading.current_thread().name
