"""The sequence viewer: a Rerun recording of a tracked run, read back and checked."""
import numpy as np
import pytest
import torch

pytest.importorskip("rerun")

from hloc_bpnp.sequence.viewer import SequenceViewer, frustum_strips, read_recording  # noqa: E402

SEQ = {"preset": "small", "map_arc_deg": [0, 120], "num_map": 5, "path_arc_deg": [60, 100],
       "step_deg": 10, "cut_arc_deg": [40, 50]}  # inside the map's arc: every frame localizes


def _column(batches, name):
    """All rows of one component column, flattened to numpy (one array per logged row)."""
    rows = []
    for b in batches:
        if name in b.schema.names:
            rows.extend(b.column(name).to_pylist())
    return rows


def test_frustum_strips_geometry():
    from hloc_bpnp.geometry import Pose

    pose = Pose.from_aa(torch.tensor([0.1, -0.2, 0.3, 1.0, 2.0, 3.0], dtype=torch.float64))
    K = np.array([[100.0, 0, 40], [0, 100.0, 30], [0, 0, 1]])
    C = pose.center.numpy()
    strips = frustum_strips(pose.R.numpy()[None], C[None], K[None], [[80, 60]], depth=2.0)
    assert len(strips) == 5 and strips[0].shape == (5, 3)
    corners = strips[0][:4]
    # each corner lies at depth 2 in the camera and projects to an image corner
    cam = corners @ pose.R.numpy().T + pose.t.numpy()
    assert np.allclose(cam[:, 2], 2.0)
    px = cam @ K.T
    assert np.allclose(px[:, :2] / px[:, 2:], [[0, 0], [80, 0], [80, 60], [0, 60]], atol=1e-9)
    assert all(np.allclose(s[0], C) for s in strips[1:])


def test_viewer_records_a_tracked_run(tmp_path):
    from hloc_bpnp.localization import Localizer
    from hloc_bpnp.mapping import build_map_from_poses
    from hloc_bpnp.sequence import Frame, SequenceLocalizer
    from hloc_bpnp.sequence.synthetic import generate_sequence

    seq = generate_sequence(SEQ, seed=1)
    m = build_map_from_poses(seq.scene.map_scene, seq.scene.images, "default", progress=False)
    frames = [Frame(n, None, float(i), seq.poses[n], image=seq.images[n]) for i, n in enumerate(seq.names)]
    sl = SequenceLocalizer(Localizer(m, "default"))
    # sequence mode grows the map in place: keep the prebuilt map as first logged
    points0, names0 = m.points3D.copy(), list(m.image_names)
    rrd = tmp_path / "run.rrd"
    with SequenceViewer(rrd, image_max_size=160) as viewer:
        viewer.log_map(sl.map)
        out = sl.run([(f.name, f.image, f.timestamp) for f in frames], seq.camera, progress=False,
                     on_frame=viewer.callback(frames, sl))
    n = len(frames)
    assert all(f.status != "lost" for f in out)
    rec = read_recording(rrd)
    # the map: its points (first log) and one frustum + centre per map image
    pts = _column(rec["/world/map/points"], "Points3D:positions")
    assert len(pts[0]) == len(points0)
    assert np.allclose(np.array(pts[0]), points0, atol=1e-4)
    centers = _column(rec["/world/map/keyframes/centers"], "Points3D:positions")
    assert len(centers[0]) == len(names0)
    assert len(_column(rec["/world/map/keyframes"], "LineStrips3D:strips")[0]) == 5 * len(names0)
    # one pose per frame: the camera centre of the estimated pose (world from camera)
    tr = np.array(_column(rec["/world/camera"], "Transform3D:translation")).reshape(-1, 3)
    assert tr.shape == (n, 3)
    est = np.stack([f.pose.center.numpy() for f in out])
    assert np.allclose(tr, est, atol=1e-4)
    # trajectories: the last logged strips hold every frame, estimated close to the ground truth
    est_strip = np.array(_column(rec["/world/trajectory/estimated"], "LineStrips3D:strips")[-1][0])
    gt_strip = np.array(_column(rec["/world/trajectory/groundtruth"], "LineStrips3D:strips")[-1][0])
    assert est_strip.shape == gt_strip.shape == (n, 3)
    assert np.allclose(gt_strip, np.stack([seq.poses[f.name].center.numpy() for f in frames]), atol=1e-4)
    assert np.median(np.linalg.norm(est_strip - gt_strip, axis=1)) < 0.05
    # each frame: its image (downscaled JPEG), pinhole scaled with it, inliers in its pixels
    blobs = _column(rec["/world/camera/image"], "EncodedImage:blob")
    assert len(blobs) == n
    res = _column(rec["/world/camera/image"], "Pinhole:resolution")
    assert res[0][0] == pytest.approx([160, 120])
    inl = _column(rec["/world/camera/image/inliers"], "Points2D:positions")
    assert len(inl) == n
    for f, x in zip(out, inl):
        assert len(x) == f.result.num_inliers
        x = np.array(x)
        assert (x >= 0).all() and (x[:, 0] <= 160).all() and (x[:, 1] <= 120).all()
    status = _column(rec["/status"], "TextLog:text")
    assert status[0][0].startswith(frames[0].name) and len(status) == n


def test_viewer_needs_a_sink():
    with pytest.raises(ValueError, match="rrd"):
        SequenceViewer(None, spawn=False)
