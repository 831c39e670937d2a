"""Ray batch localization and map extraction (issue 10) on a local Ray cluster started here
(``ray.init(num_cpus=2)``, one per module) and a small synthetic scene: the same poses as the
sequential path, a worker killed mid-batch with nothing lost, a query that always kills its
worker recorded as failed while the rest succeed, resume, and ``map --workers`` giving the
same features and map as without it."""
from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import SMALL_MAP_CONF
import yaml

from hloc_bpnp.cli import main
from hloc_bpnp.io.hloc_text import read_query_list, read_results
from hloc_bpnp.localization import Localizer
from hloc_bpnp.localization import results as R
from hloc_bpnp.localization.results import ResultsWriter, write_results
from hloc_bpnp.mapping import Map

if os.environ.get("HLOC_BPNP_REQUIRE_RAY") != "1":  # CI sets it: there a missing Ray fails
    pytest.importorskip("ray")

@pytest.fixture(scope="module")
def ray_cluster():
    import ray

    ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.WARNING, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """The small synthetic scene on disk, its map (``hloc-bpnp map``, sequential), the queries
    (the held-out views with their cameras and the map views with guessed cameras) and the
    sequential results."""
    from hloc_bpnp.synthetic import generate_scene

    import torch

    root = tmp_path_factory.mktemp("distributed")
    generate_scene("small", seed=0).write(root / "scene")
    # one torch thread, as each worker here has: then even float32 sums match bit for bit
    # (other thread counts move SIFT descriptors by ~1 float32 ulp)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    conf = root / "map_conf.yaml"
    conf.write_text(yaml.safe_dump(SMALL_MAP_CONF))
    scene = root / "scene"
    try:
        assert main(["map", "--images", str(scene / "images"), "--reference", str(scene / "sfm_map"),
                     "--output", str(root / "map"), "--conf", str(conf)]) == 0
    finally:
        torch.set_num_threads(threads)
    cams = read_query_list(scene / "query_list_with_intrinsics.txt")
    maps = (scene / "map_list.txt").read_text().split()
    queries = [(n, n, c) for n, c in cams.items()] + [(n, n, None) for n in maps]
    seq = Localizer(Map.load(root / "map")).localize_many(queries, image_dir=scene / "images", progress=False)
    assert sum(r.success for r in seq.values()) == len(queries)
    return {"root": root, "scene": scene, "images": scene / "images", "map": root / "map", "conf": conf,
            "queries": queries, "sequential": seq}


def _assert_same(results, reference, names=None):
    names = list(reference) if names is None else names
    for n in names:
        a, b = results[n], reference[n]
        assert (a.success, a.failure_reason, a.num_inliers, list(a.retrieved)) == \
            (b.success, b.failure_reason, b.num_inliers, list(b.retrieved)), n
        if a.success:
            np.testing.assert_allclose(a.pose.matrix().numpy(), b.pose.matrix().numpy(), atol=1e-6, rtol=0, err_msg=n)


def _log(path):
    return json.loads(Path(path).read_text())["queries"]


def _assert_close(a, b, path="entry"):
    """Nested log entries equal, numbers to 1e-6 (thread counts move float sums by ~1e-15)."""
    if isinstance(a, dict):
        assert isinstance(b, dict) and sorted(a) == sorted(b), path
        for k in a:
            _assert_close(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, list):
        assert isinstance(b, list) and len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_close(x, y, f"{path}[{i}]")
    elif isinstance(a, float) or isinstance(b, float):
        assert a == pytest.approx(b, rel=1e-6, abs=1e-6), path
    else:
        assert a == b, path


def _assert_same_log(la, lb):
    assert len(la) == len(lb)
    for a, b in zip(la, lb):
        a, b = dict(a), dict(b)
        a.pop("timings"), b.pop("timings")
        a.get("info", {}).pop("timings", None), b.get("info", {}).pop("timings", None)
        _assert_close(a, b, a["name"])


def _run(setup, tmp, **kw):
    from hloc_bpnp.distributed import localize_distributed

    stats = {}
    res = localize_distributed(setup["map"], kw.pop("queries", setup["queries"]), None, image_dir=setup["images"],
                               results_path=tmp / "results.txt", progress=False, stats=stats, **kw)
    return res, stats


# ---------------------------------------------------------------------------- no Ray needed
def test_results_writer_writes_what_write_results_writes(setup, tmp_path):
    seq = setup["sequential"]
    write_results(seq, tmp_path / "a.txt")
    with ResultsWriter(tmp_path / "b.txt", flush_seconds=0) as w:
        for r in seq.values():
            w.add(r)
    assert (tmp_path / "a.txt").read_bytes() == (tmp_path / "b.txt").read_bytes()
    assert (tmp_path / "a_log.json").read_bytes() == (tmp_path / "b_log.json").read_bytes()
    # throttled: a second add within flush_seconds is not written until close / a forced flush
    w = ResultsWriter(tmp_path / "c.txt", flush_seconds=3600)
    first, second = list(seq.values())[:2]
    w.add(first)
    assert w.flush() and len(_log(tmp_path / "c_log.json")) == 1
    w.add(second)
    assert not w.flush() and len(_log(tmp_path / "c_log.json")) == 1
    w.close()
    assert [e["name"] for e in _log(tmp_path / "c_log.json")] == [first.name, second.name]
    assert not list(tmp_path.glob("*.tmp"))


def test_missing_ray_names_the_extra(monkeypatch):
    from hloc_bpnp.distributed import require_ray

    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    with pytest.raises(ImportError, match=r"hloc_bpnp\[distributed\]"):
        require_ray()


# ---------------------------------------------------------------------------- on Ray
def test_nothing_to_do_starts_no_cluster(setup, tmp_path, monkeypatch):
    """A resumed batch with every query done, and a map extraction with every image cached,
    return without starting Ray (issue 18)."""
    import hloc_bpnp.distributed.extract as E
    import hloc_bpnp.distributed.localize as L
    from hloc_bpnp.distributed import extract_features_distributed, localize_distributed
    from hloc_bpnp.mapping.build import extract_features_cached

    def no_ray(*a, **kw):
        raise AssertionError("Ray was started with nothing to do")

    monkeypatch.setattr(L, "ensure_ray", no_ray)
    monkeypatch.setattr(E, "ensure_ray", no_ray)
    writer = ResultsWriter(tmp_path / "results.txt")
    for r in setup["sequential"].values():
        writer.add(r)
    writer.close()
    assert localize_distributed(setup["map"], setup["queries"], None, image_dir=setup["images"],
                                results_path=tmp_path / "results.txt", resume=True, progress=False) == {}
    names = Map.load(setup["map"]).image_names[:2]
    cached = extract_features_cached(SMALL_MAP_CONF["features"], names, setup["images"], tmp_path / "cache",
                                     progress=False)
    got = extract_features_distributed(SMALL_MAP_CONF["features"], names, setup["images"], workers=2,
                                       cache_dir=tmp_path / "cache", progress=False)
    assert list(got) == names and np.array_equal(got[names[0]]["keypoints"], cached[names[0]]["keypoints"])


def test_local_cluster_cpus_are_passed(setup, tmp_path, monkeypatch):
    """``num_cpus`` (or workers x threads) reaches ensure_ray when a local cluster is started."""
    import hloc_bpnp.distributed.localize as L
    from hloc_bpnp.distributed import localize_distributed

    seen = []

    class Stop(Exception):
        pass

    def record(address=None, num_cpus=None):
        seen.append(num_cpus)
        raise Stop

    monkeypatch.setattr(L, "ensure_ray", record)
    for kw, want in (({"threads_per_worker": 1}, 2), ({"num_cpus": 3}, 3), ({}, None)):
        with pytest.raises(Stop):
            localize_distributed(setup["map"], setup["queries"][:1], None, image_dir=setup["images"], workers=2,
                                 progress=False, **kw)
        assert seen[-1] == want, kw


def test_gpu_plan_for_cuda_presets(monkeypatch):
    """Actors of a CUDA preset reserve GPUs (Ray hides GPUs from actors that reserve none)."""
    import ray

    from hloc_bpnp.distributed._ray import actor_options, plan_gpus, wants_cuda

    assert wants_cuda("cuda") and wants_cuda("cuda:1") and not wants_cuda("cpu") and not wants_cuda(None)
    assert plan_gpus(False, 4, None) == 0.0 and "num_gpus" not in actor_options(1, 0.0)
    assert actor_options(2, 0.5)["num_gpus"] == 0.5
    assert plan_gpus(True, 4, 0.25) == 0.25
    with pytest.raises(ValueError, match="gpus_per_worker is 0"):
        plan_gpus(True, 2, 0)
    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 16, "GPU": 1.0})
    assert plan_gpus(True, 4, None) == 0.25 and plan_gpus(True, 1, None) == 1.0
    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 16})
    with pytest.raises(ValueError, match="no GPU"):
        plan_gpus(True, 2, None)


def test_query_feature_device_follows_the_presets(setup):
    from hloc_bpnp.distributed.localize import query_feature_device

    assert query_feature_device(setup["map"], None) == "cpu"
    assert query_feature_device(setup["map"], {"query_features": {"device": "cuda"}}) == "cuda"


@pytest.mark.cuda
def test_ray_gpu_actor_sees_a_gpu(tmp_path):
    """On a machine with CUDA: an actor started with the options of a CUDA preset sees a GPU."""
    import ray

    from hloc_bpnp.distributed._ray import actor_options, ensure_ray, plan_gpus

    started = ensure_ray(None)
    try:
        @ray.remote
        def visible():
            import torch

            return torch.cuda.is_available(), torch.cuda.device_count()

        ok, n = ray.get(visible.options(**{k: v for k, v in actor_options(1, plan_gpus(True, 1, None)).items()
                                           if k in ("num_cpus", "num_gpus")}).remote())
        assert ok and n >= 1
    finally:
        if started:
            ray.shutdown()


def test_same_poses_as_sequential_and_same_files(ray_cluster, setup, tmp_path):
    probe = str(tmp_path / "threads")

    def record_threads(name):  # runs in the worker: its torch / OpenMP thread settings
        import torch

        with open(f"{probe}.{os.getpid()}", "w") as f:
            f.write(f"{torch.get_num_threads()} {os.environ.get('OMP_NUM_THREADS')}")

    res, stats = _run(setup, tmp_path, workers=2, chunk_size=2, before_query=record_threads)
    seen = [Path(p).read_text() for p in tmp_path.glob("threads.*")]
    assert len(seen) == 2 and set(seen) == {"1 1"}  # 2 workers on 2 CPUs: one thread each
    assert list(res) == [q[0] for q in setup["queries"]]  # query order
    _assert_same(res, setup["sequential"])
    assert stats["worker_deaths"] == 0 and stats["workers"] == 2 and stats["threads_per_worker"] == 1
    # the same files as the sequential CLI (poses to 1e-6, the log up to its timings)
    out = tmp_path / "seq" / "results.txt"
    # (the Python API's base configuration, which `_run` gets with conf None, is the CLI's `features_only`)
    assert main(["localize", "--map", str(setup["map"]), "--images", str(setup["images"]), "--config", "features_only",
                 "--queries", str(setup["scene"] / "query_list_with_intrinsics.txt"), "--output", str(out)]) == 0
    a, b = read_results(tmp_path / "results.txt"), read_results(out)
    seq_names = list(read_query_list(setup["scene"] / "query_list_with_intrinsics.txt"))
    assert list(b) == seq_names and list(a)[:len(b)] == list(b)
    for n in b:
        np.testing.assert_allclose(a[n].matrix().numpy(), b[n].matrix().numpy(), atol=1e-6, rtol=0)
    la, lb = _log(tmp_path / "results_log.json")[:len(b)], _log(out.with_name("results_log.json"))
    _assert_same_log(la, lb)


def test_worker_killed_mid_batch_loses_nothing(ray_cluster, setup, tmp_path):
    marker = str(tmp_path / "killed_once")
    victim = setup["queries"][3][0]

    def kill_once(name):  # runs in the worker: dies the first time it meets the victim
        if name == victim and not os.path.exists(marker):
            open(marker, "w").close()
            os._exit(1)

    res, stats = _run(setup, tmp_path, workers=2, chunk_size=3, before_query=kill_once)
    assert os.path.exists(marker)
    assert stats["worker_deaths"] == 1 and stats["replacements"] == 1 and stats["poisoned"] == 0
    assert list(res) == [q[0] for q in setup["queries"]]
    _assert_same(res, setup["sequential"])
    assert [e["name"] for e in _log(tmp_path / "results_log.json")] == list(res)
    assert len(read_results(tmp_path / "results.txt")) == len(res)


def test_query_that_always_kills_its_worker_is_a_failure(ray_cluster, setup, tmp_path):
    victim = setup["queries"][1][0]

    def always_kill(name):
        if name == victim:
            os._exit(1)

    res, stats = _run(setup, tmp_path, workers=2, chunk_size=2, before_query=always_kill)
    assert stats["poisoned"] == 1 and stats["worker_deaths"] == 2
    bad = res[victim]
    assert not bad.success and bad.failure_reason == R.WORKER_DIED
    assert "2 times" in bad.info["failure_detail"]
    others = [n for n in res if n != victim]
    _assert_same(res, setup["sequential"], others)
    log = {e["name"]: e for e in _log(tmp_path / "results_log.json")}
    assert log[victim]["failure_reason"] == R.WORKER_DIED and len(log) == len(setup["queries"])
    assert victim not in read_results(tmp_path / "results.txt")


def test_resume_skips_done_queries(ray_cluster, setup, tmp_path):
    queries = setup["queries"]
    first, _ = _run(setup, tmp_path, workers=2, queries=queries[:3])
    log_before = (tmp_path / "results_log.json").read_text()
    res, _ = _run(setup, tmp_path, workers=2, resume=True)
    assert list(res) == [q[0] for q in queries[3:]]  # only the rest localized
    _assert_same(res, setup["sequential"], list(res))
    entries = _log(tmp_path / "results_log.json")
    assert [e["name"] for e in entries] == [q[0] for q in queries]
    # the earlier entries are kept verbatim (their timings too)
    assert json.loads(log_before)["queries"] == entries[:3]
    assert list(read_results(tmp_path / "results.txt")) == [q[0] for q in queries]
    # nothing left: a second resume localizes nothing and leaves the files as they are
    again, _ = _run(setup, tmp_path, workers=1, resume=True)
    assert again == {} and _log(tmp_path / "results_log.json") == entries


def test_cli_workers_and_sequential_resume(ray_cluster, setup, tmp_path, capsys, caplog):
    out = tmp_path / "results.txt"
    qlist = setup["scene"] / "query_list_with_intrinsics.txt"
    base = ["localize", "--map", str(setup["map"]), "--images", str(setup["images"]), "--queries", str(qlist),
            "--output", str(out)]
    assert main(base + ["--workers", "2"]) == 0
    assert "localized 2 / 2" in capsys.readouterr().out
    a = read_results(out)
    # drop the last query from both files, then resume sequentially: only it is localized again
    entries = _log(tmp_path / "results_log.json")
    (tmp_path / "results_log.json").write_text(json.dumps({"queries": entries[:-1]}))
    assert main(base + ["--resume"]) == 0
    assert "localized 1 / 1" in capsys.readouterr().out
    b = read_results(out)
    assert list(a) == list(b)
    for n in a:
        np.testing.assert_allclose(a[n].matrix().numpy(), b[n].matrix().numpy(), atol=1e-6, rtol=0)
    assert main(["localize", "--hloc-reference", "x", "--output", str(out), "--workers", "2"]) == 2
    assert "--workers and --resume apply to --map" in caplog.text


def test_map_workers_gives_the_same_map(ray_cluster, setup, tmp_path):
    from hloc_bpnp.io.h5store import FeatureStore

    scene = setup["scene"]
    out = tmp_path / "map"
    assert main(["map", "--images", str(scene / "images"), "--reference", str(scene / "sfm_map"), "--output",
                 str(out), "--conf", str(setup["conf"]), "--workers", "2", "--threads-per-worker", "1", "--workdir", str(tmp_path / "work")]) == 0
    with FeatureStore(setup["map"] / "features.h5") as a, FeatureStore(out / "features.h5") as b:
        assert a.names() == b.names()
        for n in a.names():
            fa, fb = a.get(n), b.get(n)
            assert sorted(fa) == sorted(fb)
            for k in fa:
                np.testing.assert_array_equal(fa[k], fb[k], err_msg=f"{n} {k}")
    assert sorted(p.name for p in (tmp_path / "work" / "features" / "map").glob("*.npz")) == \
        sorted(Path(n).name + ".npz" for n in a.names())
    ma, mb = Map.load(setup["map"]), Map.load(out)
    assert ma.points3D.shape == mb.points3D.shape and len(ma.points3D) > 100
    np.testing.assert_array_equal(ma.points3D, mb.points3D)
    for n in ma.image_names:
        np.testing.assert_array_equal(ma.kp_to_point[n], mb.kp_to_point[n])


@pytest.mark.slow
def test_same_poses_as_sequential_on_strecha(ray_cluster, shared_data, tmp_path):
    """Real photos: a map from 5 fountain-P11 images' GT poses, 2 held-out images localized
    with and without workers."""
    from hloc_bpnp.distributed import localize_distributed
    from hloc_bpnp.io.datasets import read_strecha
    from hloc_bpnp.mapping import build_map_from_poses

    scene = read_strecha(shared_data / "strecha_fountain_P11")
    names = scene.names
    build_map_from_poses(scene.subset(names[:5]), conf="default", progress=False).save(tmp_path / "map")
    queries = [(n, n, scene[n].camera) for n in names[5:7]]
    seq = Localizer(Map.load(tmp_path / "map")).localize_many(queries, image_dir=scene.image_dir, progress=False)
    res = localize_distributed(tmp_path / "map", queries, workers=2, image_dir=scene.image_dir, progress=False)
    assert all(r.success for r in seq.values())
    _assert_same(res, seq)



def test_a_worker_that_never_gets_ready_is_replaced_then_an_error(ray_cluster, tmp_path):
    """Ray can leave a worker idle that never runs its actor: the start-up barrier replaces a
    worker not ready after ``startup_timeout_s`` instead of waiting forever, and gives up with a
    clear error after ``max_worker_deaths`` replacements."""
    from hloc_bpnp.distributed.scheduler import run_ordered

    class SlowStart:  # defined here: Ray pickles it by value (the workers cannot import tests)
        """Its first instance (per marker file) never gets ready within the test's timeout."""

        def __init__(self, marker, always=False):
            self.marker, self.always = marker, always

        def ready(self):
            import time

            if self.always or not os.path.exists(self.marker):
                open(self.marker, "w").close()
                time.sleep(120)
            return 0.0

        def work(self, items):
            return [2 * i for i in items]

    cls = ray_cluster.remote(SlowStart).options(num_cpus=1, max_restarts=0)
    out = {}

    def emit(positions, results):
        out.update(zip(positions, results))

    marker = str(tmp_path / "started")
    stats = run_ordered(list(range(5)), start_actor=lambda: cls.remote(marker), submit=lambda a, c: a.work.remote(c),
                        num_actors=1, chunk_size=2, emit=emit, on_poison=None, progress=False,
                        startup_timeout_s=3.0)
    assert stats["replacements"] == 1 and out == {i: 2 * i for i in range(5)}
    with pytest.raises(RuntimeError, match=r"1 worker\(s\) did not start within 3 s, 1 replacements included"):
        run_ordered([1], start_actor=lambda: cls.remote(marker, True), submit=lambda a, c: a.work.remote(c),
                    num_actors=1, chunk_size=1, emit=emit, on_poison=None, progress=False, startup_timeout_s=3.0,
                    max_worker_deaths=1)
