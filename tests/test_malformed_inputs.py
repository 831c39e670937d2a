"""Malformed-input sweep (issue 12): each case must give an error naming the file (and line or
image), never a bare traceback from inside numpy / h5py / pycolmap."""
from __future__ import annotations

import h5py
import numpy as np
import pytest
from PIL import Image

from hloc_bpnp.io.h5store import FeatureStore, MatchStore
from hloc_bpnp.io.image import read_image


def test_truncated_feature_file(tmp_path):
    p = tmp_path / "feats.h5"
    with FeatureStore.writer(p) as fs:
        fs.put("a.jpg", {"keypoints": np.zeros((5, 2), np.float32), "descriptors": np.zeros((5, 8), np.float32),
                         "scores": np.zeros(5, np.float32), "image_size": np.array([10, 10])})
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 3])
    with pytest.raises((OSError, ValueError), match="feats.h5"):
        FeatureStore(p).get("a.jpg")


def test_wrong_shape_features(tmp_path):
    p = tmp_path / "feats.h5"
    with h5py.File(p, "w") as f:
        g = f.create_group("a.jpg")
        g["keypoints"] = np.zeros((5, 3), np.float32)
        g["descriptors"] = np.zeros((8, 4), np.float32)
    with pytest.raises((ValueError, KeyError), match=r"feats.h5.*a.jpg|a.jpg.*feats.h5"):
        FeatureStore(p).get("a.jpg")


def test_wrong_shape_matches(tmp_path):
    p = tmp_path / "matches.h5"
    with h5py.File(p, "w") as f:
        g = f.create_group("a.jpg").create_group("b.jpg")
        g["matches0"] = np.zeros((5, 2), np.int32)
    with pytest.raises((ValueError, KeyError), match=r"matches.h5"):
        MatchStore(p).get("a.jpg", "b.jpg")


# Query lists (unknown model, non-numeric or missing parameters): file:line errors are tested in
# tests/test_io_hloc_text.py::test_query_list_errors_name_file_and_line.


def test_colmap_model_missing_a_file(tmp_path):
    from hloc_bpnp.io.colmap import read_model

    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "cameras.txt").write_text("1 PINHOLE 640 480 500 500 320 240\n")
    (tmp_path / "model" / "points3D.txt").write_text("")
    with pytest.raises((FileNotFoundError, ValueError), match="images"):
        read_model(tmp_path / "model")


def test_empty_image_folder(tmp_path, caplog):
    from hloc_bpnp.cli import main

    (tmp_path / "imgs").mkdir()
    assert main(["map", "--images", str(tmp_path / "imgs"), "--output", str(tmp_path / "map")]) == 2
    assert "imgs" in caplog.text


@pytest.mark.parametrize("kind", ["gray", "rgba", "16bit", "palette"])
def test_png_variants_read_as_rgb_uint8(tmp_path, kind):
    p = tmp_path / f"{kind}.png"
    a = (np.arange(40 * 30) % 251).reshape(30, 40)
    if kind == "gray":
        Image.fromarray(a.astype(np.uint8), "L").save(p)
    elif kind == "rgba":
        Image.fromarray(np.dstack([a, a, a, np.full_like(a, 128)]).astype(np.uint8), "RGBA").save(p)
    elif kind == "16bit":
        Image.fromarray((a * 250).astype(np.uint16)).save(p)
    else:
        Image.fromarray(a.astype(np.uint8), "L").convert("P").save(p)
    im = read_image(p)
    assert im.shape == (30, 40, 3) and im.dtype == np.uint8
    if kind == "16bit":  # scaled to 8 bits, not clipped
        assert im.max() > 200 and len(np.unique(im)) > 100


def test_exif_rotated_jpeg(tmp_path):
    p = tmp_path / "rot.jpg"
    img = Image.fromarray(np.zeros((20, 60, 3), np.uint8))
    exif = img.getexif()
    exif[0x0112] = 6  # rotate 90 deg clockwise to display
    img.save(p, exif=exif)
    assert read_image(p).shape[:2] == (60, 20)


def test_unreadable_image_names_the_file(tmp_path):
    p = tmp_path / "broken.jpg"
    p.write_bytes(b"not an image")
    with pytest.raises((OSError, ValueError), match="broken.jpg"):
        read_image(p)


def test_tiny_image_is_a_clear_error_or_empty(tmp_path):
    from hloc_bpnp.features import build_extractor

    ext = build_extractor("sift", max_keypoints=64)
    try:
        f = ext.extract(np.zeros((1, 1, 3), np.uint8))
    except ValueError as e:
        assert "image" in str(e)
    else:
        assert f["keypoints"].shape == (0, 2)


def test_huge_image_is_refused_naming_the_file(tmp_path):
    p = tmp_path / "huge.png"
    Image.new("1", (20000, 20000)).save(p)  # 400 Mpx, a few kB on disk
    with pytest.raises(ValueError, match=r"huge.png.*Downscale"):
        read_image(p)


def test_map_folder_from_an_older_version(tmp_path):
    import json
    import shutil

    from hloc_bpnp.mapping import Map

    d = tmp_path / "map"
    (d / "sfm").mkdir(parents=True)
    for f in ("features.h5", "global_index.faiss", "global_model.npz"):
        (d / f).write_bytes(b"")
    (d / "map.json").write_text(json.dumps({"format_version": 0}))
    with pytest.raises(ValueError, match=r"map.json.*format 0 unsupported"):
        Map.load(d)
    shutil.rmtree(tmp_path / "map")
    with pytest.raises(FileNotFoundError):
        Map.load(tmp_path / "map")



def test_killed_map_building_resumes_to_the_same_map(tmp_path, monkeypatch, caplog):
    """Kill `hloc-bpnp map` mid-extraction, rerun: it extracts only the rest and yields the same map."""
    from hloc_bpnp.cli import main
    from hloc_bpnp.features.base import Extractor
    from hloc_bpnp.mapping import Map

    scene = tmp_path / "scene"
    assert main(["synth", "--output", str(scene), "--preset", "small"]) == 0
    base = ["map", "--images", str(scene / "images"), "--reference", str(scene / "sfm_map")]
    calls = {"n": 0}
    orig = Extractor.extract

    def dying(self, image):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt  # the process is killed during the third image
        return orig(self, image)

    monkeypatch.setattr(Extractor, "extract", dying)
    with pytest.raises(KeyboardInterrupt):
        main(base + ["--output", str(tmp_path / "map"), "--workdir", str(tmp_path / "work")])
    assert not (tmp_path / "map").exists()
    assert len(list((tmp_path / "work" / "features").rglob("*.npz"))) == 2  # two images done, nothing partial
    calls["n"] = -100  # no more deaths
    assert main(base + ["--output", str(tmp_path / "map"), "--workdir", str(tmp_path / "work")]) == 0
    n_maps = len((scene / "map_list.txt").read_text().split())
    assert calls["n"] == -100 + n_maps - 2  # only the missing images were extracted
    monkeypatch.setattr(Extractor, "extract", orig)
    assert main(base + ["--output", str(tmp_path / "ref")]) == 0  # uninterrupted, no cache
    a, b = Map.load(tmp_path / "map"), Map.load(tmp_path / "ref")
    assert a.image_names == b.image_names and len(a.points3D) == len(b.points3D) > 0
    assert np.allclose(np.sort(a.points3D, axis=0), np.sort(b.points3D, axis=0), atol=1e-6)
    # a cache made with another extractor config is refused, naming the folder
    assert main(base + ["--output", str(tmp_path / "map2"), "--workdir", str(tmp_path / "work"),
                        "--features", "sift_full"]) == 2
    assert "another extractor config" in caplog.text and "work" in caplog.text
