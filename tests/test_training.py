"""Fine-tuning: gradients of the pose loss, loss decrease, data-parallel equivalence, resume."""
from __future__ import annotations

import os
import tempfile

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
import yaml

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


def test_resume_after_a_crash_logs_each_step_once(scenes, tmp_path):
    """Rows logged after the last checkpoint are trained again on resume: they must replace
    the old ones, not be appended twice (issue 18)."""
    import shutil

    conf = _conf(checkpoint_every=2)
    out = tmp_path / "run"
    Trainer(conf, scenes, out).train(steps=2)          # checkpoint at step 2
    shutil.copy(out / "checkpoint_last.pt", tmp_path / "ckpt2.pt")
    Trainer(conf, scenes, out).train(steps=3, resume=True)  # logs step 2, checkpoint at 3
    shutil.copy(tmp_path / "ckpt2.pt", out / "checkpoint_last.pt")  # "crash" before the step-3 checkpoint
    t = Trainer(conf, scenes, out)
    t.train(steps=4, resume=True)
    steps = [int(l.split(",")[0]) for l in (out / "log.csv").read_text().strip().splitlines()[1:]]
    assert steps == [0, 1, 2, 3]
    assert yaml.safe_load((out / "config.yaml").read_text())["checkpoint_every"] == 2
    assert not list(out.glob("*.tmp"))


def _step_capturing_gradients(trainer):
    """One ``train_step`` that also returns the gradients the optimizer stepped with.

    They are read inside ``optimizer.step``: after the all-reduce (and the norm clipping),
    before the update, so they are what data parallelism must get right."""
    captured = {}
    step = trainer.optimizer.step
    names = {id(p): k for k, p in trainer.model.named_parameters()}

    def capturing_step(*a, **kw):
        for group in trainer.optimizer.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    captured[names[id(p)]] = p.grad.detach().clone()
        return step(*a, **kw)

    trainer.optimizer.step = capturing_step
    try:
        row = trainer.train_step()
    finally:
        trainer.optimizer.step = step
    return row, captured


def _ddp_worker(rank, world, init_file, scenes, conf, out_path):
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        tr = Trainer(conf, scenes)
        row, grads = _step_capturing_gradients(tr)
        if rank == 0:
            torch.save({"grads": grads, "weights": tr.model.state_dict(), "row": row}, out_path)
        del tr
        dist.barrier()
    finally:
        dist.destroy_process_group()


def _assert_gradients_close(got, want, rel=1e-4):
    """Equal up to float32 summation order: the tolerance is set by each tensor's gradient scale
    (max |g|), not elementwise, since a reordered sum errs relative to its summands' size."""
    assert got.keys() == want.keys()
    scale = max(float(g.abs().max()) for g in want.values())
    assert scale > 0, "the reference step has no gradient at all"
    for k in want:
        err = float((got[k].double() - want[k].double()).abs().max())
        tol = rel * max(float(want[k].abs().max()), 1e-3 * scale)
        assert err <= tol, f"{k}: gradients differ by {err:.3g} (> {tol:.3g})"


def test_two_process_data_parallel_equals_doubled_batch(scenes, tmp_path):
    """Two processes, one query each, average to the gradient of the 2-query batch.

    Checked on the averaged gradients (after the all-reduce, before the optimizer step), where
    the step is linear in the data; not on post-Adam weights, whose first update is about
    lr * g/|g| and flips wherever a tiny gradient changes sign in its last bits (summation order,
    thread count, CPU kernels: the failure of issue 19)."""
    # no gradient clipping: the captured gradients are then the raw averages (clipping would
    # hide an error of scale, e.g. a sum instead of a mean)
    conf = _conf(batch_size=2, optim={"clip_grad_norm": 0})
    ref = Trainer(conf, scenes)
    fresh = {k: v.clone() for k, v in ref.model.state_dict().items()}
    ref_row, ref_grads = _step_capturing_gradients(ref)
    assert ref_row["skipped"] == 0 and ref_grads
    init_file = tempfile.mktemp(dir=tmp_path)
    out_path = tmp_path / "ddp.pt"
    mp.start_processes(_ddp_worker, args=(2, init_file, scenes, conf, str(out_path)), nprocs=2,
                       join=True, start_method="spawn")
    got = torch.load(out_path, weights_only=True)
    assert got["row"]["skipped"] == 0
    _assert_gradients_close(got["grads"], ref_grads)
    want = ref.model.state_dict()
    lr = float(conf["optim"]["lr"])
    moved = False
    for k, w in got["weights"].items():
        delta = w - fresh[k]
        moved |= bool((delta != 0).any())
        # Adam's first step moves no weight by more than about lr
        assert float(delta.abs().max()) <= 1.01 * lr, k
        # where the gradient is well above the summation-order noise its sign is stable, so both
        # runs take the same step there
        g = ref_grads.get(k)
        if g is not None:
            stable = g.abs() > max(1e-3 * float(g.abs().max()), 1e-6)
            torch.testing.assert_close(w[stable], want[k][stable], rtol=0, atol=1e-3 * lr, msg=k)
    assert moved, "the data-parallel step moved no weight"


def _nan_rank_worker(rank, world, init_file, scenes, conf, out_dir):
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        tr = Trainer(conf, scenes)
        before = {k: v.clone() for k, v in tr.model.state_dict().items()}
        if rank == 1:  # only this process gets a non-finite loss
            with torch.no_grad():
                tr.model.net.desc_head[-1].weight.fill_(float("nan"))
        row = tr.train_step()
        changed = [k for k, v in tr.model.state_dict().items()
                   if not (torch.equal(v, before[k]) or (rank == 1 and torch.isnan(v).all()))]
        torch.save({"row": row, "changed": changed}, os.path.join(out_dir, f"rank{rank}.pt"))
        # the trainer (and the tensors its all-reduces touched) released before the barrier and the
        # group's destruction, as in _ddp_worker: without it a process aborted at exit once in a
        # full run here ("terminate called without an active exception", a Gloo thread at shutdown)
        del tr
        dist.barrier()
    finally:
        dist.destroy_process_group()


def test_non_finite_loss_on_one_process_skips_the_step_everywhere(scenes, tmp_path):
    """A NaN loss on one process must not leave the other waiting in a collective: both join
    every all-reduce, both skip the step, and neither changes a weight (issue 18)."""
    conf = _conf(batch_size=2, losses={"pose": False})
    ctx = mp.start_processes(_nan_rank_worker, args=(2, tempfile.mktemp(dir=tmp_path), scenes, conf, str(tmp_path)),
                             nprocs=2, join=False, start_method="spawn")
    import time

    deadline = time.time() + 180
    while not ctx.join(timeout=5):
        if time.time() > deadline:
            for p in ctx.processes:
                p.kill()
            pytest.fail("a process hung in a collective after a non-finite loss on the other")
    for rank in (0, 1):
        out = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        assert out["row"]["skipped"] == 1, rank
        assert out["changed"] == [], (rank, out["changed"])


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
