"""Synthetic scene generator: determinism, exact geometry, depth consistency, texture
richness, on-disk layout and CLI."""
import numpy as np
import pytest
import torch

from hloc_bpnp.config import merge
from hloc_bpnp.geometry import Camera, Pose, pose_error
from hloc_bpnp.synthetic import (Surface, backproject, camera_from_fov, depth_to_points,
                                 generate_scene, interpolate_depth, load_synthetic_scene, look_at,
                                 pixel_centers, sample_surface_points, surface_normals)

# a tiny scene (cheap textures, few small views) for tests that regenerate
TINY = {
    "size": [12.0, 10.0, 6.0], "num_boxes": 1, "num_wall_boxes": 1,
    "texture": {"texel_m": 0.05, "texture_min": 64, "texture_max": 256},
    "camera": {"width": 160, "height": 120},
    "path": {"radius": [2.5, 2.0], "arc_deg": [0.0, 60.0], "num_map": 2, "num_query": 1},
}


@pytest.fixture(scope="module")
def small():
    return generate_scene("small", seed=0)


def _distorted_camera(w=320, h=240):
    cam = camera_from_fov("OPENCV", w, h, 65.0, [-0.08, 0.02, 0.001, -0.0015])
    return cam


def test_determinism():
    a = generate_scene(TINY, seed=3)
    b = generate_scene(TINY, seed=3)
    c = generate_scene(TINY, seed=4)
    assert a.map_names == b.map_names and len(a.map_names) == 2 and len(a.query_names) == 1
    for n in a.images:
        assert np.array_equal(a.images[n], b.images[n])
        assert np.array_equal(a.scene[n].depth, b.scene[n].depth)
        assert torch.equal(a.scene[n].pose.R, b.scene[n].pose.R)
        assert a.images[n].shape == (120, 160, 3) and a.images[n].dtype == np.uint8
    n = a.map_names[0]
    assert not np.array_equal(a.images[n], c.images[n])
    assert not torch.allclose(a.scene[n].pose.t, c.scene[n].pose.t)


def test_scene_content(small):
    assert len(small.map_names) == 5 and len(small.query_names) == 2
    for im in small.scene:
        assert im.depth.shape == (240, 320) and im.depth.dtype == np.float32
        assert (im.depth > 0).mean() > 0.9  # the walls fill the views
        assert small.images[im.name].std() > 20  # textured, not flat
    # queries are new viewpoints: not equal to any map pose
    for q in small.query_names:
        dR, dt = zip(*[pose_error(small.scene[q].pose, small.scene[m].pose) for m in small.map_names])
        assert min(float(x) for x in dt) > 0.05


@pytest.mark.parametrize("distorted", [False, True])
def test_pixel_centres_backproject_onto_surfaces(small, distorted):
    """Depth at pixel centres is exact: back-projected points lie on the hit surface and
    reproject to the same pixel centre (COLMAP (j + 0.5, i + 0.5) convention)."""
    pose = small.scene["query/0000.png"].pose
    cam = _distorted_camera() if distorted else small.scene["query/0000.png"].camera
    _, _, hits = small.render_view(cam, pose, return_hits=True)
    rng = np.random.default_rng(0)
    ii, jj = np.nonzero(hits.index >= 0)
    sel = rng.choice(len(ii), 2000, replace=False)
    ii, jj = ii[sel], jj[sel]
    pix = torch.stack([torch.from_numpy(jj + 0.5), torch.from_numpy(ii + 0.5)], -1).double()
    X = backproject(pix, torch.from_numpy(hits.depth[ii, jj]), cam, pose)
    origins = torch.from_numpy(np.stack([small.surfaces[k].origin for k in hits.index[ii, jj]]))
    normals = surface_normals(small.surfaces)[torch.from_numpy(hits.index[ii, jj])]
    off_plane = ((X - origins) * normals).sum(-1).abs()
    assert off_plane.max() < 1e-8
    reproj = cam.project(pose.transform(X))
    assert (reproj - pix).abs().max() < 1e-6


@pytest.mark.parametrize("distorted", [False, True])
def test_surface_points_reproject_to_rendered_depth(small, distorted):
    """3D points sampled on the surfaces, projected with the GT pose, land where the rendered
    depth equals theirs (visible) or is smaller (occluded)."""
    pose = small.scene["map/0002.png"].pose
    cam = _distorted_camera() if distorted else small.scene["map/0002.png"].camera
    _, depth, hits = small.render_view(cam, pose, return_hits=True)
    pts, sidx = sample_surface_points(small.surfaces, 40000, np.random.default_rng(1), margin=0.05)
    p_cam = pose.transform(pts)
    x, inside = cam.project_with_valid(p_cam)
    x, z, sidx = x[inside], p_cam[inside, 2], sidx[inside]
    d_interp, ok = interpolate_depth(hits.depth, x)
    # the 4 pixel neighbours must see this point's own surface to call it visible
    gx = (x[:, 0] - 0.5).floor().long().clamp(0, cam.width - 2)
    gy = (x[:, 1] - 0.5).floor().long().clamp(0, cam.height - 2)
    idx = torch.from_numpy(hits.index)
    same = torch.stack([idx[gy, gx], idx[gy, gx + 1], idx[gy + 1, gx], idx[gy + 1, gx + 1]], -1) == sidx[:, None]
    vis = ok & same.all(-1)
    assert vis.sum() > 500
    rel = ((d_interp[vis] - z[vis]) / z[vis]).abs()
    assert rel.max() < (2e-4 if distorted else 1e-9)
    # the rendered depth never lies beyond a surface point (occluded points are behind)
    assert (d_interp[ok] <= z[ok] * (1 + (2e-4 if distorted else 1e-9))).all()
    # float32 map agrees with the float64 hits
    assert np.allclose(depth, hits.depth, rtol=1e-6, atol=0)


def test_depth_consistency_between_views(small):
    a, b = small.scene["map/0001.png"], small.scene["map/0002.png"]
    Xa, valid = depth_to_points(a.depth, a.camera, a.pose)
    Xa = Xa[valid]
    p_b = b.pose.transform(Xa)
    x, inside = b.camera.project_with_valid(p_b)
    d_b, ok = interpolate_depth(b.depth, x[inside])
    z_b = p_b[inside, 2]
    d_b, z_b = d_b[ok], z_b[ok]
    rel = (d_b - z_b) / z_b
    visible = rel.abs() < 1e-4
    assert visible.float().mean() > 0.5  # heavy overlap, mostly unoccluded
    assert visible.sum() > 10000  # of 76800 pixels
    # B never sees *beyond* a surface point that A sees (up to float32 depth storage)
    assert (rel < 1e-4).all()


def test_texture_richness(small):
    """SIFT finds plenty of keypoints on a 640x480 render."""
    import kornia

    cam = camera_from_fov("PINHOLE", 640, 480, 65.0)
    img, _ = small.render_view(cam, small.scene["map/0001.png"].pose)
    gray = torch.from_numpy(img.astype(np.float32).mean(-1) / 255.0)[None, None]
    with torch.no_grad():
        _, resp, _ = kornia.feature.SIFTFeature(num_features=2000)(gray)
    assert int((resp > 0.01).sum()) > 1000


def test_write_and_load(small, tmp_path):
    import pycolmap

    from hloc_bpnp.io.hloc_text import read_query_list

    root = small.write(tmp_path / "scene")
    assert (root / "images" / "map" / "0000.png").is_file()
    assert (root / "depth" / "query" / "0001.npy").is_file()
    assert (root / "map_list.txt").read_text().split() == small.map_names
    queries = read_query_list(root / "query_list_with_intrinsics.txt")
    assert list(queries) == small.query_names
    assert torch.allclose(queries["query/0000.png"].params, small.scene["query/0000.png"].camera.params)

    rec = pycolmap.Reconstruction(str(root / "sfm_gt"))
    assert rec.num_images() == 7
    for img in rec.images.values():
        gt = small.scene[img.name]
        dR, dt = pose_error(Pose.from_pycolmap(img.cam_from_world), gt.pose)
        assert float(dR) < 1e-6 and float(dt) < 1e-9
        assert np.allclose(rec.cameras[img.camera_id].params, gt.camera.params.numpy())

    loaded = load_synthetic_scene(root)
    assert loaded.map_names == small.map_names and loaded.query_names == small.query_names
    assert loaded.seed == 0 and loaded.preset == "small"
    assert loaded.scene.image_dir == root / "images"
    for im in small.scene:
        lim = loaded.scene[im.name]
        assert np.array_equal(loaded.images[im.name], small.images[im.name])
        assert np.array_equal(lim.depth, im.depth)
        assert torch.equal(lim.pose.R, im.pose.R) and torch.equal(lim.pose.t, im.pose.t)
        assert torch.equal(lim.camera.params, im.camera.params)
    assert [s.to_dict() for s in loaded.surfaces] == [s.to_dict() for s in small.surfaces]
    k = min(small.textures.sizes, key=small.textures.sizes.get)
    assert np.array_equal(loaded.textures.texture(k), small.textures.texture(k))
    with pytest.raises(FileExistsError):
        small.write(root)


def test_cli_synth(tmp_path):
    from hloc_bpnp.cli import main

    out = tmp_path / "synth"
    args = ["synth", "--output", str(out), "--preset", "small", "--seed", "1",
            "--num-map", "3", "--num-query", "1", "--width", "160", "--height", "120"]
    assert main(args) == 0
    loaded = load_synthetic_scene(out)
    assert len(loaded.map_names) == 3 and len(loaded.query_names) == 1
    assert loaded.images["map/0000.png"].shape == (120, 160, 3)
    assert loaded.preset == "small" and loaded.seed == 1
    assert main(args) == 2  # refuses to overwrite
    assert main(["synth", "--output", str(out), "--preset", "no_such_preset"]) == 2


def test_look_at_and_camera():
    eye, target = np.array([1.0, 2.0, 1.5]), np.array([5.0, 3.0, 2.0])
    pose = look_at(eye, target)
    cam = camera_from_fov("SIMPLE_RADIAL", 200, 100, 60.0, [0.01])
    assert torch.allclose(cam.project(pose.transform(torch.from_numpy(target[None])))[0], cam.c, atol=1e-9)
    above = cam.project(pose.transform(torch.from_numpy(target[None] + [0, 0, 0.5])))[0]
    assert above[1] < cam.c[1]  # world up is image up
    assert torch.allclose(pose.center, torch.from_numpy(eye))
    assert float(cam.f[0]) == pytest.approx(100 / np.tan(np.deg2rad(30)))
    with pytest.raises(ValueError, match="distortion"):
        camera_from_fov("OPENCV", 200, 100, 60.0, [0.1])
    with pytest.raises(ValueError, match="parallel"):
        look_at([0, 0, 0], [0, 0, 1])


def test_validation():
    with pytest.raises(ValueError, match="orthonormal"):
        Surface([0, 0, 0], [1, 0, 0], [1, 1, 0], (1, 1), 0)
    with pytest.raises(KeyError, match="no_such_key"):
        generate_scene({"no_such_key": 1})
    with pytest.raises(FileNotFoundError, match="small"):
        generate_scene("no_such_preset")
    with pytest.raises(ValueError, match="does not fit"):
        generate_scene(merge(TINY, {"path": {"radius": [20.0, 2.0]}}))
    cam = Camera("PINHOLE", 4, 3, torch.tensor([2.0, 2.0, 2.0, 1.5], dtype=torch.float64))
    with pytest.raises(ValueError, match="does not match"):
        depth_to_points(np.ones((4, 3)), cam, Pose.identity())
    pc = pixel_centers(4, 3)
    assert pc.shape == (3, 4, 2) and pc[0, 0].tolist() == [0.5, 0.5] and pc[2, 3].tolist() == [3.5, 2.5]


def test_texture_sampling():
    from hloc_bpnp.synthetic.textures import build_mipmaps, make_texture, sample_trilinear

    tex = make_texture(np.random.default_rng(0), 64)
    assert tex.shape == (64, 64, 3) and tex.dtype == np.uint8 and tex.std() > 20
    mips = build_mipmaps(tex)
    assert [m.shape[0] for m in mips] == [64, 32, 16, 8, 4, 2, 1]
    i, j = np.array([0, 10, 63]), np.array([5, 40, 63])
    s, t = (j + 0.5) / 64, (i + 0.5) / 64
    assert np.allclose(sample_trilinear(mips, s, t, np.zeros(3)), tex[i, j])  # texel centres
    assert np.allclose(sample_trilinear(mips, s, t, np.full(3, 10.0)), tex.reshape(-1, 3).mean(0), atol=1e-3)
    half = sample_trilinear(mips, s, t, np.full(3, 0.5))
    lv1 = sample_trilinear(mips, s, t, np.ones(3))
    assert np.allclose(half, 0.5 * (tex[i, j] + lv1), atol=1e-4)
