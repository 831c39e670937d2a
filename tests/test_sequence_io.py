"""Sequence mode inputs and outputs: image folders, TUM rgb.txt / groundtruth.txt (errors
naming file:line), TUM trajectories, ATE / RPE with evo, the trajectory plot."""
import numpy as np
import pytest
import torch

from hloc_bpnp.geometry import Pose
from hloc_bpnp.io.hloc_text import FormatError
from hloc_bpnp.sequence.frames import (Frame, frames_from_7scenes, frames_from_folder, frames_from_tum, load_frames,
                                       read_tum_groundtruth, read_tum_rgb, sort_frame_names)
from hloc_bpnp.sequence.trajectory import (plot_trajectory, read_tum_trajectory, trajectory_errors,
                                           write_tum_trajectory)

F64 = torch.float64
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _poses(n=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    scale = torch.tensor([0.3] * 3 + [2.0] * 3, dtype=F64)
    return [Pose.from_aa(torch.randn(6, generator=g, dtype=F64) * scale) for _ in range(n)]


def _touch_images(folder, names):
    from hloc_bpnp.io.png import write_png

    for n in names:
        (folder / n).parent.mkdir(parents=True, exist_ok=True)
        write_png(folder / n, np.zeros((4, 4, 3), np.uint8))


def _gt_line(t, cam_from_world):
    w = cam_from_world.inv()
    q = w.qvec().tolist()  # w x y z
    return f"{t} " + " ".join(repr(v) for v in w.t.tolist() + [q[1], q[2], q[3], q[0]])


def _tum(tmp_path, rgb_lines, gt_lines=None):
    root = tmp_path / "tum"
    _touch_images(root / "rgb", ["1.000000.png", "2.000000.png", "3.000000.png"])
    (root / "rgb.txt").write_text("# color images\n# timestamp filename\n" + "\n".join(rgb_lines) + "\n")
    if gt_lines is not None:
        (root / "groundtruth.txt").write_text("# ground truth\n" + "\n".join(gt_lines) + "\n")
    return root


# ------------------------------------------------------------------ frames
def test_folder_order_and_timestamps(tmp_path):
    _touch_images(tmp_path / "a", ["10.png", "2.png", "x.txt.png", "b.JPG"])
    (tmp_path / "a" / "notes.txt").write_text("not an image")
    fr = frames_from_folder(tmp_path / "a")
    assert [f.name for f in fr] == ["2.png", "10.png", "b.JPG", "x.txt.png"]  # natural order
    assert [f.timestamp for f in fr] == [0.0, 1.0, 2.0, 3.0]  # not all stems are numbers: indices
    assert fr[1].path == tmp_path / "a" / "10.png" and fr[1].gt_pose is None
    assert [f.name for f in frames_from_folder(tmp_path / "a", order="name")] == ["10.png", "2.png", "b.JPG",
                                                                                   "x.txt.png"]
    # numeric stems: numeric order, the numbers are the timestamps
    _touch_images(tmp_path / "n", ["10.png", "9.png", "1.png", "100.png"])
    fr = frames_from_folder(tmp_path / "n")
    assert [f.name for f in fr] == ["1.png", "9.png", "10.png", "100.png"]
    assert [f.timestamp for f in fr] == [1.0, 9.0, 10.0, 100.0]
    # equal numbers (01 and 1) do not increase: indices
    _touch_images(tmp_path / "eq", ["01.png", "1.png"])
    assert [f.timestamp for f in frames_from_folder(tmp_path / "eq")] == [0.0, 1.0]
    # TUM-style stems are timestamps
    _touch_images(tmp_path / "tum" / "rgb", ["1341847981.726650.png", "1341847980.722988.png"])
    fr = frames_from_folder(tmp_path / "tum" / "rgb")
    assert [f.timestamp for f in fr] == [1341847980.722988, 1341847981.726650]
    # recursive: names relative with "/" separators
    _touch_images(tmp_path / "r", ["b/1.png", "a/2.png", "0.png"])
    assert [f.name for f in frames_from_folder(tmp_path / "r", recursive=True)] == ["0.png", "a/2.png", "b/1.png"]
    assert [f.name for f in frames_from_folder(tmp_path / "r")] == ["0.png"]


def test_sort_frame_names_orders_and_reports(caplog):
    assert sort_frame_names(["10.png", "2.png", "1.png"]) == (["1.png", "2.png", "10.png"], "numeric")
    assert sort_frame_names(["1.5.png", "1.10.png"]) == (["1.10.png", "1.5.png"], "numeric")  # values
    names = ["frame-10.jpg", "frame-9.jpg", "frame-100.jpg", "a/frame-2.jpg"]
    assert sort_frame_names(names) == (["a/frame-2.jpg", "frame-9.jpg", "frame-10.jpg", "frame-100.jpg"], "natural")
    assert sort_frame_names(names, "name")[0] == sorted(names)
    with pytest.raises(ValueError, match="a/frame-2.jpg.*not named by a number"):
        sort_frame_names(names, "numeric")
    with pytest.raises(ValueError, match="order"):
        sort_frame_names(names, "random")


def test_folder_order_is_logged(tmp_path, caplog):
    _touch_images(tmp_path / "n", ["10.png", "2.png"])
    with caplog.at_level("INFO", logger="hloc_bpnp.sequence.frames"):
        frames_from_folder(tmp_path / "n")
    assert any("numeric order" in r.getMessage() and "2.png ... 10.png" in r.getMessage() for r in caplog.records)


def _seven_scenes(root, seqs=(("seq-01", 0, 3), ("seq-02", 3, 2)), ext=".color.jpg", poses=None):
    """A tiny 7-Scenes scene: frames numbered from `start`, written out of order; returns poses."""
    poses = poses or _poses(sum(n for _, _, n in seqs), seed=3)
    k = 0
    for seq, start, n in seqs:
        for i in reversed(range(n)):
            stem = root / seq / f"frame-{start + i:06d}"
            _touch_images(root / seq, [f"frame-{start + i:06d}{ext}"])
            w = poses[k + i].inv()
            M = np.eye(4)
            M[:3, :3], M[:3, 3] = w.R.numpy(), w.t.numpy()
            stem.with_name(stem.name + ".pose.txt").write_text("\n".join(" ".join(f"{v:.17g}" for v in r) for r in M))
        k += n
    (root / "TrainSplit.txt").write_text("sequence1\n")
    (root / "TestSplit.txt").write_text("sequence2\n")
    return poses


def test_seven_scenes_frames_with_groundtruth(tmp_path):
    root = tmp_path / "scene"
    poses = _seven_scenes(root)
    # a scene: its TestSplit sequences; names seq/file; .pose.txt as cam_from_world
    fr = load_frames(root)
    assert [f.name for f in fr] == ["seq-02/frame-000003.color.jpg", "seq-02/frame-000004.color.jpg"]
    assert fr[0].path == root / "seq-02" / "frame-000003.color.jpg"
    assert [f.timestamp for f in fr] == pytest.approx([0.0, 1 / 30])
    for f, p in zip(fr, poses[3:]):
        assert torch.allclose(f.gt_pose.R, p.R, atol=1e-9) and torch.allclose(f.gt_pose.t, p.t, atol=1e-9)
    assert load_frames(root, groundtruth=None)[0].gt_pose is None
    # a sequence folder: frame-number order, depth / pose files are not frames
    (root / "seq-01" / "frame-000000.depth.png").write_bytes(b"")
    fr = load_frames(root / "seq-01")
    assert [f.name for f in fr] == [f"seq-01/frame-{i:06d}.color.jpg" for i in range(3)]
    assert torch.allclose(fr[2].gt_pose.t, poses[2].t, atol=1e-9)
    assert [f.name for f in frames_from_7scenes(root, split="all")][:3] == [
        "seq-02/frame-000003.color.jpg", "seq-02/frame-000004.color.jpg", "seq-01/frame-000000.color.jpg"]


def test_seven_scenes_frames_errors_name_the_file(tmp_path):
    root = tmp_path / "scene"
    _seven_scenes(root)
    (root / "seq-02" / "frame-000004.pose.txt").write_text("1 0 0 0\n0 1 0 0\n0 0 1\n0 0 0 1\n")
    with pytest.raises(FormatError, match="frame-000004.pose.txt"):
        load_frames(root)
    (root / "seq-02" / "frame-000004.pose.txt").unlink()
    with pytest.raises(FileNotFoundError, match="frame-000004.pose.txt"):
        load_frames(root)
    (root / "TestSplit.txt").write_text("sequence7\n")
    with pytest.raises(FileNotFoundError, match="seq-07"):
        load_frames(root)
    with pytest.raises(ValueError, match="not a 7-Scenes"):
        frames_from_7scenes(tmp_path)


def test_seven_scenes_shared_copy(shared_data):
    root = shared_data / "seven_scenes_redkitchen"
    if not root.is_dir():
        pytest.skip("no RedKitchen copy")
    fr = load_frames(root)
    assert len(fr) == 200 and fr[0].name == "seq-02/frame-000400.color.jpg"
    assert fr[-1].name == "seq-02/frame-000599.color.jpg" and all(f.gt_pose is not None for f in fr)
    c = np.stack([f.gt_pose.center.numpy() for f in fr])
    assert np.median(np.linalg.norm(np.diff(c, axis=0), axis=1)) < 0.05  # consecutive video frames: cm apart


def test_folder_errors_name_the_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing"):
        frames_from_folder(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="empty.*no image"):
        frames_from_folder(tmp_path / "empty")


def test_load_frames_dispatch(tmp_path):
    # a TUM folder without rgb.txt: the images of rgb/, names rgb/...
    _touch_images(tmp_path / "tum" / "rgb", ["1341847980.722988.png", "1341847981.726650.png"])
    fr = load_frames(tmp_path / "tum")
    assert [f.name for f in fr] == ["rgb/1341847980.722988.png", "rgb/1341847981.726650.png"]
    assert fr[0].timestamp == pytest.approx(1341847980.722988)
    assert fr[1].path == tmp_path / "tum" / "rgb" / "1341847981.726650.png"
    # ... with a groundtruth.txt beside: associated by the name timestamps
    p = _poses(1)[0]
    (tmp_path / "tum" / "groundtruth.txt").write_text(_gt_line(1341847980.7230, p) + "\n")
    fr = load_frames(tmp_path / "tum")
    assert fr[0].gt_pose is not None and fr[1].gt_pose is None
    assert torch.allclose(fr[0].gt_pose.t, p.t, atol=1e-9)
    assert load_frames(tmp_path / "tum", groundtruth=None)[0].gt_pose is None
    # a plain image folder
    _touch_images(tmp_path / "imgs", ["b.png", "a.png"])
    assert [f.name for f in load_frames(tmp_path / "imgs")] == ["a.png", "b.png"]
    # a TUM folder and its rgb.txt
    root = _tum(tmp_path / "t2", ["1.0 rgb/1.000000.png", "2.0 rgb/2.000000.png"])
    assert [f.name for f in load_frames(root)] == ["rgb/1.000000.png", "rgb/2.000000.png"]
    assert [f.timestamp for f in load_frames(root / "rgb.txt")] == [1.0, 2.0]
    # errors naming the path
    with pytest.raises(FileNotFoundError, match="nowhere"):
        load_frames(tmp_path / "nowhere")
    with pytest.raises(ValueError, match="a.png"):
        load_frames(tmp_path / "imgs" / "a.png")
    (tmp_path / "void").mkdir()
    with pytest.raises(ValueError, match="void"):
        load_frames(tmp_path / "void")


def test_tum_rgb_round_trip(tmp_path):
    stamps = [1341847980.722988, 1341847981.72665, 1341847982.730674]
    names = [f"rgb/{t:.6f}.png" for t in stamps]
    _touch_images(tmp_path, names)
    text = "# color images\n# file: 'x.bag'\n\n" + "".join(f"{t:.6f} {n}\n" for t, n in zip(stamps, names))
    (tmp_path / "rgb.txt").write_text(text)
    entries = read_tum_rgb(tmp_path / "rgb.txt")
    assert [(t, n) for t, n, _ in entries] == list(zip(stamps, names))
    assert [ln for _, _, ln in entries] == [4, 5, 6]
    fr = frames_from_tum(tmp_path)
    assert [(f.timestamp, f.name, f.path) for f in fr] == [(t, n, tmp_path / n) for t, n in zip(stamps, names)]
    assert all(f.gt_pose is None for f in fr)  # no groundtruth.txt


def test_tum_groundtruth_association(tmp_path):
    poses = _poses(4)
    # frame 1.0: GT at 0.99 (0.01 s) and 1.005 (0.005 s): the nearer; frame 2.0: GT 2.015 within
    # 0.02 s; frame 3.0: nearest GT 0.5 s away -> none. GT lines need not be sorted.
    gt_lines = [_gt_line(t, p) for t, p in zip([1.005, 2.015, 0.99, 3.5], poses)]
    root = _tum(tmp_path, ["1.0 rgb/1.000000.png", "2.0 rgb/2.000000.png", "3.0 rgb/3.000000.png"], gt_lines)
    fr = frames_from_tum(root)
    assert [f.name for f in fr] == ["rgb/1.000000.png", "rgb/2.000000.png", "rgb/3.000000.png"]
    for f, want in zip(fr, [poses[0], poses[1], None]):
        if want is None:
            assert f.gt_pose is None
        else:
            assert f.gt_pose.R.shape == (3, 3) and f.gt_pose.R.dtype == F64
            assert torch.allclose(f.gt_pose.R, want.R, atol=1e-12) and torch.allclose(f.gt_pose.t, want.t, atol=1e-12)
    fr = frames_from_tum(root, max_dt=0.01)
    assert fr[0].gt_pose is not None and fr[1].gt_pose is None
    assert all(f.gt_pose is None for f in frames_from_tum(root / "rgb.txt", groundtruth=None))
    # an explicit ground-truth file elsewhere
    other = tmp_path / "gt_elsewhere.txt"
    other.write_text(_gt_line(3.0, poses[3]) + "\n")
    fr = frames_from_tum(root, groundtruth=other)
    assert [f.gt_pose is not None for f in fr] == [False, False, True]
    with pytest.raises(FileNotFoundError):
        frames_from_tum(root, groundtruth=tmp_path / "none.txt")


@pytest.mark.parametrize("bad,match", [
    ("2.0", r"rgb\.txt:4: expected 'timestamp filename', got 1 fields"),
    ("2.0 rgb/2.000000.png extra", r"rgb\.txt:4: expected 'timestamp filename', got 3 fields"),
    ("abc rgb/2.000000.png", r"rgb\.txt:4: timestamp 'abc' is not a finite number"),
    ("nan rgb/2.000000.png", r"rgb\.txt:4: timestamp 'nan'"),
    ("0.5 rgb/2.000000.png", r"rgb\.txt:4: timestamp 0.5 does not increase"),
    ("1.0 rgb/2.000000.png", r"rgb\.txt:4: timestamp 1.0 does not increase"),
])
def test_malformed_rgb_line_names_file_and_line(tmp_path, bad, match):
    root = _tum(tmp_path, ["1.0 rgb/1.000000.png", bad])
    with pytest.raises(FormatError, match=match):
        frames_from_tum(root)
    with pytest.raises(FormatError, match=match):
        read_tum_rgb(root / "rgb.txt")


def test_missing_listed_file_names_line_and_path(tmp_path):
    root = _tum(tmp_path, ["1.0 rgb/1.000000.png", "2.0 rgb/missing.png", "3.0 rgb/3.000000.png",
                           "4.0 rgb/gone.png"])
    with pytest.raises(FormatError, match=r"rgb\.txt:4: listed image .*rgb/missing\.png does not exist "
                                          r"\(1 more listed images missing\)"):
        frames_from_tum(root)
    (root / "rgb.txt").write_text("")
    with pytest.raises(FormatError, match="no frame listed"):
        frames_from_tum(root)
    with pytest.raises(FileNotFoundError, match="rgb.txt"):
        frames_from_tum(tmp_path / "nothing_here")


@pytest.mark.parametrize("bad,match", [
    ("1.0 0 0 0 0 0 0", r"groundtruth\.txt:3: expected 'timestamp tx ty tz qx qy qz qw', got 7 fields"),
    ("1.0 0 0 0 0 0 0 1 5", r"groundtruth\.txt:3: expected .* got 9 fields"),
    ("1.0 0 0 zero 0 0 0 1", r"groundtruth\.txt:3: .*'zero' is not a number"),
    ("1.0 0 0 inf 0 0 0 1", r"groundtruth\.txt:3: .*'inf' is not finite"),
    ("1.0 0 0 0 0 0 0 2", r"groundtruth\.txt:3: quaternion .* has norm 2\.0000, not 1"),
    ("1.0 0 0 0 0 0 0 0", r"groundtruth\.txt:3: quaternion .* has norm 0\.0000, not 1"),
])
def test_malformed_groundtruth_line_names_file_and_line(tmp_path, bad, match):
    root = _tum(tmp_path, ["1.0 rgb/1.000000.png"], ["0.5 0 0 0 0 0 0 1", bad])
    with pytest.raises(FormatError, match=match):
        frames_from_tum(root)
    with pytest.raises(FormatError, match=match):
        read_tum_groundtruth(root / "groundtruth.txt")
    assert frames_from_tum(root, groundtruth=None)[0].gt_pose is None  # the frames alone are fine


def test_groundtruth_quaternion_normalized_and_convention(tmp_path):
    # camera at (1, 2, 3), rotated 90 deg about z (camera-to-world), quaternion slightly off unit norm
    s = float(np.sqrt(0.5) * 1.004)
    (tmp_path / "gt.txt").write_text(f"5.0 1 2 3 0 0 {s!r} {s!r}\n")
    ts, (p,) = read_tum_groundtruth(tmp_path / "gt.txt")
    assert ts.tolist() == [5.0]
    Rz = torch.tensor([[0.0, -1, 0], [1, 0, 0], [0, 0, 1]], dtype=F64)  # camera-to-world
    assert torch.allclose(p.R, Rz.T, atol=1e-12)  # cam_from_world
    assert torch.allclose(p.center, torch.tensor([1.0, 2, 3], dtype=F64), atol=1e-12)


# ------------------------------------------------------------------ trajectories
def test_tum_trajectory_round_trip_and_camera_centres(tmp_path):
    poses = _poses(5)
    stamps = [1341847980.722988 + 0.1 * i for i in range(5)]
    path = write_tum_trajectory(tmp_path / "out" / "traj.txt", stamps, poses)
    assert path == tmp_path / "out" / "traj.txt" and not (tmp_path / "out" / "traj.txt.tmp").exists()
    text = path.read_text().splitlines()
    assert text[0].startswith("#")
    ts, back = read_tum_trajectory(path)
    assert np.allclose(ts, stamps, rtol=0, atol=1e-6)
    for a, b in zip(poses, back):
        assert torch.allclose(a.R, b.R, atol=1e-9) and torch.allclose(a.t, b.t, atol=1e-9)
    first = text[1].split()
    assert first[0] == f"{stamps[0]:.6f}" and len(first) == 8
    assert np.allclose([float(v) for v in first[1:4]], poses[0].center.numpy(), atol=1e-12)  # t = camera centre
    # the file is the one evo reads
    from evo.tools import file_interface

    traj = file_interface.read_tum_trajectory_file(str(path))
    assert np.allclose(traj.positions_xyz, np.stack([p.center.numpy() for p in poses]), atol=1e-12)
    with pytest.raises(ValueError, match="2 timestamps but 5 poses"):
        write_tum_trajectory(tmp_path / "bad.txt", stamps[:2], poses)
    assert not (tmp_path / "bad.txt").exists()


def _similar_copy(poses, s, aa, shift):
    """cam_from_world poses of the same cameras in a world transformed by x -> s R x + shift."""
    Rw = Pose.from_aa(torch.tensor(aa + [0.0, 0.0, 0.0], dtype=F64)).R
    return [Pose.from_center(p.R @ Rw.T, s * (Rw @ p.center) + torch.tensor(shift, dtype=F64)) for p in poses]


def test_trajectory_errors_zero_offset_and_direct_rmse():
    gt = _poses(8, seed=1)
    ts = list(range(8))
    z = trajectory_errors(gt, gt, ts)
    assert z["n"] == 8 and z["scale"] == 1.0
    assert z["ate_rmse"] < 1e-12 and z["ate_max"] < 1e-12 and z["rpe_trans_rmse"] < 1e-12
    assert z["rpe_rot_deg_rmse"] < 1e-6
    # constant 0.1 offset of the centres, rotations unchanged
    shifted = [Pose.from_center(p.R, p.center + torch.tensor([0.0, 0.1, 0.0], dtype=F64)) for p in gt]
    e = trajectory_errors(shifted, gt, ts)
    for k in ("ate_rmse", "ate_mean", "ate_median", "ate_max"):
        assert e[k] == pytest.approx(0.1, rel=1e-9)
    assert e["rpe_trans_rmse"] < 1e-9 and e["rpe_rot_deg_rmse"] < 1e-6
    # se3 alignment removes a constant offset
    assert trajectory_errors(shifted, gt, ts, align="se3")["ate_rmse"] < 1e-9
    # random noise: evo's ATE agrees with a direct numpy RMSE of the centre differences
    g = torch.Generator().manual_seed(3)
    est = [Pose.from_center(p.R, p.center + 0.05 * torch.randn(3, generator=g, dtype=F64)) for p in gt]
    e = trajectory_errors(est, gt, ts)
    d = np.stack([(a.center - b.center).numpy() for a, b in zip(est, gt)])
    dist = np.linalg.norm(d, axis=1)
    assert e["ate_rmse"] == pytest.approx(np.sqrt(np.mean(dist ** 2)), rel=1e-9)
    assert e["ate_mean"] == pytest.approx(dist.mean(), rel=1e-9)
    assert e["ate_median"] == pytest.approx(np.median(dist), rel=1e-9)
    assert e["ate_max"] == pytest.approx(dist.max(), rel=1e-9)
    # RPE (delta 1): relative translation error between consecutive frames, direct
    rel = []
    for i in range(7):
        Qg = gt[i].compose(gt[i + 1].inv())   # world_from_cam_i^-1 world_from_cam_i+1 == cam_i_from_cam_i+1
        Qe = est[i].compose(est[i + 1].inv())
        E = Qg.inv().compose(Qe)
        rel.append(float(E.t.norm()))
    assert e["rpe_trans_rmse"] == pytest.approx(np.sqrt(np.mean(np.square(rel))), rel=1e-9)
    e2 = trajectory_errors(est, gt, ts, rpe_delta=7)
    assert e2["rpe_trans_rmse"] is not None and trajectory_errors(est, gt, ts, rpe_delta=8)["rpe_trans_rmse"] is None


def test_trajectory_errors_sim3_recovers_scaled_rotated_copy():
    gt = _poses(8, seed=1)
    ts = [0.1 * i for i in range(8)]
    s = 2.5
    est = _similar_copy(gt, 1.0 / s, [0.2, -0.1, 0.3], [1.0, 2.0, 3.0])  # gt = s R est + t
    assert trajectory_errors(est, gt, ts)["ate_rmse"] > 1.0
    a = trajectory_errors(est, gt, ts, align="sim3")
    assert a["ate_rmse"] < 1e-9 and a["ate_max"] < 1e-9
    assert a["scale"] == pytest.approx(s, rel=1e-9)
    assert a["rpe_trans_rmse"] < 1e-9 and a["rpe_rot_deg_rmse"] < 1e-5
    rigid = _similar_copy(gt, 1.0, [0.2, -0.1, 0.3], [1.0, 2.0, 3.0])
    r = trajectory_errors(rigid, gt, ts, align="se3")
    assert r["ate_rmse"] < 1e-9 and r["scale"] == 1.0
    assert trajectory_errors(est, gt, ts, align="se3")["ate_rmse"] > 0.1  # se3 cannot undo a scale


def test_trajectory_errors_edge_cases():
    gt = _poses(3)
    one = trajectory_errors(gt[:1], gt[:1], [0.0])
    assert one["n"] == 1 and one["ate_rmse"] < 1e-12
    assert one["rpe_trans_rmse"] is None and one["rpe_rot_deg_rmse"] is None
    with pytest.raises(ValueError, match="equal in number"):
        trajectory_errors(gt[:2], gt, [0, 1, 2])
    with pytest.raises(ValueError, match="equal in number"):
        trajectory_errors(gt, gt, [0, 1])
    with pytest.raises(ValueError, match="no pose"):
        trajectory_errors([], [], [])
    with pytest.raises(ValueError, match="align"):
        trajectory_errors(gt, gt, [0, 1, 2], align="umeyama")
    with pytest.raises(ValueError, match="at least 3"):
        trajectory_errors(gt[:2], gt[:2], [0, 1], align="sim3")


def test_plot_trajectory_writes_png_with_nan_rows_and_lost_frames(tmp_path):
    import struct

    gt = _poses(6)
    C = np.stack([p.center.numpy() for p in gt])
    est = C + 0.01
    est[2] = np.nan
    est[5] = np.nan
    status = ["relocalized", "tracked", "lost", "tracked", "tracked", "lost"]
    out = plot_trajectory(tmp_path / "plots" / "t.png", est, C, status, map_centers=C[:2] + 1, title="test")
    data = out.read_bytes()
    assert out == tmp_path / "plots" / "t.png" and data[:8] == PNG_SIGNATURE and data[12:16] == b"IHDR"
    w, h = struct.unpack(">II", data[16:24])
    assert w > 100 and h > 100
    assert not (tmp_path / "plots" / "t.png.tmp").exists()
    # no GT (lost frames cannot be placed), GT with unknown rows, no pose at all, unknown status
    gt_partial = C.copy()
    gt_partial[5] = np.nan
    for i, (g, e, st) in enumerate([(None, est, status), (gt_partial, est, status),
                                    (C, np.full((6, 3), np.nan), ["lost"] * 6),
                                    (None, est, ["tracked", "skipped", "lost", "tracked", "tracked", "lost"])]):
        p = plot_trajectory(tmp_path / f"t{i}.png", e, g, st)
        assert p.read_bytes()[:8] == PNG_SIGNATURE
    with pytest.raises(ValueError, match="statuses"):
        plot_trajectory(tmp_path / "x.png", est, C, status[:3])
    with pytest.raises(ValueError, match="gt_centers"):
        plot_trajectory(tmp_path / "x.png", est, C[:3], status)


def test_frame_dataclass_defaults():
    f = Frame("a.png", None, 0.0)
    assert f.gt_pose is None and f.path is None
