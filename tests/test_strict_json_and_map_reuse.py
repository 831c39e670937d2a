"""Strict JSON everywhere (no Infinity/NaN) and --reuse-map config checks."""
import json
import math

import numpy as np
import pytest
import torch

from hloc_bpnp.geometry import Camera, Pose
from hloc_bpnp.io.json_io import json_safe, write_json


def _strict_load(path):
    def no_constant(name):
        raise ValueError(f"non-JSON constant {name} in {path}")

    return json.loads(path.read_text(), parse_constant=no_constant)


def test_write_json_nonfinite_become_null(tmp_path):
    data = {"a": float("inf"), "b": [float("nan"), -float("inf"), 1.5], "c": np.float32("nan"),
            "d": np.array([1.0, np.inf]), "e": torch.tensor([np.nan, 2.0]), "f": (1, 2), 3: np.int64(7),
            "g": np.bool_(True), "p": tmp_path}
    p = write_json(tmp_path / "sub" / "x.json", data)
    back = _strict_load(p)
    assert back == {"a": None, "b": [None, None, 1.5], "c": None, "d": [1.0, None], "e": [None, 2.0],
                    "f": [1, 2], "3": 7, "g": True, "p": str(tmp_path)}
    assert not list(p.parent.glob("*.tmp"))
    assert json_safe({"x": math.nan}) == {"x": None}


def _result(name, success, info=None):
    from hloc_bpnp.localization import LocalizationResult

    r = LocalizationResult(name, success=success, failure_reason=None if success else "ransac_failed")
    r.pose = Pose.from_aa(torch.tensor([0.0, 0, 0, 0, 0, 1.0], dtype=torch.float64)) if success else None
    r.timings = {"total": 0.5, "features": 0.2}
    r.info = info or {}
    return r


def test_benchmark_and_log_json_are_strict(tmp_path):
    from hloc_bpnp.protocols.summary import summarize, write_summary
    from hloc_bpnp.localization import write_results

    gt = {"q0": Pose.from_aa(torch.tensor([0.0, 0, 0, 0, 0, 1.0], dtype=torch.float64)),
          "q1": Pose.from_aa(torch.tensor([0.0, 0, 0, 0, 0, 2.0], dtype=torch.float64))}
    results = {"q0": _result("q0", True, {"cost_refined": float("nan"), "focal_ratio": float("inf")}),
               "q1": _result("q1", False)}
    summary = summarize(results, gt, extra={"mapping_seconds": float("inf"), "map": {"mean_track": float("nan")}})
    back = _strict_load(write_summary(summary, tmp_path / "results.json"))
    assert back["summary"]["mapping_seconds"] is None and back["summary"]["map"]["mean_track"] is None
    assert back["queries"][0]["info"] == {"cost_refined": None, "focal_ratio": None}
    write_results(results, tmp_path / "results.txt")
    log = _strict_load(tmp_path / "results_log.json")
    assert log["queries"][0]["info"]["focal_ratio"] is None


def _cam():
    return Camera("PINHOLE", 320, 240, torch.tensor([300.0, 300.0, 160.0, 120.0], dtype=torch.float64))


def _fake_saved_map(map_dir, conf, names):
    from hloc_bpnp.mapping import MAP_FILES

    map_dir.mkdir(parents=True)
    write_json(map_dir / MAP_FILES["meta"], {"format_version": 1, "image_names": names, "conf": conf})


def test_check_saved_map_config_names_differing_keys(tmp_path):
    from hloc_bpnp.mapping import MapConfigMismatch, check_saved_map_config, resolved_mapping_config

    saved = resolved_mapping_config({"features": {"model": "sift", "max_keypoints": 1024},
                                     "pairs": {"num_pairs": 4}})
    _fake_saved_map(tmp_path / "map", saved, ["a.png", "b.png"])
    check_saved_map_config(tmp_path / "map", saved, ["a.png", "b.png", "c.png"])  # same: fine
    other = resolved_mapping_config({"features": {"model": "sift", "max_keypoints": 2048},
                                     "pairs": {"num_pairs": 6}})
    with pytest.raises(MapConfigMismatch) as e:
        check_saved_map_config(tmp_path / "map", other)
    msg = str(e.value)
    assert "features.max_keypoints (saved 1024, requested 2048)" in msg
    assert "pairs.num_pairs (saved 4, requested 6)" in msg and "map.json" in msg
    assert "max_num_trials" not in msg  # only the differing keys
    with pytest.raises(MapConfigMismatch, match="image_names"):
        check_saved_map_config(tmp_path / "map", saved, ["a.png", "x.png"])


def test_reuse_map_with_other_config_raises(tmp_path):
    from hloc_bpnp.protocols.datasets import run_dataset_benchmark
    from hloc_bpnp.io import Scene, SceneImage
    from hloc_bpnp.mapping import MapConfigMismatch, resolved_mapping_config

    pose = Pose.from_aa(torch.tensor([0.0, 0, 0, 0, 0, 1.0], dtype=torch.float64))
    ref = Scene([SceneImage("a.png", _cam(), pose), SceneImage("b.png", _cam(), pose)], image_dir=tmp_path)
    _fake_saved_map(tmp_path / "out" / "map", resolved_mapping_config({"pairs": {"num_pairs": 4}}),
                    ["a.png", "b.png"])
    with pytest.raises(MapConfigMismatch, match=r"pairs\.num_pairs \(saved 4, requested 7\)"):
        run_dataset_benchmark(ref, {"q.png": _cam()}, tmp_path / "out", "t",
                              mapping_conf={"pairs": {"num_pairs": 7}}, reuse_map=True, progress=False)


def test_seconds_per_query_counts_extraction_once():
    """Issue 12.10: timings["total"] already includes "features"; summaries added it again."""
    from hloc_bpnp.protocols.summary import summarize
    from hloc_bpnp.protocols.datasets import summarize_outcomes
    from hloc_bpnp.localization.results import query_seconds

    ok = _result("q0", True)
    ok.timings = {"features": 0.5, "retrieval": 0.1, "matching": 0.2, "pose": 0.2, "total": 1.0}
    failed = _result("q1", False)
    failed.timings = {"features": 0.5, "retrieval": 0.1}  # failed before "total" was recorded
    assert query_seconds(ok.timings) == 1.0 and query_seconds(failed.timings) == pytest.approx(0.6)
    results = {"q0": ok, "q1": failed}
    gt = {n: Pose.from_aa(torch.zeros(6, dtype=torch.float64)) for n in results}
    assert summarize(results, gt)["summary"]["seconds_per_query"] == pytest.approx(0.8)
    assert summarize_outcomes(results)["summary"]["seconds_per_query"] == pytest.approx(0.8)
