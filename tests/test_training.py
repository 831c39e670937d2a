"""Fine-tuning: gradients of the pose loss, loss decrease, data-parallel equivalence, resume."""
from __future__ import annotations

import os
import tempfile

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

from hloc_bpnp.training import (FinetuneModel, Trainer, load_synthetic_scenes, localize_differentiable,
                                map_view_features, pose_loss)
from hloc_bpnp.training.localization import match_pairs
from hloc_bpnp.training.trainer import default_conf
from hloc_bpnp.config import merge

TINY = {"camera": {"width": 128, "height": 96}, "texture": {"texture_max": 256},
        "path": {"num_map": 4, "num_query": 2}}
NET = {"channels": [8, 16, 16, 32], "head_dim": 32, "descriptor_dim": 32, "max_keypoints": 192}


@pytest.fixture(scope="module")
def scenes():
    return load_synthetic_scenes("small", [7], num_refs=2, overrides=TINY)


def _conf(**kw):
    base = {"model": NET, "batch_size": 2, "map_refresh_every": 2, "checkpoint_every": 0,
            "localization": {"ransac_min_inliers": 6}, "optim": {"lr": 3e-3}}
    return merge(merge(default_conf, base), kw)


def test_pose_loss_gradients_reach_every_parameter_group(scenes):
    torch.manual_seed(0)
    model = FinetuneModel(_conf())
    scene = scenes[0]
    view = scene.views[scene.map_names[1]]
    # the query is a map view seen again: hard matches are reliable for any weights, so RANSAC
    # succeeds; a fixed sub-pixel shift of the query keypoints moves the BPnP pose off the GT
    refs = [map_view_features(model.net, view)]
    out = model.net(view.image[None])
    v = out["valid"][0]
    shift = torch.tensor([0.6, -0.4]) * (torch.arange(int(v.sum())) % 2)[:, None]
    kpts = out["keypoints"][0][v] + 0.5 + shift
    desc, scores = out["descriptors"][0][v], out["scores"][0][v]
    loc = localize_differentiable(kpts, desc, scores, view.camera, refs, model.log_temperature,
                                  {"ransac_min_inliers": 6})
    assert loc.pose is not None, loc.failure
    loss = pose_loss(loc.pose, view.pose, loc.points3d, view.camera)["total"]
    assert float(loss.detach()) > 0
    loss.backward()
    groups = {"stem": model.net.stem, "block2": model.net.block2, "block4": model.net.block4,
              "block8": model.net.block8, "fuse": model.net.fuse, "score_head": model.net.score_head,
              "loc_head": model.net.loc_head, "desc_head": model.net.desc_head}
    for name, mod in groups.items():
        grads = [p.grad for p in mod.parameters()]
        assert all(g is not None and torch.isfinite(g).all() for g in grads), name
        assert sum(float(g.abs().sum()) for g in grads) > 0, f"no gradient reaches {name}"
    g = model.log_temperature.grad
    assert g is not None and torch.isfinite(g) and float(g.abs()) > 0


def test_learned_weighting_and_soft_matches(scenes):
    torch.manual_seed(0)
    model = FinetuneModel(_conf(losses={"weighting": "learned"}))
    w = model.weighting
    total = w({"descriptor": torch.tensor(2.0), "pose": torch.tensor(1.0)})
    total.backward()
    assert w.log_vars.grad is not None and torch.isfinite(w.log_vars.grad).all()
    # dual-softmax probabilities are a sub-stochastic matrix
    view = scenes[0].views[scenes[0].map_names[0]]
    ref = map_view_features(model.net, view)
    P = match_pairs(ref.descriptors, [ref], model.log_temperature)[0].P
    assert P.shape == (ref.descriptors.shape[0],) * 2
    assert float(P.sum(1).max()) <= 1 + 1e-5 and float(P.min()) >= 0


def test_short_training_lowers_the_loss(scenes):
    trainer = Trainer(_conf(map_refresh_every=1000, losses={"pose": False}), scenes)
    items = trainer.batch_items(0)
    trainer.refresh_map()
    with torch.no_grad():
        before, _ = trainer.batch_loss(items)
    for _ in range(6):
        trainer.train_step()
    with torch.no_grad():
        after, _ = trainer.batch_loss(items)
    assert float(after) < 0.9 * float(before), (float(before), float(after))


def test_nan_guard_skips_step(scenes):
    trainer = Trainer(_conf(losses={"pose": False}), scenes)
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    with torch.no_grad():
        trainer.model.net.desc_head[-1].weight.fill_(float("nan"))
    before["net.desc_head.2.weight"] = trainer.model.net.desc_head[-1].weight.clone()
    row = trainer.train_step()
    assert row["skipped"] == 1 and trainer.skipped == 1
    for k, v in trainer.model.state_dict().items():
        assert torch.equal(v, before[k]) or (torch.isnan(v).all() and torch.isnan(before[k]).all()), k


def test_resume_is_bit_identical(scenes, tmp_path):
    conf = _conf()
    a = Trainer(conf, scenes, tmp_path / "a")
    a.train(steps=2)
    assert (tmp_path / "a" / "checkpoint_last.pt").is_file() and (tmp_path / "a" / "log.csv").is_file()
    a2 = Trainer(conf, scenes, tmp_path / "a")
    a2.train(steps=4, resume=True)
    assert a2.step == 4
    b = Trainer(conf, scenes, tmp_path / "b")
    b.train(steps=4)
    sa, sb = a2.model.state_dict(), b.model.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k
    lines = (tmp_path / "a" / "log.csv").read_text().strip().splitlines()
    assert len(lines) == 1 + 4  # header + 4 steps, appended after the resume


def _ddp_worker(rank, world, init_file, scenes, conf, out_path):
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        tr = Trainer(conf, scenes)
        tr.train_step()
        if rank == 0:
            torch.save(tr.model.state_dict(), out_path)
        del tr
        dist.barrier()
    finally:
        dist.destroy_process_group()


def test_two_process_data_parallel_equals_doubled_batch(scenes, tmp_path):
    conf = _conf(batch_size=2)
    ref = Trainer(conf, scenes)
    ref.train_step()
    init_file = tempfile.mktemp(dir=tmp_path)
    out_path = tmp_path / "ddp.pt"
    mp.start_processes(_ddp_worker, args=(2, init_file, scenes, conf, str(out_path)), nprocs=2,
                       join=True, start_method="spawn")
    got = torch.load(out_path, weights_only=False)
    want = ref.model.state_dict()
    for k in want:
        torch.testing.assert_close(got[k], want[k], rtol=1e-4, atol=1e-6, msg=k)
    # and the step moved the weights (the comparison is not between two untouched models)
    fresh = Trainer(conf, scenes).model.state_dict()
    assert any(not torch.equal(fresh[k], want[k]) for k in want)


def test_trainable_extractor_preset(tmp_path):
    from hloc_bpnp.features import build_extractor
    from hloc_bpnp.training import TrainableFeatureNet

    torch.manual_seed(0)
    net = TrainableFeatureNet(NET)
    path = tmp_path / "w.pt"
    torch.save(net.state_dict(), path)
    ex = build_extractor("trainable", weights=str(path), channels=NET["channels"], head_dim=32,
                         descriptor_dim=32, max_keypoints=100)
    img = (np.random.default_rng(0).random((100, 130)) * 255).astype(np.uint8)
    f = ex.extract(img)
    n = f["keypoints"].shape[0]
    assert 0 < n <= 100 and f["descriptors"].shape == (n, 32) and f["scores"].shape == (n,)
    assert f["image_size"].tolist() == [130, 100]
    # COLMAP convention: inside the image; network frame (+0.5, scaled) matches the direct call
    k = f["keypoints"]
    assert float(k.min()) > 0 and float(k[:, 0].max()) < 130 and float(k[:, 1].max()) < 100
    with pytest.raises(ValueError, match="weights"):
        build_extractor("trainable")
