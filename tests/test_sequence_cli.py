"""`hloc-bpnp track` on a TUM-layout folder and `pipelines/sequence.py --synthetic` (short)."""
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
SEQ = {"preset": "small", "map_arc_deg": [0, 120], "num_map": 5, "path_arc_deg": [60, 180],
       "step_deg": 10, "cut_arc_deg": [40, 50]}


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    from hloc_bpnp.mapping import build_map_from_poses
    from hloc_bpnp.sequence.synthetic import generate_sequence

    seq = generate_sequence(SEQ, seed=1)
    m = build_map_from_poses(seq.scene.map_scene, seq.scene.images, "default", progress=False)
    d = tmp_path_factory.mktemp("seq")
    m.save(d / "map")
    return seq, d


def test_track_command_on_a_tum_folder(small, tmp_path):
    from hloc_bpnp.cli import main
    from hloc_bpnp.io.png import write_png
    from hloc_bpnp.sequence.trajectory import read_tum_trajectory

    seq, d = small
    root = tmp_path / "tum"
    (root / "rgb").mkdir(parents=True)
    rgb, gt = ["# timestamp filename"], ["# timestamp tx ty tz qx qy qz qw"]
    bad = 3
    for i, n in enumerate(seq.names):
        t = 100.0 + i * 0.1
        fname = f"rgb/{t:.6f}.png"
        if i == bad:
            (root / fname).write_bytes(b"\x89PNG\r\n\x1a\nthis is not a png")
        else:
            write_png(root / fname, seq.images[n])
        rgb.append(f"{t:.6f} {fname}")
        w = seq.poses[n].inv()
        q = w.qvec().tolist()
        gt.append(f"{t:.6f} " + " ".join(f"{v:.12g}" for v in w.t.tolist() + [q[1], q[2], q[3], q[0]]))
    (root / "rgb.txt").write_text("\n".join(rgb) + "\n")
    (root / "groundtruth.txt").write_text("\n".join(gt) + "\n")
    c = seq.camera
    p = [float(v) for v in c.params.tolist()]
    out = tmp_path / "out"
    rc = main(["track", "--map", str(d / "map"), "--frames", str(root), "--intrinsics", *map(str, p),
               "--output", str(out), "--plot", "--save-map", str(tmp_path / "grown")])
    assert rc == 0
    frames = json.loads((out / "frames.json").read_text())["frames"]
    assert len(frames) == len(seq.names)
    assert frames[bad]["status"] == "lost" and "image_error" in frames[bad]["reason"]
    assert str(root / f"rgb/{100.0 + bad * 0.1:.6f}.png") in frames[bad]["reason"]
    assert all(f["status"] != "lost" for i, f in enumerate(frames) if i != bad)
    assert frames[0]["status"] == "relocalized"
    assert frames[SEQ_CUT(seq)]["status"] == "relocalized"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_localized"] == len(seq.names) - 1 and summary["has_groundtruth"]
    assert summary["ate_cm"] is not None and summary["ate_cm"] < 10.0  # metres x 100
    ts, poses = read_tum_trajectory(out / "trajectory.txt")
    assert len(poses) == len(seq.names) - 1
    lines = [ln for ln in (out / "results.txt").read_text().splitlines() if ln.strip()]
    assert len(lines) == len(seq.names) - 1
    assert (out / "trajectory.png").read_bytes()[:4] == b"\x89PNG"
    assert (tmp_path / "grown" / "map.json").exists()


def SEQ_CUT(seq):
    return seq.cut_index


def test_track_command_reports_malformed_rgb_txt(small, tmp_path, caplog):
    from hloc_bpnp.cli import main

    _, d = small
    root = tmp_path / "tum"
    root.mkdir()
    (root / "rgb.txt").write_text("# x\n1.0 rgb/a.png\n")
    rc = main(["track", "--map", str(d / "map"), "--frames", str(root), "--output", str(tmp_path / "o")])
    assert rc != 0
    assert any("rgb.txt:2: listed image" in r.getMessage() and "a.png does not exist" in r.getMessage()
               for r in caplog.records)
    assert not (tmp_path / "o").exists()


def test_sequence_pipeline_synthetic_contract(tmp_path):
    spec = importlib.util.spec_from_file_location("pipeline_sequence", ROOT / "pipelines" / "sequence.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    res = mod.run_synthetic(tmp_path, seed=2, seq_source=dict(SEQ, path_arc_deg=[90, 190]), progress=False)
    saved = json.loads((tmp_path / "results.json").read_text())
    assert set(saved["summary"]) >= {"sequence", "independent"}
    keys = {"n_frames", "n_localized", "n_relocalized", "ate_cm", "median_rot_deg", "median_pos_cm",
            "seconds_per_frame"}
    for mode in ("sequence", "independent"):
        assert keys <= set(saved["summary"][mode])
    s, ind = saved["summary"]["sequence"], saved["summary"]["independent"]
    assert s["n_localized"] == s["n_frames"] == len(saved["frames"])
    assert s["n_relocalized"] >= 2  # the first frame and the cut
    assert saved["summary"]["cut"]["status"] == "relocalized"
    out = saved["summary"]["outside_coverage"]
    assert out["n_frames"] >= 1 and out["sequence_localized"] == out["n_frames"]
    assert ind["n_localized"] < ind["n_frames"]  # per-frame localization fails outside coverage
    assert np.isfinite(s["ate_cm"]) and s["ate_cm"] < 10
    for f in ("sequence_trajectory.txt", "sequence_results.txt", "independent_results.txt", "groundtruth.txt",
              "trajectory.png", "grown_map/map.json"):
        assert (tmp_path / f).exists(), f
    assert res["summary"]["sequence"]["n_frames"] == s["n_frames"]


def test_track_command_on_a_video_with_a_rerun_recording(small, tmp_path):
    """`hloc-bpnp track --frames video.mp4 --rerun out.rrd`: frames decoded in order, tracked,
    timestamps from the stream; the recording holds the map, the trajectory and every frame."""
    av = pytest.importorskip("av")
    pytest.importorskip("rerun")
    from fractions import Fraction

    from hloc_bpnp.cli import main
    from hloc_bpnp.sequence.viewer import read_recording

    seq, d = small
    video = tmp_path / "orbit.mp4"
    with av.open(str(video), "w") as c:
        s = c.add_stream("mpeg4", rate=Fraction(5))
        s.width, s.height, s.pix_fmt = seq.camera.width, seq.camera.height, "yuv420p"
        s.bit_rate = 8_000_000
        for n in seq.names:
            for p in s.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(seq.images[n]), format="rgb24")):
                c.mux(p)
        for p in s.encode(None):
            c.mux(p)
    p = [float(v) for v in seq.camera.params.tolist()]
    out, rrd = tmp_path / "out", tmp_path / "track.rrd"
    rc = main(["track", "--map", str(d / "map"), "--frames", str(video), "--intrinsics", *map(str, p),
               "--output", str(out), "--rerun", str(rrd)])
    assert rc == 0
    frames = json.loads((out / "frames.json").read_text())["frames"]
    n = len(seq.names)
    assert [f["name"] for f in frames] == [f"orbit/frame-{i:06d}" for i in range(n)]
    assert [f["timestamp"] for f in frames] == pytest.approx([i / 5 for i in range(n)])
    # the synthetic orbit tracks from the video as from the PNG frames (cut relocalized)
    assert all(f["status"] != "lost" for f in frames)
    assert frames[SEQ_CUT(seq)]["status"] == "relocalized"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_localized"] == n and not summary["has_groundtruth"]
    rec = read_recording(rrd)
    assert sum(b.num_rows for b in rec["/status"]) == n
    assert sum(b.num_rows for b in rec["/world/camera"]) == n
    assert "/world/map/points" in rec and "/world/trajectory/estimated" in rec
    images = [b for b in rec["/world/camera/image"] if "EncodedImage:blob" in b.schema.names]
    assert sum(b.num_rows for b in images) == n
