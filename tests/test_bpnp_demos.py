"""The three BPnP demos converge (reduced iteration counts)."""
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "pipelines"))

import bpnp_demo_calibration  # noqa: E402
import bpnp_demo_pose  # noqa: E402
import bpnp_demo_sfm  # noqa: E402


@pytest.fixture(autouse=True, scope="module")
def _single_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def test_pose_demo_reaches_target():
    hist = bpnp_demo_pose.run(iters=120)
    assert hist["rot_err"][0] > 10 and hist["rot_err"][-1] < 0.1
    assert hist["t_err"][-1] < 0.01 * hist["t_err"][0]


def test_sfm_demo_recovers_structure_up_to_similarity():
    hist = bpnp_demo_sfm.run(iters=100)
    assert hist["aligned_error"][0] > 0.2 and hist["aligned_error"][-1] < 0.06
    assert hist["loss"][-1] < 1e-2 * hist["loss"][0]


def test_calibration_demo_learns_intrinsics():
    hist = bpnp_demo_calibration.run(iters=100)
    e = hist["intrinsics_error_px"]
    assert e[0] > 100 and e[-1] < 0.15 * e[0], (e[0], e[-1])
    assert hist["loss"][-1] < 3e-3 * hist["loss"][0]


def test_demo_main_writes_plot(tmp_path):
    assert bpnp_demo_pose.main(["--output", str(tmp_path), "--iters", "5", "--device", "cpu"]) == 0
    assert (tmp_path / "pose_demo.png").stat().st_size > 1000
