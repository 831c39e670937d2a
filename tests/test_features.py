import numpy as np
import pytest
import torch
import kornia.feature as KF
from PIL import Image

from hloc_bpnp.features import Extractor, available_extractors, build_extractor, register_extractor
from hloc_bpnp.io.image import read_image


def render_blobs(width, height, seed=0, spacing=40):
    """Gaussian blobs at known sub-pixel centres, COLMAP pixels (pixel centres at i + 0.5)."""
    rng = np.random.default_rng(seed)
    pts, sig = [], []
    for y in np.arange(30, height - 20, spacing):
        for x in np.arange(30, width - 20, spacing):
            pts.append([x + rng.uniform(-3, 3), y + rng.uniform(-3, 3)])
            sig.append(rng.uniform(2.0, 5.0))
    pts, sig = np.array(pts), np.array(sig)
    xx, yy = np.meshgrid(np.arange(width) + 0.5, np.arange(height) + 0.5)
    img = np.zeros((height, width))
    for (x, y), s in zip(pts, sig):
        img += np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * s * s))
    return (img * 200 + 20).astype(np.float32) / 255.0, pts


def nearest_errors(kpts, pts):
    d = np.linalg.norm(np.asarray(kpts)[None] - pts[:, None], axis=-1)
    return d.min(1)


@pytest.fixture(scope="module")
def blobs():
    return render_blobs(360, 280, seed=3)


@pytest.fixture(scope="module")
def small_blobs():
    return render_blobs(200, 160, seed=4)


@pytest.fixture(scope="module")
def sift():
    return build_extractor("sift", max_keypoints=1000)


@pytest.mark.parametrize("resize_max", [None, 180])
def test_sift_keypoints_subpixel_accurate_in_original_pixels(blobs, resize_max):
    img, pts = blobs
    ex = build_extractor("sift", max_keypoints=1000, resize_max=resize_max)
    f = ex.extract(torch.from_numpy(img))
    err = nearest_errors(f["keypoints"].numpy(), pts)
    found = err < 1.0
    # kornia's pyramid detector finds ~90 % of such blobs; every one it finds is accurate.
    assert found.mean() >= 0.8, f"only {found.sum()}/{len(pts)} blobs detected"
    assert err[found].max() < 0.12, f"max error {err[found].max():.3f} px"
    assert np.median(err[found]) < 0.05


def test_plain_kornia_sift_would_fail_accuracy(blobs):
    # Guards the choice of detector: kornia's default SIFTFeature is biased (PITFALLS.md).
    img, pts = blobs
    lafs, _, _ = KF.SIFTFeature(num_features=1000)(torch.from_numpy(img)[None, None])
    k = KF.get_laf_center(lafs)[0].detach() + 0.5
    err = nearest_errors(k.numpy(), pts)
    assert err[err < 3].max() > 0.3


def test_sift_output_contract(sift, small_blobs):
    img, _ = small_blobs
    f = sift.extract((img * 255).astype(np.uint8))
    n = f["keypoints"].shape[0]
    assert 0 < n <= 1000
    assert f["keypoints"].dtype == torch.float32 and f["keypoints"].shape == (n, 2)
    assert f["descriptors"].shape == (n, 128) and f["descriptors"].dtype == torch.float32
    assert f["scores"].shape == (n,) and f["scales"].shape == (n,) and f["oris"].shape == (n,)
    assert f["image_size"].tolist() == [200, 160]
    assert torch.allclose(f["descriptors"].norm(dim=1), torch.ones(n), atol=1e-4)
    assert (f["descriptors"] >= 0).all()  # RootSIFT
    k = f["keypoints"]
    assert (k[:, 0] > 0).all() and (k[:, 0] < 200).all() and (k[:, 1] > 0).all() and (k[:, 1] < 160).all()
    assert (f["scales"] > 0).all()
    assert all(t.device.type == "cpu" for t in f.values())


def test_sift_input_forms_agree(sift, small_blobs):
    img, _ = small_blobs
    u8 = (img * 255).astype(np.uint8)
    a = sift.extract(u8)
    b = sift.extract(np.repeat(u8[..., None], 3, axis=-1))
    c = sift.extract(torch.from_numpy(u8)[None, None])
    for other in (b, c):
        assert torch.allclose(a["keypoints"], other["keypoints"], atol=1e-3)
        assert torch.allclose(a["descriptors"], other["descriptors"], atol=1e-3)


def test_extract_path_and_batch(tmp_path, sift, small_blobs):
    img, _ = small_blobs
    u8 = (img * 255).astype(np.uint8)
    paths = []
    for i, arr in enumerate([u8, np.ascontiguousarray(u8[::-1]), u8[:120, :150]]):
        p = tmp_path / f"{i}.png"
        Image.fromarray(arr).save(p)
        paths.append(p)
    single = [sift.extract_path(p) for p in paths]
    batch = sift.extract_many([read_image(p) for p in paths])
    assert len(batch) == 3 and batch[2]["image_size"].tolist() == [150, 120]
    for s, b in zip(single, batch):
        assert torch.allclose(s["keypoints"], b["keypoints"], atol=1e-3)
        assert torch.allclose(s["descriptors"], b["descriptors"], atol=1e-3)


def test_resize_max_sets_network_size():
    ex = build_extractor("sift", resize_max=1600)
    assert ex.resized_size(3072, 2048) == (1600, 1067)
    assert ex.resized_size(640, 480) == (640, 480)  # never upscales by default
    ex32 = build_extractor({"model": "sift", "resize_max": 100, "resize_force": True})
    assert ex32.resized_size(50, 40) == (100, 80)


def test_config_errors():
    with pytest.raises(KeyError, match="max_keypointz"):
        build_extractor("sift", max_keypointz=10)
    with pytest.raises(FileNotFoundError, match="available presets"):
        build_extractor("no_such_preset")
    with pytest.raises(KeyError, match="Unknown extractor model"):
        build_extractor({"model": "nope"})
    with pytest.raises(ValueError, match="image 0"):
        build_extractor("sift").extract(np.zeros((5, 5, 4), dtype=np.uint8))


def test_registry_accepts_new_extractor():
    @register_extractor("test_grid")
    class Grid(Extractor):
        default_conf = {"step": 8}

        def _init(self, conf):
            self.step = conf["step"]

        def _extract(self, images):
            b, _, h, w = images.shape
            ys, xs = torch.meshgrid(torch.arange(0, h, self.step), torch.arange(0, w, self.step), indexing="ij")
            k = torch.stack([xs, ys], -1).reshape(-1, 2).float()
            return [{"keypoints": k, "descriptors": torch.ones(len(k), 4), "scores": torch.ones(len(k))}] * b

    assert "test_grid" in available_extractors()
    f = build_extractor({"model": "test_grid", "step": 16, "resize_max": 64}).extract(np.zeros((64, 128)))
    # kornia-frame pixel 0 of a 2x-downscaled image is COLMAP 1.0 in the original; pixel 16 -> 33.
    assert f["keypoints"][0].tolist() == [1.0, 1.0]
    assert f["keypoints"][1].tolist() == [33.0, 1.0]
    with pytest.raises(ValueError, match="already registered"):
        register_extractor("test_grid")(type("Other", (Extractor,), {}))


def test_keypoints_past_the_border_are_clamped_into_the_image():
    """A detector (or a refiner's offset) that puts a keypoint past the border: the output stays
    in COLMAP's image extent [0, W] x [0, H], which LightGlue requires."""
    @register_extractor("test_border")
    class Border(Extractor):
        def _init(self, conf):
            pass

        def _extract(self, images):
            b, _, h, w = images.shape
            k = torch.tensor([[-1.3, 5.0], [w + 0.7, h - 1.0], [3.0, h + 2.0], [10.0, 10.0]])
            return [{"keypoints": k, "descriptors": torch.ones(len(k), 4), "scores": torch.ones(len(k))}] * b

    f = build_extractor({"model": "test_border"}).extract(np.zeros((40, 60)))
    assert f["keypoints"].tolist() == [[0.0, 5.5], [60.0, 39.5], [3.5, 40.0], [10.5, 10.5]]


# ---------------------------------------------------------------- learned (random weights)
def _save(module, path):
    torch.save(module.state_dict(), path)
    return str(path)


def _keynet_with_positive_response():
    m = KF.KeyNetDetector(False).model
    with torch.no_grad():
        m.last_conv[0].bias.fill_(0.5)  # random KeyNet responds negatively: give it detections
    return m


@pytest.fixture(scope="module")
def image96():
    torch.manual_seed(0)
    return (torch.rand(96, 128, 3) * 255).to(torch.uint8).numpy()


def _check(f, n_max, dim, size):
    n = f["keypoints"].shape[0]
    assert 0 < n <= n_max
    assert f["keypoints"].dtype == torch.float32 and f["descriptors"].shape == (n, dim)
    assert f["scores"].shape == (n,) and f["image_size"].tolist() == list(size)
    k = f["keypoints"]
    assert (k >= 0).all() and (k[:, 0] <= size[0]).all() and (k[:, 1] <= size[1]).all()


def test_disk_from_local_weights(tmp_path, image96):
    w = _save(KF.DISK(), tmp_path / "disk.pth")
    f = build_extractor("disk", weights=w, max_keypoints=64, resize_max=None).extract(image96)
    _check(f, 64, 128, (128, 96))
    # integer kornia pixels -> COLMAP centres at i + 0.5
    assert torch.allclose(f["keypoints"] % 1, torch.full_like(f["keypoints"], 0.5))


def test_disk_checkpoint_layout_and_errors(tmp_path, image96, monkeypatch):
    p = tmp_path / "disk_ckpt.pth"
    torch.save({"extractor": KF.DISK().state_dict()}, p)  # the official checkpoint nesting
    assert build_extractor("disk", weights=str(p), max_keypoints=8).extract(image96)["keypoints"].shape[0] > 0
    from hloc_bpnp import weights as W

    monkeypatch.setattr(W, "package_dir", lambda name: None)  # weights null, package not installed
    with pytest.raises(FileNotFoundError, match=r"'disk'.*make setup-learned"):
        build_extractor("disk")
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        build_extractor("disk", weights=str(tmp_path / "missing.pth"))
    torch.save(KF.HardNet(False).state_dict(), tmp_path / "wrong.pth")
    with pytest.raises(RuntimeError, match="'disk'"):
        build_extractor("disk", weights=str(tmp_path / "wrong.pth"))


def test_aliked_from_local_weights(tmp_path, image96):
    w = _save(KF.ALIKED(), tmp_path / "aliked.pth")
    ex = build_extractor("aliked", weights=w, max_keypoints=50, resize_max=None)
    _check(ex.extract(image96), 50, 128, (128, 96))


def test_xfeat_from_local_weights_and_resize(tmp_path):
    torch.manual_seed(1)
    img = torch.rand(128, 160, 3)
    w = _save(KF.XFeat().net, tmp_path / "xfeat.pth")
    ex = build_extractor("xfeat", weights=w, max_keypoints=100, detection_threshold=0.0, resize_max=80,
                         subpixel=False)  # XFeat's own integer keypoints
    assert ex.resized_size(160, 128) == (64, 64)  # 80 x 64 floored to multiples of 32
    f = ex.extract(img)
    _check(f, 100, 64, (160, 128))
    s = torch.tensor([160 / 64, 128 / 64])
    i = f["keypoints"] / s - 0.5  # back to integer pixels of the resized image
    assert torch.allclose(i, i.round(), atol=1e-4)


def test_dedode_weight_errors_are_raised_before_building(tmp_path):
    with pytest.raises(ValueError, match=r"'dedode'.*weights.detector"):
        build_extractor("dedode")
    p = tmp_path / "det.pth"
    p.write_bytes(b"")
    with pytest.raises(FileNotFoundError, match="des.pth"):
        build_extractor("dedode", weights={"detector": str(p), "descriptor": str(tmp_path / "des.pth")})


@pytest.mark.slow
def test_dedode_from_local_weights(tmp_path, image96):
    m = KF.DeDoDe(descriptor_model="B", amp_dtype=torch.float32)
    w = {"detector": _save(m.detector, tmp_path / "det.pth"), "descriptor": _save(m.descriptor, tmp_path / "des.pth")}
    ex = build_extractor("dedode", weights=w, max_keypoints=40, resize_max=None)
    f = ex.extract(image96)
    _check(f, 40, 256, (128, 96))
    assert torch.allclose(f["keypoints"] % 1, torch.full_like(f["keypoints"], 0.5))
    with pytest.raises(ValueError, match="weights.descriptor"):
        build_extractor("dedode", weights={"detector": w["detector"], "descriptor": None})
    with pytest.raises(ValueError, match="DINOv2"):
        build_extractor("dedode", weights=w, descriptor_model="G")


def test_keynet_affnet_hardnet_per_subnetwork_weights(tmp_path, image96):
    w = {
        "keynet": _save(_keynet_with_positive_response(), tmp_path / "kn.pth"),
        "affnet": _save(KF.LAFAffNetShapeEstimator(False), tmp_path / "aff.pth"),
        "orinet": _save(KF.OriNet(False), tmp_path / "ori.pth"),
        "hardnet": _save(KF.HardNet(False), tmp_path / "hn.pth"),
    }
    ex = build_extractor("keynet_affnet_hardnet", weights=w, max_keypoints=32, resize_max=None)
    img = image96[:64, :64]
    f = ex.extract(img)
    _check(f, 32, 128, (64, 64))
    assert f["lafs"].shape == (f["keypoints"].shape[0], 2, 3)
    assert torch.allclose(f["lafs"][..., 2], f["keypoints"])
    # The whole module as one file loads too, and gives the same result.
    whole = tmp_path / "whole.pth"
    torch.save(ex.model.state_dict(), whole)
    g = build_extractor("keynet_affnet_hardnet", weights=str(whole), max_keypoints=32).extract(img)
    assert torch.allclose(f["keypoints"], g["keypoints"])
    with pytest.raises(ValueError, match="weights.hardnet"):
        build_extractor("keynet_hardnet", weights={k: w[k] for k in ("keynet", "orinet")})
