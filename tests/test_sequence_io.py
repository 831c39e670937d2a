"""Sequence mode inputs and outputs: image folders, TUM rgb.txt / groundtruth.txt (errors
naming file:line), TUM trajectories, ATE / RPE with evo, the trajectory plot."""
import numpy as np
import pytest
import torch

from hloc_bpnp.geometry import Pose
from hloc_bpnp.io.hloc_text import FormatError
from hloc_bpnp.sequence.frames import (frames_from_folder, frames_from_tum, load_frames, read_tum_groundtruth,
                                       read_tum_rgb)
from hloc_bpnp.sequence.trajectory import (plot_trajectory, read_tum_trajectory, trajectory_errors,
                                           write_tum_trajectory)


def _poses(n=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [Pose.from_aa(torch.randn(6, generator=g, dtype=torch.float64) * torch.tensor([0.3] * 3 + [2.0] * 3,
                                                                                         dtype=torch.float64))
            for _ in range(n)]


def _touch_images(folder, names):
    from hloc_bpnp.io.png import write_png

    folder.mkdir(parents=True, exist_ok=True)
    for n in names:
        write_png(folder / n, np.zeros((4, 4, 3), np.uint8))


def test_folder_order_and_timestamps(tmp_path):
    _touch_images(tmp_path / "a", ["10.png", "2.png", "x.txt.png"])
    fr = frames_from_folder(tmp_path / "a")
    assert [f.name for f in fr] == ["10.png", "2.png", "x.txt.png"]
    assert [f.timestamp for f in fr] == [0.0, 1.0, 2.0]  # not all stems are numbers: indices
    _touch_images(tmp_path / "tum" / "rgb", ["1341847980.722988.png", "1341847981.726650.png"])
    fr = load_frames(tmp_path / "tum")  # no rgb.txt, images under rgb/
    assert [f.name for f in fr] == ["rgb/1341847980.722988.png", "rgb/1341847981.726650.png"]
    assert fr[0].timestamp == pytest.approx(1341847980.722988)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        frames_from_folder(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no image"):
        frames_from_folder(tmp_path / "empty")


def _tum(tmp_path, rgb_lines, gt_lines=None):
    root = tmp_path / "tum"
    _touch_images(root / "rgb", ["1.000000.png", "2.000000.png", "3.000000.png"])
    (root / "rgb.txt").write_text("# color images\n# timestamp filename\n" + "\n".join(rgb_lines) + "\n")
    if gt_lines is not None:
        (root / "groundtruth.txt").write_text("# ground truth\n" + "\n".join(gt_lines) + "\n")
    return root


def test_tum_rgb_and_groundtruth_association(tmp_path):
    poses = _poses(3)
    gt_lines = []
    for t, p in zip([1.005, 2.0, 3.5], poses):
        w = p.inv()
        q = w.qvec().tolist()
        gt_lines.append(f"{t} " + " ".join(str(v) for v in w.t.tolist() + [q[1], q[2], q[3], q[0]]))
    root = _tum(tmp_path, ["1.0 rgb/1.000000.png", "2.0 rgb/2.000000.png", "3.0 rgb/3.000000.png"], gt_lines)
    fr = frames_from_tum(root)
    assert [f.name for f in fr] == ["rgb/1.000000.png", "rgb/2.000000.png", "rgb/3.000000.png"]
    assert fr[0].gt_pose is not None and fr[1].gt_pose is not None
    assert fr[2].gt_pose is None  # nearest GT 0.5 s away > max_dt
    assert torch.allclose(fr[1].gt_pose.R, poses[1].R, atol=1e-12) and torch.allclose(fr[1].gt_pose.t, poses[1].t)
    assert frames_from_tum(root / "rgb.txt", groundtruth=None)[0].gt_pose is None


@pytest.mark.parametrize("bad,match", [
    ("2.0", "rgb.txt:4: expected 'timestamp filename'"),
    ("abc rgb/2.000000.png", "rgb.txt:4: timestamp 'abc'"),
    ("0.5 rgb/2.000000.png", "rgb.txt:4: timestamp 0.5 does not increase"),
    ("2.0 rgb/missing.png", "rgb.txt:4: listed image .*missing.png does not exist"),
])
def test_tum_rgb_errors_name_file_and_line(tmp_path, bad, match):
    root = _tum(tmp_path, ["1.0 rgb/1.000000.png", bad])
    with pytest.raises(FormatError, match=match):
        frames_from_tum(root)


@pytest.mark.parametrize("bad,match", [
    ("1.0 0 0 0 0 0 0", "groundtruth.txt:3: expected 'timestamp tx ty tz qx qy qz qw'"),
    ("1.0 0 0 zero 0 0 0 1", "groundtruth.txt:3: not a finite number: 'zero'"),
    ("1.0 0 0 0 0 0 0 2", "groundtruth.txt:3: quaternion norm 2.0000 is not 1"),
])
def test_tum_groundtruth_errors_name_file_and_line(tmp_path, bad, match):
    root = _tum(tmp_path, ["1.0 rgb/1.000000.png"], ["0.5 0 0 0 0 0 0 1", bad])
    with pytest.raises(FormatError, match=match):
        frames_from_tum(root)
    with pytest.raises(FormatError):
        read_tum_groundtruth(root / "groundtruth.txt")
    assert len(read_tum_rgb(root / "rgb.txt")) == 1


def test_tum_trajectory_round_trip_and_camera_centres(tmp_path):
    poses = _poses(5)
    path = write_tum_trajectory(tmp_path / "traj.txt", [0.1 * i for i in range(5)], poses)
    assert not (tmp_path / "traj.txt.tmp").exists()
    ts, back = read_tum_trajectory(path)
    assert np.allclose(ts, [0.1 * i for i in range(5)])
    for a, b in zip(poses, back):
        assert torch.allclose(a.R, b.R, atol=1e-9) and torch.allclose(a.t, b.t, atol=1e-9)
    first = [ln for ln in path.read_text().splitlines() if not ln.startswith("#")][0].split()
    assert np.allclose([float(v) for v in first[1:4]], poses[0].center.numpy(), atol=1e-9)


def test_trajectory_errors_match_direct_computation():
    gt = _poses(8, seed=1)
    z = trajectory_errors(gt, gt, list(range(8)))
    assert z["ate_rmse"] < 1e-12 and z["rpe_trans_rmse"] < 1e-12 and z["rpe_rot_deg_rmse"] < 1e-9
    g = torch.Generator().manual_seed(3)
    est = [Pose.from_center(p.R, p.center + 0.05 * torch.randn(3, generator=g, dtype=torch.float64)) for p in gt]
    e = trajectory_errors(est, gt, list(range(8)))
    direct = np.sqrt(np.mean([float(((a.center - b.center) ** 2).sum()) for a, b in zip(est, gt)]))
    assert e["ate_rmse"] == pytest.approx(direct, rel=1e-9)
    shifted = [Pose.from_center(p.R, p.center + torch.tensor([0.1, 0, 0], dtype=torch.float64)) for p in gt]
    assert trajectory_errors(shifted, gt, list(range(8)))["ate_rmse"] == pytest.approx(0.1)
    # a similarity copy: sim3 alignment recovers it (scale of est -> gt)
    s, Rw = 2.5, Pose.from_aa(torch.tensor([0.2, -0.1, 0.3, 0, 0, 0], dtype=torch.float64)).R
    sim = [Pose.from_center(p.R @ Rw.T, s * (Rw @ p.center) + torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64))
           for p in gt]
    a = trajectory_errors(sim, gt, list(range(8)), align="sim3")
    assert a["ate_rmse"] < 1e-6 and a["scale"] == pytest.approx(1 / s, rel=1e-6)
    assert trajectory_errors(sim, gt, list(range(8)))["ate_rmse"] > 1.0
    with pytest.raises(ValueError, match="equal in number"):
        trajectory_errors(gt[:3], gt, list(range(8)))


def test_plot_trajectory_writes_png_with_lost_frames(tmp_path):
    gt = _poses(5)
    C = np.stack([p.center.numpy() for p in gt])
    est = C + 0.01
    est[2] = np.nan
    out = plot_trajectory(tmp_path / "t.png", est, C, ["relocalized", "tracked", "lost", "tracked", "tracked"],
                          map_centers=C[:2] + 1, title="test")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    out2 = plot_trajectory(tmp_path / "t2.png", est, None, ["relocalized", "tracked", "lost", "tracked", "lost"])
    assert out2.stat().st_size > 1000
