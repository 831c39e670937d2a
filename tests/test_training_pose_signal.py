"""Pose loss through BPnP on subsets, its gradient routing, and the keypoint-accuracy diagnostic."""
from __future__ import annotations

import pytest
import torch

from hloc_bpnp.config import merge
from hloc_bpnp.training import FinetuneModel, load_synthetic_scenes, localize_differentiable, map_view_features, pose_loss
from hloc_bpnp.training.data import TrainScene
from hloc_bpnp.training.evaluate import keypoint_errors
from hloc_bpnp.training.localization import match_pairs, subset_indices
from hloc_bpnp.training.losses import correspondence_targets, descriptor_loss
from hloc_bpnp.training.trainer import default_conf

TINY = {"camera": {"width": 128, "height": 96}, "texture": {"texture_max": 256},
        "path": {"num_map": 4, "num_query": 2}}
NET = {"channels": [8, 16, 16, 32], "head_dim": 32, "descriptor_dim": 32, "max_keypoints": 192}


@pytest.fixture(scope="module")
def scenes():
    return load_synthetic_scenes("small", [7], num_refs=2, overrides=TINY)


def _model(**net):
    torch.manual_seed(0)
    return FinetuneModel(merge(default_conf, {"model": NET | net}))


def test_subset_indices():
    idx = subset_indices(20, 5, 8, seed=3)
    assert idx.shape == (5, 8)
    assert all(len(set(r.tolist())) == 8 for r in idx) and int(idx.max()) < 20
    assert torch.equal(idx, subset_indices(20, 5, 8, seed=3))
    assert not torch.equal(idx, subset_indices(20, 5, 8, seed=4))
    assert subset_indices(5, 2, 8).shape == (2, 5)  # clipped to n
    with pytest.raises(ValueError, match="num_subsets"):
        subset_indices(5, 0, 3)


def test_batched_pose_loss_is_the_mean_and_capped(scenes):
    view = scenes[0].views[scenes[0].query_names[0]]
    gt = view.pose
    X = gt.inv().transform(torch.tensor([[0.1, 0.2, 4.0], [-0.3, 0.1, 5.0], [0.2, -0.2, 6.0]], dtype=torch.float64))
    p0 = gt.aa_t() + torch.tensor([0.002, 0, 0, 0, 0.01, 0], dtype=torch.float64)
    p1 = gt.aa_t() + torch.tensor([0, -0.003, 0, 0.02, 0, 0], dtype=torch.float64)
    both = pose_loss(torch.stack([p0, p1]), gt, X, view.camera)
    one = [pose_loss(p, gt, X, view.camera) for p in (p0, p1)]
    for k in ("total", "reproj", "rot_deg", "trans"):
        torch.testing.assert_close(both[k], (one[0][k] + one[1][k]) / 2)
    far = gt.aa_t() + torch.tensor([0.5, 0, 0, 0, 0, 0], dtype=torch.float64)
    capped = pose_loss(far, gt, X, view.camera, {"reproj_cap_px": 10.0})
    assert 5.0 < float(capped["reproj"]) <= 10.0
    with pytest.raises(ValueError, match="pose"):
        pose_loss(torch.zeros(2, 3, 6), gt, X, view.camera)


def _shifted_query(model, scene):
    # the query is a map view seen again, its keypoints shifted by a fixed sub-pixel pattern
    view = scene.views[scene.map_names[1]]
    refs = [map_view_features(model.net, view)]
    out = model.net(view.image[None])
    v = out["valid"][0]
    shift = torch.tensor([0.6, -0.4]) * (torch.arange(int(v.sum())) % 2)[:, None]
    return view, refs, out["keypoints"][0][v] + 0.5 + shift, out["descriptors"][0][v], out["scores"][0][v]


def test_subset_pose_loss_trains_positions_only(scenes):
    model = _model()
    view, refs, kpts, desc, scores = _shifted_query(model, scenes[0])
    conf = {"ransac_min_inliers": 6, "subsets": 8, "subset_size": 10, "weights_grad": False}
    loc = localize_differentiable(kpts, desc, scores, view.camera, refs, model.log_temperature, conf)
    assert loc.pose is not None and loc.pose.ndim == 2 and 1 <= loc.pose.shape[0] <= 8, loc.failure
    # different subsets give different poses (each sees different keypoint errors)
    assert float((loc.pose - loc.pose[:1]).detach().abs().max()) > 0
    pose_loss(loc.pose, view.pose, loc.points3d, view.camera)["total"].backward()
    assert float(model.net.loc_head.weight.grad.abs().sum()) > 0  # keypoint positions move
    for p in model.net.score_head.parameters():  # weights detached: no score/temperature signal
        assert p.grad is None or float(p.grad.abs().sum()) == 0
    assert model.log_temperature.grad is None or float(model.log_temperature.grad.abs()) == 0


def test_detached_descriptor_keypoints_keep_positions_out_of_the_descriptor_loss(scenes):
    scene = scenes[0]
    q = scene.views[scene.query_names[0]]
    for detach in (False, True):
        model = _model(detach_descriptor_keypoints=detach)
        ref = map_view_features(model.net, scene.views[scene.refs[q.name][0]])
        out = model.net(q.image[None])
        v = out["valid"][0]
        kpts, desc = out["keypoints"][0][v] + 0.5, out["descriptors"][0][v]
        P = match_pairs(desc, [ref], model.log_temperature)[0].P
        pos = correspondence_targets(kpts, q, ref, 4.0)
        assert pos.shape[0] > 0
        descriptor_loss(P, pos).backward()
        grad = model.net.loc_head.weight.grad
        g = 0.0 if grad is None else float(grad.abs().sum())
        assert (g == 0) if detach else (g > 0), (detach, g)


def test_keypoint_error_diagnostic(scenes):
    torch.manual_seed(0)
    from hloc_bpnp.training import TrainableFeatureNet

    net = TrainableFeatureNet(NET)
    scene = scenes[0]
    # a query that is a map view: the same keypoints, exact 3D points -> error ~0
    m = scene.map_names[0]
    same = TrainScene("same", scene.views, [m], [m], {m: [m]})
    e0 = keypoint_errors(net, [same])
    assert e0["n"] > 20 and e0["median_px"] < 1e-3, e0
    e = keypoint_errors(net, scenes)
    assert e["n"] > 0 and 0.05 < e["median_px"] < 4.0 and e["rms_px"] >= e["median_px"] * 0.5
