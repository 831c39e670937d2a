"""Dataset readers: Strecha / Middlebury on ../shared/data, Cambridge / 7-Scenes / Aachen on fixtures."""
import shutil

import numpy as np
import pytest
import torch

from hloc_bpnp.geometry import Camera, is_rotation, so3_exp
from hloc_bpnp.io.colmap import scene_from_model
from hloc_bpnp.io.datasets import (
    read_7scenes, read_aachen, read_cambridge, read_middlebury, read_strecha, read_strecha_camera,
)
from hloc_bpnp.io.hloc_text import write_query_list


def _assert_model_reloads(scene, path):
    scene.write_colmap(path)
    back = scene_from_model(path)
    assert back.names == sorted(scene.names)
    for im in scene:
        b = back[im.name]
        assert torch.allclose(b.pose.R, im.pose.R, atol=1e-12, rtol=0)
        assert torch.allclose(b.pose.t, im.pose.t, atol=1e-12, rtol=0)
        assert b.camera.model == im.camera.model and torch.allclose(b.camera.params, im.camera.params)


@pytest.mark.parametrize("scene_name, n", [("strecha_fountain_P11", 11), ("strecha_herzjesu_P8", 8)])
def test_strecha_real(shared_data, tmp_path, scene_name, n):
    scene = read_strecha(shared_data / scene_name)
    assert len(scene) == n and scene.image_dir == shared_data / scene_name / "images"
    for im in scene:
        assert bool(is_rotation(im.pose.R, 1e-12))
        # P = K [R | t] reproduces the file's K, S^T and -S^T C
        rows = [l.split() for l in (shared_data / scene_name / "gt_dense_cameras" / f"{im.name}.camera").read_text().splitlines() if l.strip()]
        v = [[float(x) for x in r] for r in rows]
        K, S, C = np.array(v[0:3]), np.array(v[4:7]), np.array(v[7])
        P_file = K @ np.hstack([S.T, (-S.T @ C)[:, None]])
        P = im.camera.K.numpy() @ np.hstack([im.pose.R.numpy(), im.pose.t.numpy()[:, None]])
        np.testing.assert_allclose(P, P_file, rtol=0, atol=1e-5 * np.abs(P_file).max())
        np.testing.assert_allclose(im.pose.center.numpy(), C, atol=1e-12)
        assert (im.camera.width, im.camera.height) == (3072, 2048)
    _assert_model_reloads(scene, tmp_path / "ref")


def test_middlebury_real(shared_data, tmp_path):
    d = shared_data / "middlebury_templeRing_partial"
    scene = read_middlebury(d)
    assert scene.names == [f"templeR{i:04d}.png" for i in range(13, 32)]
    assert len(read_middlebury(d, keep_missing=True)) == 47
    line = next(l for l in (d / "templeR_par.txt").read_text().splitlines() if l.startswith("templeR0013.png"))
    v = np.array([float(x) for x in line.split()[1:]])
    K, R, t = v[:9].reshape(3, 3), v[9:18].reshape(3, 3), v[18:]
    im = scene["templeR0013.png"]
    assert im.camera.params.tolist() == [K[0, 0], K[1, 1], K[0, 2] + 0.5, K[1, 2] + 0.5]
    assert (im.camera.width, im.camera.height) == (640, 480)
    np.testing.assert_allclose(im.pose.R.numpy(), R, atol=1e-6)
    np.testing.assert_array_equal(im.pose.t.numpy(), t)
    assert read_middlebury(d, pixel_offset=0)["templeR0013.png"].camera.params[2] == K[0, 2]
    for im in scene:
        assert bool(is_rotation(im.pose.R, 1e-12))
    _assert_model_reloads(scene, tmp_path / "ref")


def test_middlebury_bad_rotation_and_count(shared_data, tmp_path):
    d = tmp_path / "mb"
    shutil.copytree(shared_data / "middlebury_templeRing_partial", d, ignore=shutil.ignore_patterns("*.png"))
    lines = (d / "templeR_par.txt").read_text().splitlines()
    f = lines[3].split()
    f[10] = "0.5"  # r11 broken
    (d / "templeR_par.txt").write_text("\n".join(lines[:3] + [" ".join(f)] + lines[4:]) + "\n")
    with pytest.raises(ValueError, match=r"templeR_par\.txt:4: rotation of 'templeR0003.png' is not a rotation"):
        read_middlebury(d, keep_missing=True)
    (d / "templeR_par.txt").write_text("\n".join(lines[:5]) + "\n")
    with pytest.raises(ValueError, match=r"templeR_par\.txt:1: header announces 47 images but the file has 4"):
        read_middlebury(d, keep_missing=True)


STRECHA_CAM = """2759.48 0 1520.69
0 2764.16 1006.81
0 0 1
0 0 0
0.450927 -0.0945642 -0.887537
-0.892535 -0.0401974 -0.449183
0.00679989 0.994707 -0.102528
-7.28137 -7.57667 0.204446
3072 2048
"""


def test_strecha_camera_errors(tmp_path):
    p = tmp_path / "0000.jpg.camera"
    p.write_text(STRECHA_CAM)
    cam, pose = read_strecha_camera(p)
    assert cam.params.tolist() == [2759.48, 2764.16, 1520.69, 1006.81]
    p.write_text(STRECHA_CAM.replace("0.450927 -0.0945642", "0.460927 -0.0945642"))
    with pytest.raises(ValueError, match=r"0000\.jpg\.camera:5: rotation S is not a rotation"):
        read_strecha_camera(p)
    p.write_text(STRECHA_CAM.replace("-7.28137 -7.57667 0.204446", "-7.28137 x 0.204446"))
    with pytest.raises(ValueError, match=r"0000\.jpg\.camera:8: row 8: value #2 'x' is not a number"):
        read_strecha_camera(p)
    p.write_text(STRECHA_CAM.replace("3072 2048\n", ""))
    with pytest.raises(ValueError, match=r"expected 9 rows"):
        read_strecha_camera(p)
    with pytest.raises(FileNotFoundError, match="none.camera"):
        read_strecha_camera(tmp_path / "none.camera")


# ---------------------------------------------------------------- Cambridge fixture
CAMBRIDGE_NVM = """NVM_V3

3
seq1/frame00001.jpg 1670.5 0.9238795325112867 0 0.3826834323650898 0 10 -2 3.5 -0.02 0
seq1/frame00002.jpg 1680.25 1 0 0 0 11 -2 3.5 0.01 0
seq2/frame00001.jpg 1675 0.7071067811865476 0.7071067811865476 0 0 0 0 0 0 0

0
"""


def _cambridge(tmp_path):
    d = tmp_path / "KingsCollege"
    d.mkdir()
    (d / "reconstruction.nvm").write_text(CAMBRIDGE_NVM)
    hdr = "Visual Landmark Dataset V1\nImageFile, Camera Position [X Y Z W P Q R]\n\n"
    (d / "dataset_train.txt").write_text(hdr + "seq1/frame00001.png 10 -2 3.5 0.9238795325112867 0 0.3826834323650898 0\n"
                                         "seq1/frame00002.png 11 -2 3.5 1 0 0 0\n")
    (d / "dataset_test.txt").write_text(hdr + "seq2/frame00001.png 0 0 0 0.7071067811865476 0.7071067811865476 0 0\n")
    return d


def test_cambridge_fixture(tmp_path):
    d = _cambridge(tmp_path)
    scene = read_cambridge(d, image_size=(1920, 1080), radial="first_order")
    assert scene.names == ["seq1/frame00001.png", "seq1/frame00002.png", "seq2/frame00001.png"]
    assert scene.metadata["split"]["seq2/frame00001.png"] == "test"
    im = scene["seq1/frame00001.png"]
    # 45 degrees about y, world-to-camera; centre (10, -2, 3.5)
    c, s = np.cos(np.pi / 4), np.sin(np.pi / 4)
    R = np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]])
    np.testing.assert_allclose(im.pose.R.numpy(), R, atol=1e-15)
    np.testing.assert_allclose(im.pose.center.numpy(), [10, -2, 3.5], atol=1e-13)
    assert im.camera.model == "SIMPLE_RADIAL"
    assert im.camera.params.tolist() == [1670.5, 960.0, 540.0, 0.02]
    assert len(read_cambridge(d, split="test", image_size=(1920, 1080))) == 1
    with pytest.raises(FileNotFoundError, match="image_size"):
        read_cambridge(d)
    intr = {n: Camera("PINHOLE", 4, 4, torch.tensor([1.0, 1, 2, 2], dtype=torch.float64)) for n in scene.names}
    q = write_query_list(tmp_path / "q.txt", intr)
    assert read_cambridge(d, intrinsics=q)["seq2/frame00001.png"].camera.model == "PINHOLE"
    _assert_model_reloads(scene, tmp_path / "ref")
    (d / "dataset_test.txt").write_text("h\nh\n\nseq2/frame00001.png 0 0 0 0 0 0 0\n")
    with pytest.raises(ValueError, match=r"dataset_test\.txt:4: .*zero quaternion"):
        read_cambridge(d, split="test", image_size=(1920, 1080))


# ---------------------------------------------------------------- 7-Scenes fixture
def _write_pose(path, T):
    path.write_text("\n".join(" ".join(f"{x:.9e}" for x in row) for row in T) + "\n")


def test_7scenes_fixture(tmp_path):
    from PIL import Image

    d = tmp_path / "chess"
    g = torch.Generator().manual_seed(1)
    truth = {}
    for seq, split in [("seq-01", "train"), ("seq-03", "test")]:
        (d / seq).mkdir(parents=True)
        for i in range(2):
            name = f"frame-{i:06d}"
            Image.new("RGB", (640, 480)).save(d / seq / f"{name}.color.png")
            depth = np.full((480, 640), 1500, dtype=np.uint16)
            depth[0, 0] = 65535
            Image.fromarray(depth).save(d / seq / f"{name}.depth.png")
            R = so3_exp(torch.randn(3, generator=g, dtype=torch.float64))
            C = torch.randn(3, generator=g, dtype=torch.float64)
            T = np.eye(4)
            T[:3, :3], T[:3, 3] = R.T.numpy(), C.numpy()  # camera-to-world
            _write_pose(d / seq / f"{name}.pose.txt", T)
            truth[f"{seq}/{name}.color.png"] = (R, C)
    (d / "TrainSplit.txt").write_text("sequence1\n")
    (d / "TestSplit.txt").write_text("sequence3\n")
    test = read_7scenes(d, "test", load_depth=True)
    assert test.names == ["seq-03/frame-000000.color.png", "seq-03/frame-000001.color.png"]
    assert len(read_7scenes(d, "all")) == 4
    for im in test:
        R, C = truth[im.name]
        assert torch.allclose(im.pose.R, R, atol=1e-8)
        assert torch.allclose(im.pose.center, C, atol=1e-8)
        assert im.camera.params.tolist() == [525, 525, 320, 240]
        assert im.depth.dtype == np.float32 and im.depth[0, 0] == 0 and im.depth[1, 1] == pytest.approx(1.5)
    _assert_model_reloads(test, tmp_path / "ref")
    bad = d / "seq-03" / "frame-000001.pose.txt"
    T = np.loadtxt(bad)
    T[0, 0] *= 1.1
    _write_pose(bad, T)
    with pytest.raises(ValueError, match=r"frame-000001\.pose\.txt:1: camera-to-world rotation is not a rotation"):
        read_7scenes(d, "test")
    (d / "TestSplit.txt").write_text("sequence3\nseq4\n")
    with pytest.raises(ValueError, match=r"TestSplit\.txt:2: expected 'sequenceN'"):
        read_7scenes(d, "test")


def test_7scenes_jpeg_frames_in_number_order(tmp_path):
    """Copies recompressed to JPEG (``.color.jpg``) read like the original ``.color.png``,
    frames in frame-number order; one frame in both formats is an error naming it."""
    from PIL import Image

    from hloc_bpnp.io.datasets.seven_scenes import list_7scenes_frames

    seq = tmp_path / "seq-01"
    seq.mkdir()
    for i in (10, 2, 1):
        Image.new("RGB", (640, 480)).save(seq / f"frame-{i:06d}.color.jpg")
        _write_pose(seq / f"frame-{i:06d}.pose.txt", np.eye(4))
    (tmp_path / "TrainSplit.txt").write_text("sequence1\n")
    (tmp_path / "TestSplit.txt").write_text("sequence1\n")
    scene = read_7scenes(tmp_path, "test")
    assert scene.names == [f"seq-01/frame-{i:06d}.color.jpg" for i in (1, 2, 10)]
    Image.new("RGB", (640, 480)).save(seq / "frame-000002.color.png")
    with pytest.raises(ValueError, match="frame-000002 exists as both"):
        list_7scenes_frames(seq)


def test_7scenes_redkitchen_shared_copy(shared_data):
    """The shared RedKitchen copy (``.color.jpg``): 400 training and 200 test frames."""
    root = shared_data / "seven_scenes_redkitchen"
    train, test = read_7scenes(root, "train"), read_7scenes(root, "test")
    assert len(train) == 400 and len(test) == 200
    assert test.names[0] == "seq-02/frame-000400.color.jpg"
    assert test.names[-1] == "seq-02/frame-000599.color.jpg"


# ---------------------------------------------------------------- Aachen fixture
def test_aachen_v10_fixture(tmp_path):
    root = tmp_path / "aachen"
    (root / "3D-models").mkdir(parents=True)
    (root / "queries").mkdir()
    (root / "3D-models" / "aachen_cvpr2018_db.nvm").write_text(
        "NVM_V3\n\n2\ndb/1.jpg 1000 1 0 0 0 1 2 3 0 0\ndb/2.jpg 1100 0 1 0 0 -1 0 0 0 0\n\n0\n"
    )
    (root / "3D-models" / "database_intrinsics.txt").write_text(
        "db/1.jpg SIMPLE_RADIAL 1600 1063 1469.2 800 531.5 -0.0353\ndb/2.jpg SIMPLE_RADIAL 1063 1600 1400 531.5 800 0.01\n"
    )
    (root / "queries" / "day_time_queries_with_intrinsics.txt").write_text(
        "query/day/nexus4/IMG_1.jpg SIMPLE_RADIAL 1600 1200 1469.2 800 600 -0.0353\n"
    )
    (root / "queries" / "night_time_queries_with_intrinsics.txt").write_text(
        "query/night/nexus5x/IMG_2.jpg SIMPLE_RADIAL 1600 1200 1469.2 800 600 -0.0353\n"
        "query/night/nexus5x/IMG_3.jpg SIMPLE_RADIAL 1600 1200 1469.2 800 600 -0.0353\n"
    )
    data = read_aachen(root)
    assert data.database.names == ["db/1.jpg", "db/2.jpg"]
    assert data.database.image_dir == root / "images" / "images_upright"
    assert data.database["db/1.jpg"].camera.params.tolist() == [1469.2, 800, 531.5, -0.0353]
    im2 = data.database["db/2.jpg"]  # 180 degrees about x, centre (-1, 0, 0)
    np.testing.assert_allclose(im2.pose.R.numpy(), np.diag([1.0, -1, -1]), atol=1e-15)
    np.testing.assert_allclose(im2.pose.center.numpy(), [-1, 0, 0], atol=1e-15)
    assert len(data.queries["night"]) == 2 and len(data.all_queries()) == 3
    _assert_model_reloads(data.database, tmp_path / "ref")
    # v1.1: the database is a COLMAP model
    data.database.write_colmap(root / "3D-models" / "aachen_v_1_1", text=False)
    data11 = read_aachen(root, "v1.1")
    assert data11.database.names == data.database.names
    (root / "3D-models" / "database_intrinsics.txt").write_text("db/1.jpg SIMPLE_RADIAL 1600 1063 1469.2 800 531.5 -0.0353\n")
    with pytest.raises(ValueError, match=r"aachen_cvpr2018_db\.nvm:5: image 'db/2.jpg' missing from the intrinsics"):
        read_aachen(root)
