"""Patch alignment (hloc_bpnp/localization/patch_alignment.py): Lucas-Kanade recovers sub-pixel
shifts and rejects unrelated patches; the localizer's ``patch_alignment`` stage pulls noisy
query keypoints back onto the map's observations of an exactly rendered textured plane and
lowers the pose error."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from hloc_bpnp.geometry import Camera, center_error, plane_induced_affine, rotation_error_deg
from hloc_bpnp.localization import Localizer
from hloc_bpnp.localization.patch_alignment import (align_patches, align_to_map, reference_observations,
                                                    template_affines, visible_rows)
from hloc_bpnp.mapping import Map
from hloc_bpnp.synthetic import look_at
from map_fixtures import reconstruction_from_observations

CAM = Camera("PINHOLE", 320, 240, torch.tensor([260.0, 260.0, 160.0, 120.0], dtype=torch.float64))
EXTENT = 2.0  # the texture covers [-2, 2]^2 of the plane z = 0


def _texture(seed, n=512):
    g = torch.Generator().manual_seed(seed)
    coarse = F.interpolate(torch.rand(1, 1, n // 16, n // 16, generator=g), size=(n, n), mode="bicubic",
                           align_corners=False)
    fine = F.interpolate(torch.rand(1, 1, n // 4, n // 4, generator=g), size=(n, n), mode="bicubic",
                         align_corners=False)
    return (0.6 * coarse + 0.4 * fine).clamp(0, 1).double()


def _render(texture, pose, cam=CAM):
    """The plane z = 0 with ``texture`` seen by ``cam`` at ``pose`` (cam_from_world): (H, W) uint8."""
    ys, xs = torch.meshgrid(torch.arange(cam.height, dtype=torch.float64) + 0.5,
                            torch.arange(cam.width, dtype=torch.float64) + 0.5, indexing="ij")
    fx, fy, cx, cy = cam.params.tolist()
    rays = torch.stack([(xs - cx) / fx, (ys - cy) / fy, torch.ones_like(xs)], -1) @ pose.R  # world directions
    C = -(pose.R.T @ pose.t)
    X = C + (-C[2] / rays[..., 2])[..., None] * rays
    uv = torch.stack([X[..., 0], X[..., 1]], -1) / EXTENT
    img = F.grid_sample(texture, uv[None], mode="bilinear", align_corners=False, padding_mode="border")[0, 0]
    return (img.clamp(0, 1) * 255).round().to(torch.uint8).numpy()


def test_lucas_kanade_recovers_subpixel_shifts_and_rejects_unrelated_patches():
    tex = _texture(0, 256)[0, 0].float()
    H, W = tex.shape
    shift = torch.tensor([0.37, -0.61])
    ys, xs = torch.meshgrid(torch.arange(H) + 0.5, torch.arange(W) + 0.5, indexing="ij")
    # B(x) = A(x + shift): the point of A at p lies at p - shift in B
    g = torch.stack([2 * (xs + shift[0]) / W - 1, 2 * (ys + shift[1]) / H - 1], -1)
    B = F.grid_sample(tex[None, None], g[None], mode="bicubic", align_corners=False, padding_mode="border")[0, 0]
    rng = np.random.default_rng(0)
    p = torch.from_numpy(rng.uniform(30, 226, (50, 2)))
    d, ok = align_patches(tex, B, p, p.clone())
    assert ok.all()
    err = (d + shift.double()).norm(dim=-1)
    assert float(err.median()) < 0.05 and float(err.max()) < 0.12, err  # bilinear sampling: ~0.04 px
    # starting 1.5 px off still converges (the basin of the blurred patches)
    d2, ok2 = align_patches(tex, B, p, p + torch.tensor([1.0, -1.1], dtype=torch.float64))
    assert ok2.float().mean() > 0.9
    assert float((d2[ok2] + torch.tensor([1.0, -1.1], dtype=torch.float64) + shift.double()).norm(dim=-1).median()) < 0.06
    # an unrelated image: mostly rejected (shift 0). Smooth random textures correlate a little
    # after a 3-px slide, so the default (min_ncc 0.3) lets some through; a stricter threshold
    # rejects nearly all, while the related image above passed every point
    other = _texture(7, 256)[0, 0].float()
    d3, ok3 = align_patches(tex, other, p, p.clone())
    assert ok3.float().mean() < 0.4
    assert torch.all(d3[~ok3] == 0)
    _, ok4 = align_patches(tex, other, p, p.clone(), min_ncc=0.7)
    assert ok4.float().mean() < 0.1
    with pytest.raises(ValueError, match=r"\(N, 2\)"):
        align_patches(tex, B, p, p[:3])


def _plane_scene(seed=0, n_points=700, map_noise=0.0):
    rng = np.random.default_rng(seed)
    points = np.concatenate([rng.uniform(-1.4, 1.4, (n_points, 2)), np.zeros((n_points, 1))], 1)
    desc = rng.normal(size=(n_points, 32)).astype(np.float32)
    desc /= np.linalg.norm(desc, axis=1, keepdims=True)
    up = (0.0, -1.0, 0.0)
    map_poses = {f"map/{i}.png": look_at(e, np.zeros(3), up=up)
                 for i, e in enumerate([(-0.8, -0.5, -4.5), (0.8, -0.5, -4.5), (-0.8, 0.5, -4.5), (0.8, 0.5, -4.5)])}
    query = look_at((0.3, 0.2, -4.2), np.zeros(3), up=up)

    def observe(pose, noise=0.0, rng_=None):
        x, valid = CAM.project_with_valid(pose.transform(torch.from_numpy(points)))
        idx = np.flatnonzero(valid.numpy())
        kp = x.numpy()[idx]
        if noise:
            kp = kp + rng_.normal(scale=noise, size=kp.shape)
        return {"keypoints": kp.astype(np.float32), "descriptors": desc[idx], "scores": np.ones(len(idx), np.float32),
                "image_size": np.array([CAM.width, CAM.height])}, idx

    map_rng = np.random.default_rng(seed + 100)
    # the 3D points stay exact; ``map_noise`` moves only the map's keypoints off their projections
    rec, feats = reconstruction_from_observations(CAM, map_poses, points, lambda p: observe(p, map_noise, map_rng))
    conf = {"features": "sift", "matcher": "mnn", "retrieval": {"global_descriptor": {"type": "vlad", "num_clusters": 8}}}
    return Map.from_reconstruction(rec, feats, conf), map_poses, query, observe


def _noisy_query_scene():
    """The plane scene, its rendered map images, the query's image and its keypoints with 0.8 px
    of noise: ``(map, map_images, query_pose, query_image, query_features)``."""
    tex = _texture(1)
    map_, map_poses, query, observe = _plane_scene()
    images = {n: _render(tex, p) for n, p in map_poses.items()}
    feats, _ = observe(query, noise=0.8, rng_=np.random.default_rng(3))
    return map_, images, query, _render(tex, query), feats


@pytest.mark.parametrize("num_refs", [1, 3])  # 3: the mean patch of the 3 nearest observations
def test_localizer_patch_alignment_pulls_noisy_keypoints_onto_the_map(num_refs):
    map_, images, query, qimage, feats = _noisy_query_scene()
    base = {"retrieval": {"num_keyframes": 4}, "ransac": {"max_error_px": 4.0}}
    plain = Localizer(map_, base).localize_features(feats, CAM)
    loc = Localizer(map_, {**base, "patch_alignment": {"enabled": True, "num_references": num_refs}}, map_images=images)
    res = loc.localize_features(feats, CAM, image=qimage)
    assert plain.success and res.success
    info = res.info["patch_alignment"]
    assert info["n_aligned"] > 0.9 * res.num_inliers, info
    # every query keypoint is the projection of point idx[k]; compare the inliers' positions
    truth = dict(zip(map_.point3D_ids.tolist(), map_.points3D.tolist()))
    x_true, _ = CAM.project_with_valid(query.transform(torch.tensor([truth[i] for i in res.point3D_ids.tolist()],
                                                                     dtype=torch.float64)))
    inl = np.asarray(res.inlier_mask)
    e_before = np.linalg.norm(np.asarray(plain.points2D)[inl] - x_true.numpy()[inl], axis=1)
    e_after = np.linalg.norm(np.asarray(res.points2D)[inl] - x_true.numpy()[inl], axis=1)
    assert np.median(e_after) < 0.2 * np.median(e_before), (np.median(e_before), np.median(e_after))
    r0, t0 = rotation_error_deg(plain.pose.R, query.R).item(), center_error(plain.pose, query).item()
    r1, t1 = rotation_error_deg(res.pose.R, query.R).item(), center_error(res.pose, query).item()
    assert t1 < 0.5 * t0 and r1 < 0.5 * r0, (r0, t0, r1, t1)
    assert "alignment" in res.timings


@pytest.mark.parametrize("num_refs", [1, 3])
def test_templates_at_the_points_projections_do_not_inherit_map_keypoint_noise(num_refs):
    """Map keypoints 0.8 px off their (exact) 3D points' projections: templates centred on the
    keypoints hand that offset to the aligned query keypoints; ``template_center: projection``
    centres them on the 3D points projected into the map images, and the aligned query keypoints
    land on their own points' projections (and the pose follows)."""
    tex = _texture(1)
    map_, map_poses, query, observe = _plane_scene(map_noise=0.8)
    images = {n: _render(tex, p) for n, p in map_poses.items()}
    qimage = _render(tex, query)
    feats, _ = observe(query)  # exact query keypoints: any error after alignment comes from the map side
    truth = dict(zip(map_.point3D_ids.tolist(), map_.points3D.tolist()))
    out = {}
    for center in ("keypoint", "projection"):
        conf = {"retrieval": {"num_keyframes": 4}, "ransac": {"max_error_px": 4.0},
                "patch_alignment": {"enabled": True, "num_references": num_refs, "template_center": center}}
        res = Localizer(map_, conf, map_images=images).localize_features(feats, CAM, image=qimage)
        assert res.success and res.info["patch_alignment"]["n_aligned"] > 0.9 * res.num_inliers
        inl = np.asarray(res.inlier_mask)
        X = torch.tensor([truth[i] for i in np.asarray(res.point3D_ids)[inl].tolist()], dtype=torch.float64)
        x_true = CAM.project(query.transform(X)).cpu().numpy()
        out[center] = (np.median(np.linalg.norm(np.asarray(res.points2D)[inl] - x_true, axis=1)),
                       center_error(res.pose, query).item())
    (e_kp, t_kp), (e_pr, t_pr) = out["keypoint"], out["projection"]
    assert e_kp > 0.25, out  # the map keypoints' offsets reach the query (averaged over K views for K > 1)
    assert e_pr < 0.25 * e_kp and e_pr < 0.2, out
    assert t_pr < 0.5 * t_kp, out


def test_further_references_only_within_the_angle_limit():
    """``max_reference_angle_deg``: a second map view joins a point's template only where it sees
    the point within that angle of the query's ray; the nearest view always counts."""
    tex = _texture(1)
    map_, map_poses, query, observe = _plane_scene()
    images = {n: _render(tex, p) for n, p in map_poses.items()}
    feats, _ = observe(query, noise=0.5, rng_=np.random.default_rng(3))
    refs = {}
    for limit in (None, 60.0, 0.5):
        conf = {"retrieval": {"num_keyframes": 4}, "ransac": {"max_error_px": 4.0},
                "patch_alignment": {"enabled": True, "num_references": 2, "max_reference_angle_deg": limit}}
        res = Localizer(map_, conf, map_images=images).localize_features(feats, CAM, image=_render(tex, query))
        assert res.success
        refs[limit] = res.info["patch_alignment"]["mean_references"]
    # the map views are 10-20 deg from the query's rays: all pass 60 deg, none 0.5 deg
    assert refs[None] > 1.9 and refs[60.0] == refs[None] and refs[0.5] == 1.0, refs


def test_further_references_from_views_that_see_the_point_without_observing_it():
    """``reference_views: visible``: a map image whose track lacks a point (no matched keypoint
    there) still gives a template where the point projects inside it, in front (a further one
    within the angle limit); ``observing`` (the default) needs the track. The templates are exact renders,
    so the aligned keypoints land on the points' projections either way."""
    tex = _texture(1)
    map_, map_poses, query, observe = _plane_scene()
    rng = np.random.default_rng(11)

    def thinned(pose):  # each map view keeps a random 45% of the points it sees
        f, idx = observe(pose)
        keep = rng.random(len(idx)) < 0.45
        return {k: (v[keep] if k != "image_size" else v) for k, v in f.items()}, idx[keep]

    rng0 = np.random.default_rng(0)  # _plane_scene's points, in its order (seed 0)
    points = np.concatenate([rng0.uniform(-1.4, 1.4, (700, 2)), np.zeros((700, 1))], 1)
    rec, feats = reconstruction_from_observations(CAM, map_poses, points, thinned)
    thin = Map.from_reconstruction(rec, feats, {"features": "sift", "matcher": "mnn",
                                                "retrieval": {"global_descriptor": {"type": "vlad", "num_clusters": 8}}})
    images = {n: _render(tex, p) for n, p in map_poses.items()}
    feats_q, _ = observe(query, noise=0.5, rng_=np.random.default_rng(3))
    out = {}
    for views in ("observing", "visible"):
        conf = {"retrieval": {"num_keyframes": 2}, "ransac": {"max_error_px": 4.0},
                "patch_alignment": {"enabled": True, "num_references": 2, "max_reference_angle_deg": None,
                                    "reference_views": views}}
        res = Localizer(thin, conf, map_images=images).localize_features(feats_q, CAM, image=_render(tex, query))
        assert res.success
        inl = np.asarray(res.inlier_mask)
        X = torch.from_numpy(np.stack([rec.points3D[i].xyz for i in np.asarray(res.point3D_ids)[inl].tolist()]))
        x_true = CAM.project(query.transform(X)).cpu().numpy()
        out[views] = (res.info["patch_alignment"]["mean_references"],
                      float(np.median(np.linalg.norm(np.asarray(res.points2D)[inl] - x_true, axis=1))))
    (r_obs, e_obs), (r_vis, e_vis) = out["observing"], out["visible"]
    # two map views retrieved: a thinned track holds both for about half of the matched points
    # (measured 1.34 references per template); most points are inside both views
    assert r_obs < 1.5 and r_vis > r_obs + 0.2, out
    assert e_obs < 0.2 and e_vis < 0.2, out
    with pytest.raises(ValueError, match="reference_views must be 'observing' or 'visible'"):
        Localizer(thin, {"patch_alignment": {"enabled": True, "reference_views": "all"}}, map_images=images)
    with pytest.raises(ValueError, match="'visible' needs template_center 'projection'"):
        Localizer(thin, {"patch_alignment": {"enabled": True, "reference_views": "visible", "template_center": "keypoint"}},
                  map_images=images)


def test_visible_rows_need_the_point_in_front_and_inside_and_observed_somewhere():
    map_, map_poses, query, _ = _plane_scene(n_points=200)
    names = list(map_poses)
    rows = np.arange(len(map_.points3D))
    shown = visible_rows(map_, rows, names, 10.0)
    # every view of this map observes every point
    assert all(s.all() for s in shown)
    # a map image's view of points it does not observe: inside (margin) and in front only
    far = look_at((1.6, 0.0, -2.5), np.array([2.6, 0.0, 0.0]), up=(0.0, -1.0, 0.0))  # part of the plane in view
    proj = CAM.project(far.transform(torch.from_numpy(map_.points3D))).cpu().numpy()
    pc = far.transform(torch.from_numpy(map_.points3D)).cpu().numpy()
    inside = (pc[:, 2] > 0) & np.all((proj >= 10) & (proj <= np.array([CAM.width, CAM.height]) - 10), axis=1)
    assert 0 < inside.sum() < len(rows)

    class OneMore:  # map_ with one more image that observes nothing
        def __init__(self, m):
            self.m, self.points3D = m, m.points3D
            self.kp_to_point = {**m.kp_to_point, "far.png": np.zeros(0, np.int64)}
            self.features = {**m.features, "far.png": {"keypoints": np.zeros((0, 2))}}

        def pose(self, n):
            return far if n == "far.png" else self.m.pose(n)

        def camera(self, n):
            return CAM if n == "far.png" else self.m.camera(n)

    both = visible_rows(OneMore(map_), rows, names[:1] + ["far.png"], 10.0)
    np.testing.assert_array_equal(both[1], inside)
    # a camera facing away: the points project (mirrored) inside its image but are behind it
    away = look_at((0.0, 0.0, -4.5), np.array([0.0, 0.0, -9.0]), up=(0.0, -1.0, 0.0))
    proj_away = CAM.project(away.transform(torch.from_numpy(map_.points3D))).cpu().numpy()
    assert np.all((proj_away >= 10) & (proj_away <= np.array([CAM.width, CAM.height]) - 10), axis=1).any()
    far = away
    assert not visible_rows(OneMore(map_), rows, names[:1] + ["far.png"], 10.0)[1].any()
    # alone, no image of the list observes any point: none is shown
    assert not visible_rows(OneMore(map_), rows, ["far.png"], 10.0)[0].any()


def test_template_center_is_checked():
    map_, map_poses, query, observe = _plane_scene(n_points=200)
    images = {n: np.zeros((240, 320), np.uint8) for n in map_poses}
    with pytest.raises(ValueError, match="template_center must be 'keypoint' or 'projection', got 'centroid'"):
        Localizer(map_, {"patch_alignment": {"enabled": True, "template_center": "centroid"}}, map_images=images)
    for bad in (0, -5, "10", True):
        with pytest.raises(ValueError, match="max_reference_angle_deg must be null or in"):
            Localizer(map_, {"patch_alignment": {"enabled": True, "max_reference_angle_deg": bad}}, map_images=images)


def test_patch_alignment_needs_images_and_bpnp():
    map_, map_poses, query, observe = _plane_scene(n_points=200)
    with pytest.raises(ValueError, match="map images"):
        Localizer(map_, {"patch_alignment": {"enabled": True}})
    with pytest.raises(ValueError, match="bpnp"):
        Localizer(map_, {"patch_alignment": {"enabled": True}, "refinement": {"method": "none"}}, map_images={})
    loc = Localizer(map_, {"retrieval": {"num_keyframes": 4}, "patch_alignment": {"enabled": True}},
                    map_images={n: np.zeros((240, 320), np.uint8) for n in map_poses})
    feats, _ = observe(query)
    with pytest.raises(ValueError, match="query image"):
        loc.localize_features(feats, CAM)
    with pytest.raises(ValueError, match="num_references"):
        Localizer(map_, {"patch_alignment": {"enabled": True, "num_references": 0}}, map_images={})
    with pytest.raises(ValueError, match="10x10 px but its camera is 320x240"):
        loc.localize_features(feats, CAM, image=np.zeros((10, 10), np.uint8))


def test_reference_observation_is_the_nearest_observing_image():
    map_, map_poses, query, _ = _plane_scene(n_points=200)
    rows = np.arange(len(map_.points3D))
    owner, kps, names = reference_observations(map_, rows, list(map_poses), query.center.reshape(-1).numpy())
    d = [float(np.linalg.norm(map_poses[n].center.reshape(-1).numpy() - query.center.reshape(-1).numpy())) for n in names]
    assert d == sorted(d)
    # every point of this map is seen by all four views: all owned by the nearest
    assert np.all(owner == 0)
    x, _ = CAM.project_with_valid(map_poses[names[0]].transform(torch.from_numpy(map_.points3D)))
    assert np.allclose(kps, x.numpy(), atol=1e-3)


def test_every_localization_preset_is_valid():
    from pathlib import Path

    from hloc_bpnp.config import load_config, merge
    from hloc_bpnp.localization.localizer import default_conf

    presets = sorted(p.stem for p in (Path(__file__).parents[1] / "configs" / "localization").glob("*.yaml"))
    assert {"aligned", "fast_learned_aligned", "default"} <= set(presets)
    for name in presets:
        conf = merge(default_conf, load_config("localization", name), strict=True)
        if name.endswith("aligned"):
            assert conf["patch_alignment"]["enabled"] and conf["refinement"]["method"] == "bpnp"


def test_cli_localize_with_map_images(tmp_path, caplog):
    from PIL import Image

    from hloc_bpnp.cli import main
    from hloc_bpnp.io.hloc_text import read_results

    from hloc_bpnp.io.scene import Scene, SceneImage
    from hloc_bpnp.mapping.build import build_map_from_poses

    tex = _texture(1)
    _, map_poses, query, _ = _plane_scene(n_points=10)
    for n, p in map_poses.items():
        (tmp_path / "mapimg" / n).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(_render(tex, p)).save(tmp_path / "mapimg" / n)
    scene = Scene([SceneImage(n, CAM, p) for n, p in map_poses.items()], image_dir=tmp_path / "mapimg")
    build_map_from_poses(scene, conf="default", progress=False).save(tmp_path / "map")
    (tmp_path / "q").mkdir()
    Image.fromarray(_render(tex, query)).save(tmp_path / "q" / "q0.png")
    (tmp_path / "queries.txt").write_text("q0.png PINHOLE 320 240 260 260 160 120\n")
    args = ["localize", "--map", str(tmp_path / "map"), "--images", str(tmp_path / "q"), "--queries",
            str(tmp_path / "queries.txt"), "--output", str(tmp_path / "res.txt")]
    assert main(args + ["--config", "aligned"]) == 2
    assert "no map images were given" in caplog.text
    assert main(args + ["--config", "aligned", "--workers", "2"]) == 2
    assert "pass --map-images" in caplog.text
    assert main(args + ["--config", "aligned", "--map-images", str(tmp_path / "mapimg")]) == 0
    poses = read_results(tmp_path / "res.txt")
    assert list(poses) == ["q0.png"]
    assert center_error(poses["q0.png"], query).item() < 0.01
    import json

    log = json.loads((tmp_path / "res_log.json").read_text())["queries"][0]
    assert log["info"]["patch_alignment"]["n_aligned"] > 0.5 * log["num_inliers"]
    # --map-images with a preset that does not align: a warning that the images are not read
    caplog.clear()
    assert main(args[:-1] + [str(tmp_path / "res_plain.txt"), "--map-images", str(tmp_path / "mapimg")]) == 0
    assert "preset 'default' does not align, the map images are not used" in caplog.text
    assert "patch_alignment" not in json.loads((tmp_path / "res_plain_log.json").read_text())["queries"][0]["info"]
    try:
        import ray  # noqa: F401
    except ImportError:
        return
    # on Ray workers (each reads the map images itself): the same alignment and pose
    out = tmp_path / "ray" / "res.txt"
    out.parent.mkdir()
    args[-1] = str(out)
    assert main(args + ["--config", "aligned", "--map-images", str(tmp_path / "mapimg"), "--workers", "1"]) == 0
    log_ray = json.loads((out.parent / "res_log.json").read_text())["queries"][0]
    assert log_ray["info"]["patch_alignment"]["n_aligned"] == log["info"]["patch_alignment"]["n_aligned"]
    ray_pose = read_results(out)["q0.png"]
    assert torch.allclose(ray_pose.matrix(), poses["q0.png"].matrix(), atol=1e-5)


def test_map_images_cache_is_bounded_and_shareable():
    from hloc_bpnp.localization.patch_alignment import MapImages

    imgs = {f"m{i}.png": np.full((100, 200), i, np.uint8) for i in range(5)}
    one = 100 * 200  # a raw 8-bit gray image
    cache = MapImages(imgs, capacity=16, max_megabytes=2.5 * one / 2 ** 20)
    for n in imgs:
        assert tuple(cache(n).shape) == (1, 1, 100, 200) and cache(n).dtype == torch.uint8
    assert len(cache._cache) == 2 and cache.nbytes <= 2.5 * one  # the byte bound evicts
    assert list(cache._cache) == ["m3.png", "m4.png"]  # least recently used first out
    assert int(cache("m4.png")[0, 0, 50, 100]) == 4
    rgb = MapImages({"c.png": np.full((10, 20, 3), 0.5, np.float32)})("c.png")
    assert rgb.dtype == torch.float32 and tuple(rgb.shape) == (1, 1, 10, 20)
    with pytest.raises(KeyError, match="m9.png"):
        cache("m9.png")
    map_, map_poses, _, _ = _plane_scene(n_points=100)
    shared = MapImages({n: np.zeros((240, 320), np.uint8) for n in map_poses})
    for blur in (1.0, 2.0):  # raw images: one cache serves every blur
        loc = Localizer(map_, {"patch_alignment": {"enabled": True, "blur_sigma": blur}}, map_images=shared)
        assert loc.map_images is shared


def test_cropped_alignment_equals_whole_image_alignment():
    """Raw images are aligned from crops around the points; the shifts are those of the
    whole prepared images, also for points near the border and 8-bit images."""
    from hloc_bpnp.localization.patch_alignment import align_patches, prepare_image

    g = torch.Generator().manual_seed(0)
    base = torch.nn.functional.interpolate(torch.rand(1, 1, 30, 40, generator=g), size=(120, 160), mode="bicubic")
    ref = (base.clamp(0, 1) * 255).round().to(torch.uint8)
    mov = torch.roll(ref, shifts=(1, -2), dims=(2, 3))
    pts = torch.rand(200, 2, generator=g) * torch.tensor([160.0, 120.0])
    pts[:5] = torch.tensor([[0.5, 0.5], [159.5, 119.5], [2.0, 60.0], [80.0, 1.0], [158.0, 3.0]])
    start = pts + torch.tensor([-2.0, 1.0]) + 0.3 * torch.randn(200, 2, generator=g)
    for blur in (0.0, 1.0, 2.0):
        d_crop, ok_crop = align_patches(ref, mov, pts, start, blur_sigma=blur, min_ncc=0.3)
        d_whole, ok_whole = align_patches(prepare_image(ref, blur), prepare_image(mov, blur), pts, start,
                                          min_ncc=0.3, prepared=True)
        # equal wherever the patches stay inside the image (beyond it, the crops repeat the
        # border pixels, so their gradient is 0 there, where the whole image repeats the gradient)
        inner = (pts > 12).all(-1) & (pts < torch.tensor([148.0, 108.0])).all(-1)
        assert torch.equal(ok_crop[inner], ok_whole[inner])
        assert torch.allclose(d_crop[inner], d_whole[inner], atol=1e-4), (blur, (d_crop - d_whole).abs().max())
        assert torch.isfinite(d_crop).all() and ok_crop[:5].any()  # border points are aligned too
        inner &= ok_crop
        assert inner.sum() > 100  # and the shift is the roll's, away from the wrapped border
        assert torch.allclose((start + d_crop)[inner] - pts[inner], torch.tensor([-2.0, 1.0]), atol=0.1)


@pytest.mark.parametrize("sigma", [0.5, 1.0, 2.0])
def test_window_blur_by_matrix_products_equals_the_convolution(sigma):
    """The crops' blur matrix (two batched matrix products with the border taps folded in)
    equals kornia's replicate-border Gaussian blur of each crop."""
    from hloc_bpnp.features.patch_lk import _blur, _blur_matrix

    win = torch.rand(50, 1, 23, 23, generator=torch.Generator().manual_seed(1))
    M = _blur_matrix(23, sigma)
    assert torch.allclose(M @ win @ M.T, _blur(win, sigma), atol=2e-6)


def test_auto_aligns_exactly_when_map_images_are_given():
    """``enabled: auto`` aligns with map images (same result as ``True``) and localizes without
    alignment without them (same result as ``False``); other values are errors."""
    map_, images, query, qimage, feats = _noisy_query_scene()
    base = {"retrieval": {"num_keyframes": 4}, "ransac": {"max_error_px": 4.0}}

    def run(enabled, imgs):
        loc = Localizer(map_, {**base, "patch_alignment": {"enabled": enabled}}, map_images=imgs)
        return loc, loc.localize_features(feats, CAM, image=qimage)

    loc_a, auto_with = run("auto", images)
    _, on = run(True, images)
    loc_b, auto_without = run("auto", None)
    _, off = run(False, None)
    assert loc_a.conf["patch_alignment"]["enabled"] is True and loc_b.conf["patch_alignment"]["enabled"] is False
    assert "patch_alignment" in auto_with.info and "patch_alignment" not in auto_without.info
    np.testing.assert_allclose(np.asarray(auto_with.points2D), np.asarray(on.points2D))
    np.testing.assert_allclose(auto_with.pose.t.cpu().numpy(), on.pose.t.cpu().numpy())
    np.testing.assert_allclose(auto_without.pose.t.cpu().numpy(), off.pose.t.cpu().numpy())
    assert not np.allclose(auto_with.pose.t.cpu().numpy(), auto_without.pose.t.cpu().numpy())
    for bad in ("yes", 1, None):
        with pytest.raises(ValueError, match="patch_alignment.enabled must be true, false or 'auto'"):
            Localizer(map_, {"patch_alignment": {"enabled": bad}}, map_images=images)


def test_auto_weights_drop_the_detections_sigmas_after_alignment(monkeypatch):
    """With ``use_weights: auto`` the refiner's sigmas weigh the first pose only: they describe
    the detections, which the alignment replaced, so the aligned pose is refined without weights;
    an explicit ``uncertainty`` keeps them."""
    import hloc_bpnp.localization.localizer as L

    map_, images, query, qimage, feats = _noisy_query_scene()
    feats = {**feats, "sigmas": np.random.default_rng(4).uniform(0.3, 3.0, len(feats["keypoints"])).astype(np.float32)}
    calls = []
    real = L.refine_bpnp

    def spy(pts, X, cam, pose, ref, w=None, L_=None):
        calls.append(w)
        return real(pts, X, cam, pose, ref, w, L_)

    monkeypatch.setattr(L, "refine_bpnp", spy)
    out = {}
    for mode in ("auto", "uncertainty"):
        conf = {"retrieval": {"num_keyframes": 4}, "ransac": {"max_error_px": 4.0},
                "refinement": {"use_weights": mode}, "patch_alignment": {"enabled": True}}
        calls.clear()
        out[mode] = Localizer(map_, conf, map_images=images).localize_features(feats, CAM, image=qimage)
        assert out[mode].success
        out[mode + " aligned weights"] = calls[-1]
    assert out["auto"].info["correspondence_weights"] == "uncertainty"
    assert out["auto"].info["patch_alignment"]["correspondence_weights"] is False
    assert out["auto aligned weights"] is None
    assert out["uncertainty"].info["patch_alignment"]["correspondence_weights"] == "uncertainty"
    w = out["uncertainty aligned weights"]
    assert w is not None and np.ptp(np.asarray(w)) > 0


def test_pose_is_refined_once_after_the_alignment_unless_refine_first(monkeypatch):
    """With alignment the RANSAC pose goes to the alignment unrefined (no BPnP, no structure
    tensors before it: the alignment reads only the inliers and the camera centre) and is refined
    once from the aligned keypoints, weighted by the alignment's own Gauss-Newton matrices (no
    image read for them either); ``refine_first: true`` refines before as well, to as good a
    pose. Without alignment the refinement is not deferred."""
    import hloc_bpnp.localization.keypoint_noise as KNm
    import hloc_bpnp.localization.pose_estimation as PE

    map_, images, query, qimage, feats = _noisy_query_scene()
    calls = {"first": 0, "tensors": 0}
    real_refine, real_tensors = PE.refine_bpnp, KNm.structure_tensors

    def first(*a, **k):
        calls["first"] += 1
        return real_refine(*a, **k)

    def tensors(*a, **k):
        calls["tensors"] += 1
        return real_tensors(*a, **k)

    monkeypatch.setattr(PE, "refine_bpnp", first)
    monkeypatch.setattr(KNm, "structure_tensors", tensors)
    base = {"retrieval": {"num_keyframes": 4}, "ransac": {"max_error_px": 4.0},
            "refinement": {"keypoint_covariance": {"method": "structure_tensor"}}}
    out = {}
    for label, pa in (("deferred", {"enabled": True}), ("first", {"enabled": True, "refine_first": True}),
                      ("off", {"enabled": False}), ("image", {"enabled": True, "keypoint_covariance": "image"})):
        calls.update(first=0, tensors=0)
        res = Localizer(map_, {**base, "patch_alignment": pa}, map_images=images).localize_features(
            feats, CAM, image=qimage)
        assert res.success and res.covariance is not None
        out[label] = (res, dict(calls))
    (d, cd), (f, cf), (o, co) = out["deferred"], out["first"], out["off"]
    assert cd == {"first": 0, "tensors": 0} and d.info["refinement_deferred"] is True
    assert out["image"][1] == {"first": 0, "tensors": 1}
    assert "cost_refined" in d.info["patch_alignment"]
    assert cf == {"first": 1, "tensors": 1} and "refinement_deferred" not in f.info
    assert co == {"first": 1, "tensors": 1} and "refinement_deferred" not in o.info
    np.testing.assert_array_equal(np.asarray(d.inlier_mask), np.asarray(f.inlier_mask))
    # about as accurate: the templates may differ where the centre decides between map views
    # (here 0.0255 deg / 0.00200 deferred against 0.0196 / 0.00150 refined first, 0.18 / 0.013
    # unaligned; without patch_alignment.residual_variance 0.0324 / 0.00259 against 0.0336 / 0.00267)
    err = {k: (rotation_error_deg(r.pose.R, query.R).item(), center_error(r.pose, query).item())
           for k, (r, _) in out.items()}
    assert err["deferred"][0] < 1.5 * err["first"][0] and err["deferred"][1] < 1.5 * err["first"][1], err
    for k in ("deferred", "first", "image"):  # the aligned poses are better than the unaligned one
        assert err[k][0] < 0.5 * err["off"][0] and err[k][1] < 0.5 * err["off"][1], err


@pytest.mark.parametrize("gradients", [False, True])
def test_window_patches_equal_bilinear_sampling_at_the_grid(gradients):
    """A patch's samples share its centre's sub-pixel fraction: the four-slice bilinear read of
    the windows equals ``grid_sample`` at the patch's pixels, for any fraction (0 and near 1
    included) and centres near the windows' borders; the gradients (central differences of a
    one pixel wider read) equal ``grid_sample`` of the windows' central differences (the windows
    padded by replicating their borders)."""
    from hloc_bpnp.features.patch_lk import _patch_grid, _window_patches

    g = torch.Generator().manual_seed(2)
    win = torch.rand(64, 17, 17, generator=g)
    origin = torch.randint(-5, 300, (64, 2), generator=g).float()
    centers = origin + 0.5 + 3.0 + torch.rand(64, 2, generator=g) * 10
    centers[:3] = origin[:3] + 0.5 + torch.tensor([[8.0, 8.0], [8.999, 3.0], [3.0, 12.9999]])
    grid, _ = _patch_grid(3, "cpu")
    local = centers[:, None] + grid - 0.5 - origin[:, None]
    maps = win[:, None]
    if gradients:
        pad = torch.nn.functional.pad(maps, (1, 1, 1, 1), mode="replicate")
        maps = torch.cat([maps, (pad[..., 1:-1, 2:] - pad[..., 1:-1, :-2]) / 2,
                          (pad[..., 2:, 1:-1] - pad[..., :-2, 1:-1]) / 2], 1)
    ref = torch.nn.functional.grid_sample(maps, (2 * local / 16 - 1)[:, :, None], mode="bilinear",
                                          align_corners=True, padding_mode="border")[..., 0].permute(1, 0, 2)
    out = _window_patches(win, origin, centers, 3, gradients)
    assert out.shape == (3 if gradients else 1, 64, 49)
    assert torch.allclose(out, ref, atol=1e-5), (out - ref).abs().max()


def test_crop_windows_equal_the_prepared_image_both_ways():
    """The crop windows (blurred per crop for few points, the image blurred once for many)
    equal :func:`prepare_image`'s blurred image at their pixels inside the image, border pixels
    included (outside it the two read different extensions of the image)."""
    from hloc_bpnp.features.patch_lk import _windows, prepare_image

    g = torch.Generator().manual_seed(4)
    img = (torch.rand(1, 1, 40, 50, generator=g) * 255).to(torch.uint8)
    full = prepare_image(img, 1.0)[0, 0]
    for n in (2, 60):  # 2 crops: blurred per crop; 60 crops cover more than the image
        pts = torch.rand(n, 2, generator=g) * torch.tensor([50.0, 40.0])
        pts[0] = torch.tensor([0.6, 39.9])  # crops past the border
        win, o = _windows(img, pts, 6, 1.0)
        assert win.shape == (n, 13, 13)
        r = torch.arange(13)
        ys, xs = o[:, 1:].long() + r, o[:, :1].long() + r
        inside = ((ys >= 0) & (ys < 40))[:, :, None] & ((xs >= 0) & (xs < 50))[:, None, :]
        assert (~inside).any() and inside.sum() > 50 * n
        ref = full[ys.clamp(0, 39)[:, :, None], xs.clamp(0, 49)[:, None, :]]
        assert torch.allclose(win[inside], ref[inside], atol=2e-6)


@pytest.mark.parametrize("num_refs", [1, 2])
def test_alignment_returns_the_structure_tensors_at_the_aligned_positions(num_refs):
    """``align_to_map(..., return_tensors=True)``: the query patches' Gauss-Newton matrices at
    the returned positions equal ``structure_tensors`` read there with the alignment's radius
    and blur (rejected points: at their unmoved positions)."""
    from hloc_bpnp.features.patch_lk import structure_tensors
    from hloc_bpnp.localization.patch_alignment import align_to_map, MapImages

    map_, images, query, qimage, feats = _noisy_query_scene()
    rows = np.arange(len(map_.points3D))[:300]
    x, _ = CAM.project_with_valid(query.transform(torch.as_tensor(map_.points3D[rows], dtype=torch.float64)))
    start = x.cpu().numpy() + np.random.default_rng(5).normal(0, 0.7, (len(rows), 2))
    conf = {"radius": 5, "iterations": 10, "blur_sigma": 1.0, "max_shift_px": 3.0, "min_ncc": 0.3,
            "num_references": num_refs, "max_reference_angle_deg": None, "residual_variance": False}
    center = query.center.reshape(-1).cpu().numpy()
    out, info, H = align_to_map(torch.from_numpy(qimage)[None, None], start, rows, map_, MapImages(images),
                                list(images), center, conf, return_tensors=True)
    assert H.shape == (len(rows), 2, 2) and H.dtype == torch.float64
    ref = structure_tensors(torch.from_numpy(qimage)[None, None], torch.from_numpy(out), 5, 1.0)
    assert torch.allclose(H, ref, rtol=1e-3, atol=1e-3 * float(ref.abs().max())), (H - ref).abs().max()
    assert info["n_aligned"] > 0.8 * len(rows)
    out2, info2 = align_to_map(torch.from_numpy(qimage)[None, None], start, rows, map_, MapImages(images),
                               list(images), center, conf)
    np.testing.assert_array_equal(out, out2)
    # residual_variance: the same matrices, each divided by its patch's own residual variance
    out3, _, H3 = align_to_map(torch.from_numpy(qimage)[None, None], start, rows, map_, MapImages(images),
                               list(images), center, {**conf, "residual_variance": True}, return_tensors=True)
    np.testing.assert_array_equal(out, out3)
    v = H[:, 0, 0] / H3[:, 0, 0]
    assert torch.allclose(H3 * v[:, None, None], H, rtol=1e-9, atol=0)
    assert bool((v > 0).all()) and float(v.median()) < 0.05, v.median()  # exact renderings: small residuals
    assert info["median_residual_variance"] == pytest.approx(float(v.median()), rel=1e-6)


def test_lucas_kanade_residual_variances_measure_how_well_the_patches_agree():
    """``return_residuals``: the windowed residual variance of the normalised patches at the
    returned position, near zero for a shifted copy and large for an unrelated image (measured
    where a rejected point stays), in both ``align_patches`` and ``align_to_templates``."""
    from hloc_bpnp.features.patch_lk import align_to_templates, normalise_patches, sample_patches

    tex = _texture(0, 256)[0, 0].float()
    H, W = tex.shape
    ys, xs = torch.meshgrid(torch.arange(H) + 0.5, torch.arange(W) + 0.5, indexing="ij")
    g = torch.stack([2 * (xs + 0.4) / W - 1, 2 * (ys - 0.3) / H - 1], -1)
    B = F.grid_sample(tex[None, None], g[None], mode="bicubic", align_corners=False, padding_mode="border")[0, 0]
    p = torch.from_numpy(np.random.default_rng(1).uniform(30, 226, (60, 2)))
    d, ok, T, v = align_patches(tex, B, p, p.clone(), return_tensors=True, return_residuals=True)
    assert v.shape == (60,) and v.dtype == torch.float64 and T.shape == (60, 2, 2)
    assert ok.all() and float(v.max()) < 0.02, v.max()
    other = _texture(7, 256)[0, 0].float()
    d3, ok3, v3 = align_patches(tex, other, p, p.clone(), min_ncc=0.7, return_residuals=True)
    assert float(v3[~ok3].median()) > 0.5 and float(v3.median()) > 20 * float(v.median())
    # against templates (the reference patches, sampled another way: shifts within 0.01 px)
    templ = normalise_patches(sample_patches(tex, p, 5, 1.0), eps=1e-6)[0]
    d4, ok4, v4 = align_to_templates(B, p.clone(), templ, 5, 10, 1.0, 3.0, 0.5, return_residuals=True)
    assert torch.allclose(d4, d, atol=1e-2) and float(v4.max()) < 0.02
    other_templ = normalise_patches(sample_patches(other, p, 5, 1.0), eps=1e-6)[0]
    _, _, v5 = align_to_templates(B, p.clone(), other_templ, 5, 10, 1.0, 3.0, 0.7, return_residuals=True)
    assert float(v5.median()) > 20 * float(v4.median())
    # no points: empty results of the right shapes
    e = align_patches(tex, B, p[:0], p[:0], return_tensors=True, return_residuals=True)
    assert [tuple(x.shape) for x in e] == [(0, 2), (0,), (0, 2, 2), (0,)]


def test_aligned_keypoints_whose_patches_disagree_with_the_map_weigh_less():
    """A query whose left part shows something else than the map (an occluder painted over it)
    keeps noisy keypoints there that the alignment cannot fix; with ``residual_variance`` (the
    default) BPnP weighs them by their patches' residual variances and the pose is closer to the
    truth than with the alignment's matrices alone."""
    map_, images, query, qimage, feats = _noisy_query_scene()
    occluder = (_texture(9)[0, 0, :CAM.height, :CAM.width].numpy() * 255).astype(np.uint8)
    qimage = qimage.copy()
    qimage[:, : CAM.width // 2] = occluder[:, : CAM.width // 2]
    errors = {}
    for rv in (False, True):
        conf = {"retrieval": {"num_keyframes": 4}, "ransac": {"max_error_px": 4.0},
                "patch_alignment": {"enabled": True, "residual_variance": rv},
                "refinement": {"keypoint_covariance": {"method": "structure_tensor"}}}
        res = Localizer(map_, conf, map_images=images).localize_features(feats, CAM, image=qimage)
        assert res.success
        # the occluded half's patches match nothing: the median variance is 0.041 (0.016 without
        # the occluder)
        assert res.info["patch_alignment"]["median_residual_variance"] > 0.025
        errors[rv] = (rotation_error_deg(res.pose.R, query.R).item(), center_error(res.pose, query).item())
    # measured: 0.0565 deg / 0.0041 -> 0.0367 deg / 0.0028 (without the occluder 0.0405 -> 0.0255)
    assert errors[True][0] < 0.8 * errors[False][0] and errors[True][1] < 0.8 * errors[False][1], errors
    with pytest.raises(ValueError, match="residual_variance"):
        Localizer(map_, {"patch_alignment": {"enabled": True, "residual_variance": "yes"}}, map_images=images)


def test_aligned_refinement_takes_its_own_loss_scale(monkeypatch):
    """``patch_alignment.loss_scale_px`` is the robust scale of the refinement from the aligned
    keypoints only (null: ``refinement.loss_scale_px``); bad values are errors."""
    import hloc_bpnp.localization.localizer as L

    map_, images, query, qimage, feats = _noisy_query_scene()
    scales = []
    real = L.refine_bpnp

    def spy(pts, X, cam, pose, ref, w=None, L_=None):
        scales.append(ref["loss_scale_px"])
        return real(pts, X, cam, pose, ref, w, L_)

    monkeypatch.setattr(L, "refine_bpnp", spy)
    base = {"retrieval": {"num_keyframes": 4}, "ransac": {"max_error_px": 4.0}, "refinement": {"loss_scale_px": 2.0}}
    for pa_scale, expect in ((None, 2.0), (0.5, 0.5)):
        scales.clear()
        loc = Localizer(map_, {**base, "patch_alignment": {"enabled": True, "loss_scale_px": pa_scale}},
                        map_images=images)
        res = loc.localize_features(feats, CAM, image=qimage)
        assert res.success and scales == [expect] and res.info["patch_alignment"]["loss_scale_px"] == expect
    for bad in (0, -1.0, "0.5", True):
        with pytest.raises(ValueError, match="patch_alignment.loss_scale_px must be null, > 0 pixels or .adaptive."):
            Localizer(map_, {"patch_alignment": {"enabled": True, "loss_scale_px": bad}}, map_images=images)


def _oblique_query_scene(with_normals=True):
    """The plane scene seen by a query about 50 deg off the plane's normal (the map views about
    10 deg off it): ``(map, map_images, query_pose, query_image, query_features)``; the map's
    points carry the plane's true normal (-z, facing the cameras) when ``with_normals``."""
    tex = _texture(1)
    map_, map_poses, _, observe = _plane_scene()
    if with_normals:
        normals = np.tile([0.0, 0.0, -1.0], (len(map_.point3D_ids), 1))
        map_ = Map.from_reconstruction(map_.reconstruction, map_.features, map_.conf,
                                       point_normals=(map_.point3D_ids, normals))
    query = look_at((3.2, 0.3, -2.6), np.zeros(3), up=(0.0, -1.0, 0.0))
    feats, _ = observe(query, noise=0.5, rng_=np.random.default_rng(3))
    return map_, {n: _render(tex, p) for n, p in map_poses.items()}, query, _render(tex, query), feats


def _keypoint_errors(res, map_, query):
    inl = np.asarray(res.inlier_mask)
    X = torch.from_numpy(map_.points3D[map_.rows_of(np.asarray(res.point3D_ids))][inl])
    return np.linalg.norm(np.asarray(res.points2D)[inl] - CAM.project(query.transform(X)).cpu().numpy(), axis=1)


@pytest.mark.parametrize("num_refs, mode", [(1, "plane"), (2, "plane"), (2, "plane_if_better")])
def test_templates_warped_through_the_points_planes_follow_the_foreshortening(num_refs, mode):
    """``template_warp: plane``: the map view's template is read on the query's pixel grid carried
    through the point's plane, so an oblique query aligns to it; unwarped, the templates are
    compressed by ~0.64 against the query's patches and the aligned keypoints are biased.
    Measured: median keypoint error 0.45 -> 0.06 px, position error 0.0038 -> 0.0005 (1 reference)."""
    map_, images, query, qimage, feats = _oblique_query_scene()
    out = {}
    for warp in ("none", mode):
        conf = {"retrieval": {"num_keyframes": 4}, "ransac": {"max_error_px": 4.0},
                "patch_alignment": {"enabled": True, "num_references": num_refs, "template_warp": warp,
                                    "max_reference_angle_deg": None}}
        res = Localizer(map_, conf, map_images=images).localize_features(feats, CAM, image=qimage)
        assert res.success
        out[warp] = (res, float(np.median(_keypoint_errors(res, map_, query))), center_error(res.pose, query).item())
    (r0, e0, t0), (r1, e1, t1) = out["none"], out[mode]
    assert r0.info["patch_alignment"]["n_warped"] == 0
    assert r1.info["patch_alignment"]["n_warped"] > 0.9 * r1.num_inliers, r1.info["patch_alignment"]
    assert e1 < 0.25 * e0 and e1 < 0.1, (e0, e1)
    assert t1 < 0.5 * t0, (t0, t1)
    # a tighter bound on the warp's scale leaves these templates (compressed ~0.64) unwarped
    conf["patch_alignment"]["warp_max_scale"] = 1.05
    res = Localizer(map_, conf, map_images=images).localize_features(feats, CAM, image=qimage)
    assert res.info["patch_alignment"]["n_warped"] < 0.1 * res.num_inliers


def test_plane_if_better_keeps_the_unwarped_alignment_where_the_normals_are_wrong():
    """``plane_if_better``: with normals 53 deg off the plane's, the warped templates do not look
    like the query (``plane`` makes the keypoints worse than no warp); each point then keeps the
    alignment whose patch agrees better with its template, mostly the unwarped one.
    Measured: median keypoint error none 0.456 px, plane 0.753, plane_if_better 0.458 (87 of
    700 points warped)."""
    map_, images, query, qimage, feats = _oblique_query_scene()
    wrong = np.tile([0.8, 0.0, -0.6], (len(map_.point3D_ids), 1))
    map_ = Map.from_reconstruction(map_.reconstruction, map_.features, map_.conf,
                                   point_normals=(map_.point3D_ids, wrong))
    err, n_warped = {}, {}
    for warp in ("none", "plane", "plane_if_better"):
        conf = {"retrieval": {"num_keyframes": 4}, "ransac": {"max_error_px": 4.0},
                "patch_alignment": {"enabled": True, "template_warp": warp, "max_reference_angle_deg": None}}
        res = Localizer(map_, conf, map_images=images).localize_features(feats, CAM, image=qimage)
        err[warp], n_warped[warp] = float(np.median(_keypoint_errors(res, map_, query))), res.info["patch_alignment"]["n_warped"]
    assert err["plane"] > 1.3 * err["none"], err
    assert err["plane_if_better"] < 1.1 * err["none"], err
    assert n_warped["plane"] > 0.9 * 700 and n_warped["plane_if_better"] < 0.3 * 700, n_warped


def test_template_warp_without_normals_aligns_as_before(caplog):
    """A map without point normals (not plane-refined): ``template_warp: plane`` says so once (at
    the info level: a preset may warp where the map allows) and aligns exactly as ``none``."""
    map_, images, query, qimage, feats = _oblique_query_scene(with_normals=False)
    assert np.isnan(map_.point_normals).all() and map_.point_normals.shape == (len(map_.points3D), 3)
    pts = {}
    for warp in ("none", "plane"):
        conf = {"retrieval": {"num_keyframes": 4}, "ransac": {"max_error_px": 4.0},
                "patch_alignment": {"enabled": True, "template_warp": warp}}
        with caplog.at_level("INFO", logger="hloc_bpnp.localization.localizer"):
            res = Localizer(map_, conf, map_images=images).localize_features(feats, CAM, image=qimage)
        pts[warp] = np.asarray(res.points2D)
        assert res.info["patch_alignment"]["n_warped"] == 0
    np.testing.assert_array_equal(pts["plane"], pts["none"])
    assert sum("needs the map's point normals" in r.getMessage() for r in caplog.records) == 1


def test_template_warp_is_checked():
    map_, images, query, qimage, feats = _oblique_query_scene()
    for bad, msg in (({"template_warp": "homography"}, "template_warp must be 'none', 'plane' or 'plane_if_better'"),
                     ({"warp_max_scale": 1.0}, "warp_max_scale must be a number > 1"),
                     ({"warp_max_scale": True}, "warp_max_scale must be a number > 1")):
        with pytest.raises(ValueError, match=msg):
            Localizer(map_, {"patch_alignment": {"enabled": True, **bad}}, map_images=images)
    conf = {**Localizer(map_, {"patch_alignment": {"enabled": True}}, map_images=images).conf["patch_alignment"],
            "template_warp": "plane"}
    rows = np.arange(5)
    with pytest.raises(ValueError, match="needs the query's pose and camera"):
        align_to_map(qimage, np.zeros((5, 2)), rows, map_, lambda n: torch.from_numpy(images[n]), list(images),
                     np.zeros(3), conf)
    # template_affines: the plane's warp (plane_induced_affine), the identity where it scales by
    # more than the bound (row 1: determinant 3.27, largest singular value 2.69) or has no normal
    name = map_.image_names[0]
    X = torch.from_numpy(map_.points3D[rows])
    x = CAM.project(query.transform(X))
    A, ok = template_affines(map_, name, rows, x.numpy(), query, CAM, 2.0)
    A_plane, valid = plane_induced_affine(x, CAM, query, map_.camera(name), map_.pose(name), X,
                                          torch.from_numpy(map_.point_normals[rows]))
    assert valid.all() and A.shape == (5, 2, 2) and A.dtype == torch.float32
    assert ok.tolist() == [True, False, True, True, True]
    assert torch.allclose(A[ok], A_plane[ok].float()) and torch.equal(A[1], torch.eye(2))
    assert template_affines(map_, name, rows, x.numpy(), query, CAM, 4.0)[1].all()
    map_.point_normals[0] = np.nan
    A, ok = template_affines(map_, name, rows, x.numpy(), query, CAM, 2.0)
    assert ok.tolist() == [False, False, True, True, True] and torch.equal(A[0], torch.eye(2))


def test_warped_patches_are_the_image_sampled_on_the_warped_grid():
    """``sample_patches(..., affines=)`` reads the blurred image at ``points + A g`` (the crop
    windows wide enough for the warped grid); the identity gives the unwarped patches."""
    from hloc_bpnp.features.patch_lk import normalise_patches, prepare_image, sample_patches, sample_points

    g = torch.Generator().manual_seed(5)
    img = (torch.rand(1, 1, 120, 160, generator=g) * 255).to(torch.uint8)
    pts = torch.tensor([[40.3, 50.7], [100.5, 60.2], [80.0, 70.9]])
    A = torch.tensor([[[2.0, 0.3], [-0.2, 1.5]], [[0.5, 0.0], [0.1, 0.7]], [[-1.0, 0.0], [0.0, 1.0]]])
    out = sample_patches(img, pts, 5, 1.0, affines=A)
    r = torch.arange(-5, 6, dtype=torch.float32)
    yy, xx = torch.meshgrid(r, r, indexing="ij")
    grid = torch.stack([xx.reshape(-1), yy.reshape(-1)], -1)
    ref = sample_points(prepare_image(img, 1.0)[:, :1], pts[:, None] + torch.einsum("nij,pj->npi", A, grid))[0]
    assert torch.allclose(out, normalise_patches(ref)[0], atol=1e-4), (out - normalise_patches(ref)[0]).abs().max()
    plain = sample_patches(img, pts, 5, 1.0)
    assert torch.allclose(sample_patches(img, pts, 5, 1.0, affines=torch.eye(2).expand(3, 2, 2)), plain, atol=1e-4)
    with pytest.raises(ValueError, match=r"affines must be \(N, 2, 2\)"):
        sample_patches(img, pts, 5, 1.0, affines=A[:2])
