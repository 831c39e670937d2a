"""Refiner training on cached data (training/refiner_data.py, refiner_train.py) and the
``limited`` protocol (protocols/limited.py), on synthetic geometry."""
import numpy as np
import pytest
import torch

from hloc_bpnp.geometry.camera import Camera
from hloc_bpnp.geometry.pose import Pose
from hloc_bpnp.training.refiner_data import PoseProblem, RefinerScene, essential, sampson_normalized
from hloc_bpnp.training.refiner_train import median_sampson, pose_losses, train_refiner

K = torch.tensor([[500.0, 0, 320], [0, 500.0, 240], [0, 0, 1]], dtype=torch.float64)
CAM = Camera.from_K(K, 640, 480)


def _poses(n):
    out = []
    for i in range(n):
        aa = torch.tensor([0.02 * i, 0.15 * (i - n / 2), 0.01], dtype=torch.float64)
        out.append(Pose.from_aa(torch.cat([aa, torch.tensor([0.4 * (i - n / 2), 0.05 * i, 0.0], dtype=torch.float64)])))
    return out


def synthetic_scene(bias=(0.6, -0.4), n_img=4, n_pts=300, seed=0, S=9):
    """A RefinerScene whose cached keypoints are the exact projections + ``+-bias`` (network px;
    scale 2 original px per network px; the sign per keypoint is visible in its patch: a bright
    or dark centre pixel); every point seen in every image."""
    g = torch.Generator().manual_seed(seed)
    X = torch.rand(n_pts, 3, generator=g, dtype=torch.float64) * torch.tensor([4.0, 3.0, 2.0], dtype=torch.float64) \
        + torch.tensor([-2.0, -1.5, 5.0], dtype=torch.float64)
    poses = _poses(n_img)
    scale = 2.0
    base, norm0, image = [], [], []
    sign = torch.randint(0, 2, (n_img, n_pts), generator=g).double() * 2 - 1
    for i, p in enumerate(poses):
        x = CAM.project(p.transform(X)) + scale * sign[i, :, None] * torch.tensor(bias, dtype=torch.float64)
        base.append(x)
        norm0.append(CAM.unproject(x))
        image.append(torch.full((n_pts,), i))
    base, norm0, image = torch.cat(base), torch.cat(norm0), torch.cat(image)
    N = base.shape[0]
    jac = torch.diag(torch.tensor([1 / 500.0, 1 / 500.0], dtype=torch.float64)).expand(N, 2, 2).clone()
    patches = torch.rand(N, 2, S, S, generator=g)
    patches[:, 0, S // 2, S // 2] = 0.5 + 2.0 * sign.reshape(-1).float()
    matches, mp, Es, f, pairs = [], [], [], [], []
    for a in range(n_img):
        for b in range(a + 1, n_img):
            idx = torch.arange(n_pts)
            matches.append(torch.stack([a * n_pts + idx, b * n_pts + idx], -1))
            mp.append(torch.full((n_pts,), len(pairs)))
            Es.append(essential(poses[a], poses[b]))
            f.append(torch.tensor(500.0, dtype=torch.float64))
            pairs.append((f"{a}.png", f"{b}.png"))
    probs = [PoseProblem(f"{i}.png", torch.arange(n_pts) + i * n_pts, X.clone(), K.clone(), poses[i].aa_t())
             for i in range(n_img)]
    return RefinerScene("synthetic", [f"{i}.png" for i in range(n_img)], patches, base,
                        torch.full((N, 2), scale, dtype=torch.float64), image, norm0, jac, torch.cat(matches),
                        torch.cat(mp), torch.stack(Es), torch.stack(f), pairs, probs)


def mean_offsets_by_sign(refiner, patches, n=300):
    """Mean learned offset (2,) of the first ``n`` keypoints of each kind in synthetic patches
    (the sign of the bias is the bright or dark centre pixel): ``{"+": ..., "-": ...}``."""
    pos = patches[:, 0, patches.shape[-1] // 2, patches.shape[-1] // 2] > 0.5
    with torch.no_grad():
        return {k: refiner(patches[m][:n])["offset"].mean(0) for k, m in (("+", pos), ("-", ~pos))}


def test_sampson_matches_the_mapping_module():
    from hloc_bpnp.mapping.verification import sampson_errors

    p0, p1 = _poses(2)
    g = torch.Generator().manual_seed(1)
    X = torch.rand(50, 3, generator=g, dtype=torch.float64) + torch.tensor([0, 0, 5.0], dtype=torch.float64)
    x0 = CAM.project(p0.transform(X)) + torch.randn(50, 2, generator=g, dtype=torch.float64)
    x1 = CAM.project(p1.transform(X)) + torch.randn(50, 2, generator=g, dtype=torch.float64)
    ours = sampson_normalized(essential(p0, p1), CAM.unproject(x0), CAM.unproject(x1)) * 500.0
    assert torch.allclose(ours, sampson_errors(CAM, CAM, p0, p1, x0, x1).double(), rtol=1e-5, atol=1e-6)


def test_training_moves_and_removes_a_keypoint_bias():
    tr, va = synthetic_scene(seed=0), synthetic_scene(seed=1)
    before = median_sampson(None, [va])
    assert before > 0.3  # the bias is visible to the metric
    out = train_refiner([tr], [va], {"steps": 150, "eval_every": 50, "lr": 0.01, "batch_matches": 512,
                                     "sampson": {"uncertainty": False}}, progress=False)
    after = median_sampson(out["refiner"], [va])
    assert after < 0.3 * before
    # the cameras translate along x: epipolar lines are near horizontal, so Sampson sees the
    # y offsets, up to a common shift: the learned y offsets of the two kinds differ by 2 * 0.4
    oy = {k: float(o[1]) for k, o in mean_offsets_by_sign(out["refiner"], va.patches).items()}
    assert oy["+"] - oy["-"] == pytest.approx(0.8, abs=0.15)
    assert out["history"][0]["val_sampson_px"] == pytest.approx(before)


def test_training_from_a_given_refiner_starts_and_scores_from_it():
    from hloc_bpnp.features.refiner import KeypointRefiner

    tr, va = synthetic_scene(seed=0), synthetic_scene(seed=1)
    conf = {"steps": 100, "eval_every": 50, "lr": 0.01, "batch_matches": 512, "sampson": {"uncertainty": False}}
    first = train_refiner([tr], [va], conf, progress=False)["refiner"]
    trained = median_sampson(first, [va])
    assert trained < 0.5 * median_sampson(None, [va])
    state = {k: v.clone() for k, v in first.state_dict().items()}
    # no learning: the start is the given refiner, and it is kept (nothing beats it)
    out = train_refiner([tr], [va], {**conf, "steps": 20, "eval_every": 10, "lr": 0.0}, progress=False, init=first)
    assert out["history"][0]["val_sampson_px"] == pytest.approx(trained)
    assert out["best_step"] == 0
    assert median_sampson(out["refiner"], [va]) == pytest.approx(trained)
    # the given refiner itself is not trained in place
    more = train_refiner([tr], [va], {**conf, "steps": 50}, progress=False, init=first)
    assert all(torch.equal(v, first.state_dict()[k]) for k, v in state.items())
    assert more["refiner"] is not first
    with pytest.raises(ValueError, match="architecture"):
        train_refiner([tr], [va], {**conf, "steps": 1}, progress=False, init=KeypointRefiner({"channels": 8}))


def test_bpnp_posterior_nll_reaches_offsets_and_weights():
    sc = synthetic_scene(bias=(0.0, 0.0))
    from hloc_bpnp.features.refiner import KeypointRefiner

    ref = KeypointRefiner()
    with torch.no_grad():  # non-zero head so that every parameter gets a gradient path
        ref.head[-1].weight.normal_(0, 1e-3)
        ref.head[-1].bias.copy_(torch.tensor([0.3, 0.0, 0.5]))
    out = pose_losses(ref, sc, sc.poses[:2], 60, torch.Generator().manual_seed(0))
    assert torch.isfinite(out["nll"]) and torch.isfinite(out["pose"])
    out["nll"].backward()
    g = ref.head[-1].bias.grad
    assert g is not None and bool((g[:2].abs() > 0).any()) and abs(float(g[2])) > 0
    # biased keypoints -> a wrong pose -> larger pose error than unbiased ones
    ref0 = KeypointRefiner()
    e0 = pose_losses(ref0, sc, sc.poses[:2], 60, torch.Generator().manual_seed(0))["pose"]
    assert float(out["pose"]) > float(e0)


def test_nll_training_runs_and_rejects_missing_pose_problems():
    sc = synthetic_scene()
    out = train_refiner([sc], [], {"steps": 4, "eval_every": 2, "losses": {"sampson": True, "nll": True}},
                        progress=False)
    assert "nll" in out["history"][1]
    sc.poses = []
    with pytest.raises(ValueError, match="pose problems"):
        train_refiner([sc], [], {"steps": 1, "losses": {"nll": True}}, progress=False)


def test_subset_images_keeps_only_their_matches():
    sc = synthetic_scene()
    sub = sc.subset_images(["0.png", "1.png"])
    assert sub.matches.shape[0] == 300 and (sc.image[sub.matches] <= 1).all()
    assert [p.name for p in sub.poses] == ["0.png", "1.png"]


def test_limited_protocol_sees_keypoint_noise():
    from types import SimpleNamespace

    from hloc_bpnp.protocols.limited import limited_pose_errors

    g = torch.Generator().manual_seed(0)
    X = torch.rand(200, 3, generator=g, dtype=torch.float64) * 2 + torch.tensor([-1, -1, 5.0], dtype=torch.float64)
    pose = _poses(1)[0]
    x = CAM.project(pose.transform(X))
    fmap = SimpleNamespace(point3D_ids=np.arange(10, 210), points3D=X.numpy())

    def res(noise):
        xx = x + noise * torch.randn(x.shape, generator=g, dtype=torch.float64)
        return SimpleNamespace(success=True, inlier_mask=np.ones(200, bool), points2D=xx.numpy(),
                               point3D_ids=np.arange(10, 210), pose=pose, camera=CAM, name="q")

    e0 = limited_pose_errors(res(0.0), fmap, pose)
    e1 = limited_pose_errors(res(0.5), fmap, pose)
    e2 = limited_pose_errors(res(2.0), fmap, pose)
    assert e0["pos_cm"].shape == (200,) and np.median(e0["pos_cm"]) < 1e-4
    assert np.median(e1["pos_cm"]) < np.median(e2["pos_cm"]) and np.median(e1["rot_deg"]) < np.median(e2["rot_deg"])
    few = res(0.0)
    few.inlier_mask = np.arange(200) < 30
    assert limited_pose_errors(few, fmap, pose) is None

    # with the localizer's weights (use_weights), precise correspondences dominate
    r = res(0.0)
    sig = np.where(np.arange(200) % 2 == 0, 0.05, 3.0)
    r.points2D = (x.numpy() + np.random.default_rng(1).normal(size=(200, 2)) * sig[:, None])
    r.weights = 1.0 / sig ** 2
    ew = limited_pose_errors(r, fmap, pose, use_weights=True)
    eu = limited_pose_errors(r, fmap, pose)
    assert np.median(ew["pos_cm"]) < 0.5 * np.median(eu["pos_cm"])
    r.weights = None
    with pytest.raises(ValueError, match="no correspondence weights"):
        limited_pose_errors(r, fmap, pose, use_weights=True)


def test_refiner_data_of_some_images_only_refuses_unknown_names(tmp_path):
    from hloc_bpnp.io.scene import Scene
    from hloc_bpnp.training.refiner_data import build_refiner_scene

    with pytest.raises(ValueError, match=r"images \['nope.png'\] are not in the scene"):
        build_refiner_scene(Scene([], tmp_path), "s", "xfeat", 9, images=["nope.png"])


def test_reprojection_loss_learns_both_offset_components():
    """Sampson sees only the offset across the epipolar lines (y here, up to a shift); the
    reprojection term at the known pose pins both components absolutely."""
    from hloc_bpnp.training.refiner_train import ReprojectionTargets, median_reprojection

    tr, va = synthetic_scene(seed=0), synthetic_scene(seed=1)
    tg = ReprojectionTargets.of(va)
    assert len(tg) == 4 * 300
    before = median_reprojection(None, [va])
    assert before == pytest.approx(2.0 * (0.6 ** 2 + 0.4 ** 2) ** 0.5, rel=1e-6)  # the bias, original px
    out = train_refiner([tr], [va], {"steps": 150, "eval_every": 50, "lr": 0.01, "batch_matches": 512,
                                     "losses": {"sampson": False, "reproj": True}, "select": "reproj",
                                     "reproj": {"batch": 512}}, progress=False)
    assert out["history"][0]["val_reproj_px"] == pytest.approx(before)
    assert median_reprojection(out["refiner"], [va]) < 0.2 * before
    o = mean_offsets_by_sign(out["refiner"], va.patches)
    assert o["+"].tolist() == pytest.approx([-0.6, 0.4], abs=0.12)
    assert o["-"].tolist() == pytest.approx([0.6, -0.4], abs=0.12)


def test_reprojection_selection_needs_correspondences():
    sc = synthetic_scene()
    sc.poses = []
    with pytest.raises(ValueError, match="pose problems"):
        train_refiner([sc], [], {"steps": 1, "losses": {"reproj": True}}, progress=False)
    with pytest.raises(ValueError, match="select"):
        train_refiner([synthetic_scene()], [], {"steps": 1, "select": "nope"}, progress=False)
    with pytest.raises(ValueError, match="2D-3D"):
        train_refiner([synthetic_scene()], [sc], {"steps": 1, "select": "both"}, progress=False)


def test_data_scales_and_their_validation(tmp_path):
    from hloc_bpnp.training.refiner_data import cached_refiner_scenes, data_scales

    d = {"resize_max": 640, "max_error": 3.0}
    assert data_scales(d) == [640] and d == {"max_error": 3.0}
    assert data_scales({"resize_max": [640, "preset"]}) == [640, "preset"]
    assert data_scales({}) == ["preset"]
    with pytest.raises(ValueError, match="no scale"):
        cached_refiner_scenes(tmp_path, "xfeat", 9, [])
    with pytest.raises(ValueError, match="neither"):
        cached_refiner_scenes(tmp_path, "xfeat", 9, [-5])


def test_refiner_data_cache_is_keyed_by_the_scene_geometry(tmp_path, monkeypatch):
    """The same folder with other poses (a pseudo ground truth) or cameras is built anew, never
    read from the cache of the first one."""
    from hloc_bpnp.io.scene import Scene, SceneImage
    from hloc_bpnp.training import refiner_data

    calls = []

    def fake_build(scene, name, features, patch_size, **kw):
        calls.append(name)
        return synthetic_scene(n_img=2, n_pts=20)

    monkeypatch.setattr(refiner_data, "build_refiner_scene", fake_build)
    p = _poses(2)

    def scene(poses, cam=CAM):
        return Scene([SceneImage(f"{i}.png", cam, poses[i]) for i in range(2)], image_dir=tmp_path)

    def cached(sc):
        return refiner_data.cached_refiner_scene(tmp_path / "s", {"model": "xfeat"}, 9, tmp_path / "c", scene=sc,
                                                 pose_problems=False)

    cached(scene(p))
    again = cached(scene(p))
    assert len(calls) == 1 and again.matches.shape[0] > 0  # the second read came from the cache
    cached(scene([p[0], Pose(p[1].R, p[1].t + 1e-4)]))
    assert len(calls) == 2
    cached(scene(p, Camera.from_K(K * torch.tensor([[1.001], [1.001], [1.0]], dtype=torch.float64), 640, 480)))
    assert len(calls) == 3
    assert len(list((tmp_path / "c").glob("s_*.pt"))) == 3
