"""benchmarks/bench_loc_variants.py: the paired table's per-query geometric mean of the error
ratio (the number the README's alignment-template table reports), and its scene check."""
import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

from hloc_bpnp.geometry import Camera, Pose
from hloc_bpnp.geometry.pose import so3_exp
from hloc_bpnp.io.scene import Scene, SceneImage
from hloc_bpnp.localization import LocalizationResult

ROOT = Path(__file__).resolve().parents[1]


def _bench():
    spec = importlib.util.spec_from_file_location("bench_loc_variants", ROOT / "benchmarks" / "bench_loc_variants.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _result(name, gt, rot_deg, pos_m):
    """A localized result whose pose is ``gt`` rotated by ``rot_deg`` and moved by ``pos_m``."""
    dR = so3_exp(torch.tensor([0.0, 0.0, np.deg2rad(rot_deg)], dtype=torch.float64))
    est = Pose.from_center(dR @ gt.R, gt.center + torch.tensor([pos_m, 0.0, 0.0], dtype=torch.float64))
    return LocalizationResult(name=name, success=True, pose=est)


def test_paired_table_geometric_mean_and_medians():
    cam = Camera.from_K(torch.tensor([[500.0, 0, 320], [0, 500, 240], [0, 0, 1]], dtype=torch.float64), 640, 480)
    gt = {f"q{i}.png": Pose.from_center(torch.eye(3, dtype=torch.float64),
                                        torch.tensor([float(i), 0.0, -5.0], dtype=torch.float64)) for i in range(4)}
    scene = Scene([SceneImage(n, cam, p) for n, p in gt.items()])
    base_err = [(0.1, 0.01), (0.2, 0.02), (0.4, 0.04), (0.8, 0.08)]  # deg, m
    results = {
        "a": {n: _result(n, gt[n], r, t) for n, (r, t) in zip(gt, base_err)},
        # b: half the rotation error on every query, the same position error except one query 4x
        "b": {n: _result(n, gt[n], r / 2, t * (4 if i == 0 else 1)) for i, (n, (r, t)) in
              enumerate(zip(gt, base_err))},
    }
    results["b"]["q3.png"].fail("no_matches")  # not localized: left out of the ratios
    rows = {r[0]: r for r in _bench().paired_table(results, scene, ["a", "b"])}
    assert rows["a"][1:3] == [4, 4] and rows["b"][1:3] == [3, 4]
    assert rows["a"][5] == pytest.approx(1.0) and rows["a"][6] == pytest.approx(1.0)
    assert rows["b"][5] == pytest.approx(0.5, rel=1e-3)  # every localized query halved
    assert rows["b"][6] == pytest.approx(4 ** (1 / 3), rel=1e-3)  # one of three queries 4x
    assert rows["a"][3] == pytest.approx(0.3, rel=1e-3)  # median rotation of the four
    assert rows["a"][4] == pytest.approx(3.0, rel=1e-3)  # median position, cm


def test_not_a_scene_folder(tmp_path):
    with pytest.raises(SystemExit, match="neither a Middlebury folder"):
        _bench().read_scene(tmp_path)
