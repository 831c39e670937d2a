"""COLMAP model helpers and the NVM reader (format-faithful fixtures written here)."""
import numpy as np
import pytest
import torch

from hloc_bpnp.geometry import Camera
from hloc_bpnp.io.colmap import (
    covisibility, get_image, points_and_observations, read_model, scene_from_model, write_model,
)
from hloc_bpnp.io.nvm import (
    nvm_camera_to_colmap, nvm_radial_to_colmap, read_nvm, reconstruction_from_nvm, scene_from_nvm,
)

NVM = """NVM_V3

3
a.png\t500 1 0 0 0 0 0 0 -0.1 0
./sub/b.png 520 0.9998000099990001 0.019998000199980003 0 0 1 0 0 0.05 0
c.png 510 0.7071067811865476 0 0.7071067811865476 0 0 1 2 0 0

2
0 0 5 255 0 0 2 0 0 1.5 2.5 1 3 -4 5
1 1 6 0 255 0 3 0 1 10 11 1 0 -1 -2 2 7 3 3



0
#the last part of NVM file points to the PLY files
0
"""


@pytest.fixture
def nvm_file(tmp_path):
    p = tmp_path / "model.nvm"
    p.write_text(NVM)
    return p


def test_read_nvm_values(nvm_file):
    m = read_nvm(nvm_file)
    assert m.names == ["a.png", "sub/b.png", "c.png"]
    assert m.cameras[0].focal == 500 and m.cameras[0].radial == -0.1
    np.testing.assert_array_equal(m.xyz, [[0, 0, 5], [1, 1, 6]])
    np.testing.assert_array_equal(m.obs_point, [0, 0, 1, 1, 1])
    np.testing.assert_array_equal(m.obs_image, [0, 1, 0, 1, 2])
    np.testing.assert_array_equal(m.obs_feature, [0, 3, 1, 0, 7])
    np.testing.assert_array_equal(m.obs_xy[2], [10, 11])
    # c.png: 90 degrees about y (world-to-camera), centre (0, 1, 2)
    pose = m.cameras[2].pose
    R = torch.tensor([[0.0, 0, 1], [0, 1, 0], [-1, 0, 0]], dtype=torch.float64)
    assert torch.allclose(pose.R, R, atol=1e-15)
    assert torch.allclose(pose.center, torch.tensor([0.0, 1, 2], dtype=torch.float64), atol=1e-15)
    assert torch.allclose(pose.t, -(R @ torch.tensor([0.0, 1, 2], dtype=torch.float64)), atol=1e-15)


@pytest.mark.parametrize(
    "old, new, msg",
    [
        ("c.png 510 0.7071067811865476", "c.png 510 abc", ":6: camera 'c.png': value #2 'abc' is not a number"),
        ("a.png\t500 1 0 0 0 0 0 0 -0.1 0", "a.png 500 1 0 0 0 0 0 0 -0.1", ":4: camera line needs 11 fields"),
        ("a.png\t500 1 0 0 0", "a.png\t500 0 0 0 0", ":4: zero quaternion"),
        ("1 3 -4 5\n", "9 3 -4 5\n", ":9: image index 9 out of range"),
        ("NVM_V3", "NVM_V2", ":1: expected header 'NVM_V3'"),
        ("1 1 6 0 255 0 3", "1 1 6 0 255 0 4", ":10: point with 4 measurements needs 23 fields, got 19"),
        # issue 12.7: out-of-range values used to escape as OverflowError / MemoryError tracebacks
        ("1 1 6 0 255 0 3", "1 1 6 0 300 0 3", ":10: color must be <= 255, got 300"),
        ("1 1 6 0 255 0 3", "1 1 6 0 255 -1 3", ":10: color must be >= 0, got -1"),
        ("1 1 6 0 255 0 3 0 1", "1 1 6 0 255 0 3 0 1e30", ":10: feature index must be <= 9223372036854775807"),
        ("\n2\n0 0 5", "\n1e30\n0 0 5", ":8: number of points must be <= 9223372036854775807"),
        ("\n2\n0 0 5", "\n1000000000\n0 0 5", ":14: point line needs 'x y z r g b n ...', got 1 fields"),
    ],
)
def test_read_nvm_errors(tmp_path, old, new, msg):
    assert old in NVM
    p = tmp_path / "bad.nvm"
    p.write_text(NVM.replace(old, new, 1))
    with pytest.raises(ValueError) as e:
        read_nvm(p)
    assert f"{p}{msg}" in str(e.value)


def test_read_nvm_truncated_and_missing(tmp_path):
    p = tmp_path / "t.nvm"
    p.write_text("NVM_V3\n3\na.png 500 1 0 0 0 0 0 0 0 0\n")
    with pytest.raises(ValueError, match="unexpected end of file while reading camera 2 of 3"):
        read_nvm(p)
    with pytest.raises(FileNotFoundError, match="nope.nvm"):
        read_nvm(tmp_path / "nope.nvm")


def test_nvm_radial_conversion_reprojects_within_a_fraction_of_a_pixel():
    # measured pixel m (focal units) -> NVM ideal u = m (1 + k r_m^2); COLMAP must map u back to m
    f, w, h = 1600.0, 1920, 1080
    for k_nvm in (-0.05, 0.02, 0.1):
        from hloc_bpnp.io.nvm import NVMCamera

        cam = nvm_camera_to_colmap(NVMCamera("x", f, np.array([1.0, 0, 0, 0]), np.zeros(3), k_nvm), w, h)
        r_max = 0.5 * np.hypot(w, h) / f
        m = torch.linspace(0, r_max, 200, dtype=torch.float64)
        m2 = torch.stack([m, torch.zeros_like(m)], -1)
        u = m2 * (1 + k_nvm * m2.pow(2).sum(-1, keepdim=True))
        proj = cam.project(torch.cat([u, torch.ones_like(u[:, :1])], -1))
        err_fit = (proj - (m2 * f + cam.c)).norm(dim=-1).max().item()
        first = Camera("SIMPLE_RADIAL", w, h, torch.tensor([f, w / 2, h / 2, -k_nvm], dtype=torch.float64))
        err_first = (first.project(torch.cat([u, torch.ones_like(u[:, :1])], -1)) - (m2 * f + cam.c)).norm(dim=-1).max().item()
        assert err_fit < err_first  # the fit beats the first-order -k
        assert err_fit < 0.35 * err_first + 1e-9
    assert nvm_radial_to_colmap(0.0, 1.0) == 0.0


def test_scene_from_nvm_sizes_and_intrinsics(nvm_file, tmp_path):
    from PIL import Image

    Image.new("RGB", (64, 48)).save(tmp_path / "a.png")
    s = scene_from_nvm(nvm_file, tmp_path, default_size=(100, 80), radial="first_order")
    assert (s["a.png"].camera.width, s["a.png"].camera.height) == (64, 48)
    assert s["a.png"].camera.params.tolist() == [500, 32, 24, 0.1]
    assert (s["c.png"].camera.width, s["c.png"].camera.height) == (100, 80)
    with pytest.raises(ValueError, match=r"model\.nvm:5: size of image 'sub/b.png' unknown"):
        scene_from_nvm(nvm_file, tmp_path)
    intr = {n: Camera("SIMPLE_RADIAL", 10, 10, torch.tensor([1.0, 5, 5, 0.01], dtype=torch.float64))
            for n in ["a.png", "sub/b.png", "c.png"]}
    s = scene_from_nvm(nvm_file, intrinsics=intr)
    assert s["c.png"].camera is intr["c.png"]
    with pytest.raises(ValueError, match="missing from the intrinsics"):
        scene_from_nvm(nvm_file, intrinsics={"a.png": intr["a.png"]})


def test_nvm_to_colmap_model_roundtrip(nvm_file, tmp_path):
    m = read_nvm(nvm_file)
    scene = scene_from_nvm(m, default_size=(640, 480))
    rec = reconstruction_from_nvm(m, scene)
    for text in (False, True):
        out = write_model(rec, tmp_path / f"model_{text}", text=text)
        rec2 = read_model(out)
        assert rec2.num_points3D() == 2
        s2 = scene_from_model(out)
        for im in scene:
            assert torch.allclose(s2[im.name].pose.R, im.pose.R, atol=1e-12)
            assert torch.allclose(s2[im.name].pose.t, im.pose.t, atol=1e-12)
            assert torch.allclose(s2[im.name].camera.params, im.camera.params, atol=1e-12)
        pts = points_and_observations(rec2)
        np.testing.assert_array_equal(pts.track_lengths, [2, 3])
        xy, xyz, ids = pts.correspondences("sub/b.png")
        # b's features 0 and 3 observe points 1 and 0: keypoints = measurement + (W/2, H/2)
        np.testing.assert_allclose(xy, [[319, 238], [316, 245]])
        np.testing.assert_allclose(xyz, [[1, 1, 6], [0, 0, 5]])
        assert np.isnan(pts.xyz_of(np.array([-1, 99]))).all()
    cov = covisibility(rec)
    assert cov["a.png"] == {"sub/b.png": 2, "c.png": 1}
    assert get_image(rec, "c.png").name == "c.png"
    with pytest.raises(KeyError, match="close matches"):
        get_image(rec, "c.pn")


def test_read_model_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="COLMAP model folder not found"):
        read_model(tmp_path / "none")
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "cameras.txt").write_text("")
    with pytest.raises(FileNotFoundError, match=r"text lacks \['images.txt', 'points3D.txt'\]"):
        read_model(tmp_path / "m")
