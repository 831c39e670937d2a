"""Leave-one-out protocol: Strecha fountain-P11 integration test on a few folds (real data,
skipped when ../shared/data is absent) and the pipeline script's outputs."""
import json

import pytest

from hloc_bpnp.protocols.leave_one_out import leave_one_out
from hloc_bpnp.protocols.summary import summarize

FAST_MAPPING = {
    "features": {"model": "sift", "max_keypoints": 2048, "resize_max": 1024},
    "pairs": {"method": "exhaustive", "num_pairs": 10},
}


@pytest.mark.data
def test_strecha_fountain_leave_one_out_folds(shared_data):
    from hloc_bpnp.io.datasets import read_strecha

    scene = read_strecha(shared_data / "strecha_fountain_P11")
    scene = scene.subset(scene.names[3:9])  # 6 neighbouring views: 3 folds in the middle
    queries = scene.names[1:4]
    results, timings = leave_one_out(scene, mapping_conf=FAST_MAPPING, queries=queries,
                                     loc_variants={"bpnp": {}, "none": {"refinement": {"method": "none"}}},
                                     progress=False)
    gt = {n: scene[n].pose for n in queries}
    for label in ("bpnp", "none"):
        s = summarize(results[label], gt)["summary"]
        assert s["n_localized"] == len(queries), (label, s)
        # metric GT: sub-degree and few-cm accuracy even at 1024 px with 5 map images
        assert s["median_rot_deg"] < 0.2 and s["median_pos_cm"] < 5.0, (label, s)
    for r in results["bpnp"].values():
        assert r.covariance is not None and r.info["cost_refined"] <= r.info["cost_ransac"]
    assert timings["map_per_fold"] > 0


@pytest.mark.data
@pytest.mark.slow
def test_strecha_pipeline_script(shared_data, tmp_path):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "pipelines" / "strecha.py"
    spec = importlib.util.spec_from_file_location("strecha_pipeline", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    scene = shared_data / "strecha_herzjesu_P8"
    mod.main(["--scene", str(scene), "--output", str(tmp_path), "--no-ablation"])
    data = json.loads((tmp_path / "results.json").read_text())
    s = data["summary"]
    assert s["n_queries"] == 8 and len(data["queries"]) == 8
    assert {"n_localized", "median_rot_deg", "median_pos_cm", "recall", "seconds_per_query"} <= set(s)
    assert (tmp_path / "results.txt").exists() and (tmp_path / "cumulative.png").exists()
