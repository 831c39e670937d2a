import math

import pytest
import torch
import kornia.feature as KF
from kornia.geometry.transform import warp_perspective

from hloc_bpnp.features import build_extractor
from hloc_bpnp.matching import build_matcher, nn_match_batched


def textured_image(h=240, w=320, seed=0):
    g = torch.Generator().manual_seed(seed)
    img = torch.zeros(1, 1, h, w)
    for s, a in ((2, 0.5), (6, 0.35), (16, 0.25)):
        n = torch.rand(1, 1, h // s + 2, w // s + 2, generator=g)
        img += a * torch.nn.functional.interpolate(n, size=(h, w), mode="bicubic", align_corners=False)
    return (img - img.min()) / (img.max() - img.min())


def homography_pair():
    img0 = textured_image()
    h, w = img0.shape[-2:]
    a, s = math.radians(12), 0.9
    c = torch.tensor([w / 2, h / 2])
    R = torch.tensor([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]]) * s
    H = torch.eye(3)
    H[:2, :2] = R
    H[:2, 2] = c - R @ c + torch.tensor([5.0, -3.0])
    H[2, :2] = torch.tensor([2e-4, -1e-4])
    img1 = warp_perspective(img0, H[None], (h, w), align_corners=True)
    # kornia maps pixel centres at integers; COLMAP's are at +0.5.
    T = torch.eye(3)
    T[:2, 2] = 0.5
    return img0, img1, T @ H @ torch.linalg.inv(T)


def apply_h(H, x):
    xh = torch.cat([x, torch.ones(len(x), 1)], 1) @ H.T
    return xh[:, :2] / xh[:, 2:]


@pytest.fixture(scope="module")
def sift_pair():
    img0, img1, H = homography_pair()
    ex = build_extractor("sift", max_keypoints=1024)
    return ex.extract(img0[0]), ex.extract(img1[0]), H


def reprojection_errors(f0, f1, m, H):
    m0 = m["matches0"]
    valid = m0 > -1
    k0 = f0["keypoints"][valid]
    k1 = f1["keypoints"][m0[valid]]
    return (apply_h(H, k0) - k1).norm(dim=1)


@pytest.mark.parametrize("preset,min_matches", [("mnn", 150), ("ratio", 100), ("mnn_ratio", 100),
                                                ("smnn", 150), ("adalam", 100)])
def test_matches_agree_with_homography(sift_pair, preset, min_matches):
    f0, f1, H = sift_pair
    m = build_matcher(preset).match(f0, f1)
    n0 = f0["keypoints"].shape[0]
    assert m["matches0"].shape == (n0,) and m["matches0"].dtype == torch.int64
    assert m["matching_scores0"].shape == (n0,) and m["matching_scores0"].dtype == torch.float32
    valid = m["matches0"] > -1
    assert (m["matching_scores0"][~valid] == 0).all() and (m["matching_scores0"][valid] > 0).all()
    err = reprojection_errors(f0, f1, m, H)
    assert len(err) >= min_matches, f"{preset}: {len(err)} matches"
    inl = (err < 1.5).float().mean().item()
    assert inl > (0.9 if preset != "mnn" else 0.8), f"{preset}: inlier ratio {inl:.2f}"
    assert err[err < 1.5].median() < 0.3  # sub-pixel agreement: keypoints are accurate


def naive_nn(d0, d1, mutual, ratio):
    D = torch.cdist(d0.double(), d1.double())
    out = torch.full((len(d0),), -1, dtype=torch.int64)
    for i in range(len(d0)):
        order = torch.argsort(D[i])
        j = int(order[0])
        if ratio is not None and len(d1) > 1 and D[i, j] > ratio * D[i, order[1]]:
            continue
        if mutual and int(torch.argmin(D[:, j])) != i:
            continue
        out[i] = j
    return out


@pytest.mark.parametrize("mutual,ratio", [(True, None), (False, 0.8), (True, 0.8)])
def test_nn_matches_reference_and_ratio_is_on_distances(mutual, ratio):
    g = torch.Generator().manual_seed(0)
    d0 = torch.nn.functional.normalize(torch.randn(60, 16, generator=g), dim=-1)
    d1 = torch.cat([d0[:40] + 0.2 * torch.randn(40, 16, generator=g), torch.randn(30, 16, generator=g)])
    d1 = torch.nn.functional.normalize(d1, dim=-1)
    m, s = nn_match_batched(d0, d1[None], mutual=mutual, ratio_threshold=ratio)
    assert torch.equal(m[0], naive_nn(d0, d1, mutual, ratio))
    # Direct check of the ratio definition: distances 0.79 vs 1 pass at 0.8, 0.81 vs 1 do not.
    q = torch.tensor([[0.0, 0.0]])
    for d, expect in ((0.79, 0), (0.81, -1)):
        r = torch.tensor([[[d, 0.0], [0.0, 1.0]]])
        mm, _ = nn_match_batched(q, r, mutual=False, ratio_threshold=0.8)
        assert int(mm[0, 0]) == expect


@pytest.mark.parametrize("preset", ["mnn", "ratio", "mnn_ratio", "smnn"])
def test_batched_equals_one_by_one(preset):
    g = torch.Generator().manual_seed(1)
    base = torch.randn(300, 32, generator=g)
    q = {"keypoints": torch.rand(300, 2) * 100, "descriptors": base}
    refs = []
    for n in (250, 120, 1, 0, 310):
        d = torch.cat([base[:min(n, 200)] + 0.3 * torch.randn(min(n, 200), 32, generator=g),
                       torch.randn(max(0, n - 200), 32, generator=g)])
        refs.append({"keypoints": torch.rand(n, 2) * 100, "descriptors": d})
    matcher = build_matcher(preset)
    one = [matcher.match(q, r) for r in refs]
    for budget in (1 << 26, 300 * 260):  # one padded batch / chunked
        matcher.conf["max_batch_elements"] = budget
        many = matcher.match_many(q, refs)
        for a, b in zip(one, many):
            assert torch.equal(a["matches0"], b["matches0"])
            assert torch.allclose(a["matching_scores0"], b["matching_scores0"], atol=1e-6)
    assert (one[3]["matches0"] == -1).all()  # empty reference
    assert (one[0]["matches0"] > -1).sum() > 100


def test_matcher_input_validation():
    m = build_matcher("mnn")
    a = {"keypoints": torch.rand(5, 2), "descriptors": torch.rand(5, 8)}
    with pytest.raises(ValueError, match="descriptor size"):
        m.match(a, {"keypoints": torch.rand(5, 2), "descriptors": torch.rand(5, 4)})
    with pytest.raises(KeyError, match="descriptors"):
        m.match(a, {"keypoints": torch.rand(5, 2)})
    with pytest.raises(ValueError, match=r"\(N, 2\)"):
        build_matcher("adalam").match(a, {"keypoints": torch.rand(4, 2), "descriptors": torch.rand(5, 8)})
    with pytest.raises(KeyError, match="ratio_treshold"):
        build_matcher("mnn", ratio_treshold=0.8)
    with pytest.raises(ValueError, match="ratio_threshold"):
        build_matcher("ratio", ratio_threshold=1.5)


def _lightglue_weights(tmp_path, features):
    conf = {k: v for k, v in KF.LightGlue.features[features].items() if k != "weights"}
    torch.manual_seed(0)
    net = KF.LightGlue(None, **conf)
    # the legacy key layout of the official checkpoints must load as well
    state = {k.replace("transformers.0.self_attn", "self_attn.0"): v for k, v in net.state_dict().items()}
    p = tmp_path / f"{features}_lg.pth"
    torch.save(state, p)
    return str(p), net


def test_lightglue_sift_from_local_weights(tmp_path, sift_pair):
    f0, f1, _ = sift_pair
    w, ref_net = _lightglue_weights(tmp_path, "sift")
    m = build_matcher("lightglue", weights=w)
    assert torch.equal(m.net.transformers[0].self_attn.Wqkv.weight, ref_net.transformers[0].self_attn.Wqkv.weight)
    sub0 = {k: (v[:200] if k != "image_size" else v) for k, v in f0.items()}
    sub1 = {k: (v[:150] if k != "image_size" else v) for k, v in f1.items()}
    out = m.match(sub0, sub1)
    assert out["matches0"].shape == (200,) and out["matches0"].dtype == torch.int64
    assert out["matching_scores0"].dtype == torch.float32
    assert ((out["matches0"] >= -1) & (out["matches0"] < 150)).all()
    many = m.match_many(sub0, [sub1, sub1])
    assert torch.equal(many[0]["matches0"], out["matches0"])


def test_lightglue_disk_and_errors(tmp_path):
    w, _ = _lightglue_weights(tmp_path, "disk")
    m = build_matcher({"model": "lightglue", "features": "disk", "weights": w})
    f = {"keypoints": torch.rand(50, 2) * 60, "descriptors": torch.nn.functional.normalize(torch.randn(50, 128), dim=-1),
         "scores": torch.rand(50), "image_size": torch.tensor([64, 64])}
    out = m.match(f, f)
    assert out["matches0"].shape == (50,)
    with pytest.raises(ValueError, match="weights"):
        build_matcher("lightglue")
    with pytest.raises(FileNotFoundError, match="nothere.pth"):
        build_matcher("lightglue", weights=str(tmp_path / "nothere.pth"))
    with pytest.raises(ValueError, match="128-D"):
        m.match({**f, "descriptors": torch.rand(50, 64)}, f)
    with pytest.raises(RuntimeError, match="does not fit|lack"):
        build_matcher("lightglue", features="xfeat", weights=w)


@pytest.mark.parametrize("mutual,ratio,dist,sym", [(True, None, None, False), (False, 0.9, None, False),
                                                   (True, 0.9, 1.0, False), (True, 0.9, None, True),
                                                   (False, 0.9, None, True)])
def test_similarity_blocks_equal_one_block(monkeypatch, mutual, ratio, dist, sym):
    """The unit-norm path computes similarities in blocks of query rows and merges the column
    reductions (mutual check, symmetric ratio); any block size gives one block's result, with
    padded references and exact duplicates (ties) among the descriptors."""
    import hloc_bpnp.matching.nearest_neighbor as NN

    g = torch.Generator().manual_seed(3)
    q = torch.nn.functional.normalize(torch.randn(97, 16, generator=g), dim=-1)
    refs = [torch.nn.functional.normalize(torch.randn(n, 16, generator=g), dim=-1) for n in (60, 23, 41)]
    refs[0][:8] = q[:8]  # exact matches
    refs[1][:3] = q[40:43] + 0.05 * torch.randn(3, 16, generator=g)
    refs[2][5] = refs[2][6]  # a tie between two references
    pad, mask = NN.pad_descriptors(refs)
    monkeypatch.setattr(NN, "SIMILARITY_BLOCK", 1 << 30)
    m_one, s_one = nn_match_batched(q, pad, mask, mutual, ratio, dist, sym, normalized=True)
    assert int((m_one >= 0).sum()) >= 8
    for block in (1, 7 * 60, 3 * 60 * 20, 3 * 60 * 96):
        monkeypatch.setattr(NN, "SIMILARITY_BLOCK", block)
        m, s = nn_match_batched(q, pad, mask, mutual, ratio, dist, sym, normalized=True)
        # (the matrix product's rounding may differ between block shapes in the last bit)
        assert torch.equal(m, m_one) and torch.allclose(s, s_one, atol=1e-6, rtol=0), block
