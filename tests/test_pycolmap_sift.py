"""The ``sift_pycolmap`` extractor (COLMAP's C++ SIFT): keypoints in COLMAP pixels (no double
half-pixel shift when resizing), in agreement with kornia's SIFT, and a working map preset."""
import numpy as np
import pytest
import torch

from conftest import SMALL_MAP_CONF
from hloc_bpnp.features import build_extractor
from test_features import nearest_errors, render_blobs


@pytest.fixture(scope="module")
def blobs():
    return render_blobs(360, 280, seed=3)


@pytest.mark.parametrize("resize_max", [None, 180])
def test_keypoints_agree_with_kornia_sift_in_colmap_pixels(blobs, resize_max):
    img, pts = blobs
    ours = build_extractor("sift_pycolmap", max_keypoints=1000, resize_max=resize_max).extract(torch.from_numpy(img))
    ref = build_extractor("sift", max_keypoints=1000, resize_max=resize_max).extract(torch.from_numpy(img))
    k = ours["keypoints"].numpy()
    err = nearest_errors(k, pts)
    found = err < 1.0
    assert found.mean() >= 0.8, f"only {found.sum()}/{len(pts)} blobs detected"
    # the true blob centres (COLMAP pixels): sub-pixel, unbiased (a double +0.5 would be 0.5 px
    # at full size and 1 px at half size, in x and y alike)
    tol = 0.25 if resize_max is None else 0.5
    assert np.median(err[found]) < tol / 5 and err[found].max() < tol, err[found].max()
    d = k[None] - pts[:, None]
    nearest = d[np.arange(len(pts)), np.linalg.norm(d, axis=-1).argmin(1)][found]
    assert np.abs(nearest.mean(0)).max() < 0.05 * (1 if resize_max is None else 2)  # no shift
    # kornia's accurate SIFT finds the same centres
    kr = ref["keypoints"].numpy()
    both = found & (nearest_errors(kr, pts) < 1.0)
    dk = np.linalg.norm(k[None] - kr[:, None], axis=-1).min(0)
    close = np.array([dk[np.linalg.norm(k - p, axis=1).argmin()] for p in pts[both]])
    assert both.sum() >= 0.7 * len(pts) and np.median(close) < tol / 5 and close.max() < tol


def test_output_contract(blobs):
    img, _ = blobs
    img8 = (np.repeat(img[..., None], 3, axis=2) * 255).astype(np.uint8)
    f = build_extractor("sift_pycolmap", max_keypoints=20).extract(img8)
    n = f["keypoints"].shape[0]
    assert 0 < n <= 20 and f["descriptors"].shape == (n, 128) and f["descriptors"].dtype == torch.float32
    assert torch.allclose(f["descriptors"].norm(dim=1), torch.ones(n), atol=1e-5)
    assert (f["descriptors"] >= 0).all()  # RootSIFT
    assert f["scores"].shape == f["scales"].shape == f["oris"].shape == (n,)
    assert (f["scores"][:-1] >= f["scores"][1:]).all()  # largest scales first (COLMAP's ranking)
    assert torch.allclose(f["scales"], 6 * f["scores"])
    assert f["image_size"].tolist() == [360, 280]
    with pytest.raises(ValueError, match="grayscale"):
        build_extractor("sift_pycolmap", grayscale=False)
    with pytest.raises(ValueError, match="cpu"):
        build_extractor("sift_pycolmap", device="cuda")


def test_preset_builds_a_map_and_localizes():
    from hloc_bpnp.localization import Localizer
    from hloc_bpnp.mapping import build_map_from_poses
    from hloc_bpnp.synthetic import generate_scene

    syn = generate_scene("small", seed=0)
    # the preset's upsampled first octave (first_octave 0 triangulates only ~200 points from
    # these 320x240 images and the queries land at 0.2-0.5 deg / 2-5 cm)
    conf = {**SMALL_MAP_CONF, "features": {"model": "sift_pycolmap", "max_keypoints": 1024}}
    m = build_map_from_poses(syn.map_scene, syn.images, conf, progress=False)
    assert len(m.points3D) > 200 and m.conf["features"]["model"] == "sift_pycolmap"
    loc = Localizer(m, "default")
    cams = syn.query_cameras()
    for n in syn.query_names:
        r = loc.localize(syn.images[n], cams[n], name=n)
        assert r.success, (n, r.failure_reason)
        gt = syn.scene[n].pose
        dR = r.pose.R @ gt.R.T
        ang = float(torch.rad2deg(torch.arccos(((dR.trace() - 1) / 2).clamp(-1, 1))))
        assert ang < 0.4 and float((r.pose.center - gt.center).norm()) < 0.04, (n, ang)
