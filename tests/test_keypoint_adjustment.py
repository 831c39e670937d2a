"""Map keypoint adjustment (hloc_bpnp/mapping/keypoint_adjustment.py): on an exactly rendered
textured plane whose map observations carry 0.8 px of noise, aligning each track to its
reference observation makes the tracks consistent (reprojection error of the re-triangulated
points), moves the model's 2D points and the features together, and errors name bad input."""
import numpy as np
import pytest
import torch

from hloc_bpnp.mapping import Map
from hloc_bpnp.mapping.keypoint_adjustment import adjust_keypoints, adjustment_config
from hloc_bpnp.synthetic import look_at
from map_fixtures import reconstruction_from_observations
from test_patch_alignment import CAM, _render, _texture


def _noisy_map(seed=0, n_points=500, noise=0.8):
    rng = np.random.default_rng(seed)
    points = np.concatenate([rng.uniform(-1.3, 1.3, (n_points, 2)), np.zeros((n_points, 1))], 1)
    up = (0.0, -1.0, 0.0)
    poses = {f"map/{i}.png": look_at(e, np.zeros(3), up=up)
             for i, e in enumerate([(-0.8, -0.5, -4.5), (0.8, -0.5, -4.5), (-0.8, 0.5, -4.5), (0.8, 0.5, -4.5),
                                    (0.0, 0.0, -4.0)])}

    def observe(pose):
        x, valid = CAM.project_with_valid(pose.transform(torch.from_numpy(points)))
        idx = np.flatnonzero(valid.numpy())
        kp = x.numpy()[idx] + rng.normal(scale=noise, size=(len(idx), 2))
        d = rng.normal(size=(len(idx), 16)).astype(np.float32)
        return {"keypoints": kp.astype(np.float32), "descriptors": d / np.linalg.norm(d, axis=1, keepdims=True),
                "scores": np.ones(len(idx), np.float32), "image_size": np.array([CAM.width, CAM.height])}, idx

    rec, feats = reconstruction_from_observations(CAM, poses, points, observe)
    images = {n: _render(_texture(1), p) for n, p in poses.items()}
    return rec, feats, images


def _track_spread(rec):
    """Median distance of each track's observations from their track's reprojected point."""
    from hloc_bpnp.geometry import Pose

    errs = []
    for p in rec.points3D.values():
        for e in p.track.elements:
            im = rec.images[e.image_id]
            pose = Pose.from_pycolmap(im.cam_from_world())
            uv = CAM.project(pose.transform(torch.tensor(np.asarray(p.xyz)[None], dtype=torch.float64)))[0]
            errs.append(float(np.linalg.norm(uv.numpy() - np.asarray(im.points2D[e.point2D_idx].xy))))
    return float(np.median(errs))


def test_adjustment_makes_the_tracks_consistent():
    rec, feats, images = _noisy_map()
    before = _track_spread(rec)
    out, stats = adjust_keypoints(rec, feats, images, {"enabled": True})
    after = _track_spread(rec)
    assert before > 0.5, before  # 0.8 px of noise per observation
    assert after < 0.2 * before, (before, after)
    assert stats["n_aligned"] > 0.9 * stats["n_tried"] > 0
    assert stats["reprojection_px_after"] < 0.2 * stats["reprojection_px_before"]
    # the model's 2D points and the returned keypoints moved together; the input is untouched
    moved = 0
    for im in rec.images.values():
        xy = np.array([p.xy for p in im.points2D])
        np.testing.assert_allclose(out[im.name]["keypoints"], xy, atol=1e-4)
        moved += not np.allclose(feats[im.name]["keypoints"], out[im.name]["keypoints"])
        assert out[im.name]["keypoints"].dtype == feats[im.name]["keypoints"].dtype
    assert moved >= len(feats) - 1  # the middle view holds the references: it may not move
    # the adjusted model and features build a map
    m = Map.from_reconstruction(rec, out, {"features": "sift", "matcher": "mnn",
                                           "retrieval": {"global_descriptor": {"type": "vlad", "num_clusters": 4}}})
    assert len(m.points3D) == len(rec.points3D)


def test_adjustment_without_alignment_changes_nothing_in_the_tracks():
    """The control: shifts bounded to 0 px leave the keypoints; re-triangulation alone cannot
    remove the detections' noise."""
    rec, feats, images = _noisy_map()
    before = _track_spread(rec)
    out, stats = adjust_keypoints(rec, feats, images, {"max_shift_px": 0.0})
    assert stats["median_shift_px"] == 0.0
    for n in feats:
        np.testing.assert_array_equal(out[n]["keypoints"], feats[n]["keypoints"])
    assert _track_spread(rec) > 0.8 * before


def test_adjustment_errors_name_the_problem():
    rec, feats, images = _noisy_map(n_points=100)
    with pytest.raises(ValueError, match="unknown keys"):
        adjustment_config({"radius": 5, "blur": 1.0})
    bad = dict(feats)
    name = sorted(bad)[0]
    bad[name] = {**bad[name], "keypoints": bad[name]["keypoints"][:-1]}
    with pytest.raises(ValueError, match=name):
        adjust_keypoints(rec, bad, images)
    small = {n: im[:100] for n, im in images.items()}
    with pytest.raises(ValueError, match="wrong image folder"):
        adjust_keypoints(rec, feats, small)
    with pytest.raises(KeyError, match="no features"):
        adjust_keypoints(rec, {n: f for n, f in feats.items() if n != name}, images)


def _point_error_px(rec, truth):
    """Median image distance between each adjusted 3D point and its true position, over its views."""
    from hloc_bpnp.geometry import Pose

    errs = []
    for pid, p in rec.points3D.items():
        for e in p.track.elements:
            pose = Pose.from_pycolmap(rec.images[e.image_id].cam_from_world())
            both = torch.tensor(np.stack([np.asarray(p.xyz), truth[pid]]), dtype=torch.float64)
            uv = CAM.project(pose.transform(both))
            errs.append(float((uv[0] - uv[1]).norm()))
    return float(np.median(errs))


def test_consensus_keeps_the_average_of_the_detections():
    """Aligned to one reference, a track takes that reference's detection error whole; the
    consensus (each observation aligned to the others' mean patch, the track's mean shift
    removed) makes the track consistent while keeping the average of its detections, so its
    3D point lands nearer the truth."""
    out = {}
    for method in ("reference", "consensus"):
        rec, feats, images = _noisy_map(seed=2)
        truth = {pid: np.asarray(p.xyz).copy() for pid, p in rec.points3D.items()}  # built at the truth
        before = _track_spread(rec)
        adjust_keypoints(rec, feats, images, {"method": method})
        out[method] = (_track_spread(rec), _point_error_px(rec, truth))
    assert out["consensus"][0] < 0.35 * before, (before, out)
    assert out["consensus"][1] < 0.8 * out["reference"][1], out
    rec, feats, images = _noisy_map(n_points=50)
    with pytest.raises(ValueError, match="method"):
        adjust_keypoints(rec, feats, images, {"method": "mean"})
