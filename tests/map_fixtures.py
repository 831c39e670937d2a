"""Shared test helper: a pycolmap reconstruction from exactly observed synthetic points."""
from typing import Callable, Dict, Mapping, Tuple

import numpy as np
import pycolmap

from hloc_bpnp.geometry import Camera, Pose


def reconstruction_from_observations(camera: Camera, map_poses: Mapping[str, Pose], points: np.ndarray,
                                     observe: Callable[[Pose], Tuple[Dict, np.ndarray]]):
    """One camera, one image per map pose with the keypoints ``observe(pose)`` returns
    (features dict, point index per keypoint), and every point seen at least twice.

    Returns:
        (pycolmap.Reconstruction, name -> features)
    """
    rec = pycolmap.Reconstruction()
    cam = camera.to_pycolmap()
    cam.camera_id = 1
    rec.add_camera_with_trivial_rig(cam)
    feats, tracks = {}, {}
    for image_id, (name, pose) in enumerate(map_poses.items(), start=1):
        f, idx = observe(pose)
        feats[name] = f
        img = pycolmap.Image(name=name, keypoints=f["keypoints"].astype(np.float64), camera_id=1, image_id=image_id)
        rec.add_image_with_trivial_frame(img, pose.to_pycolmap())
        for k, p in enumerate(idx):
            tracks.setdefault(int(p), []).append(pycolmap.TrackElement(image_id, k))
    for p, els in tracks.items():
        if len(els) >= 2:
            rec.add_point3D(points[p], pycolmap.Track(els))
    return rec, feats


def assert_herzjesu_queries_localized(shared_data, mapping_conf, features_override: Mapping) -> None:
    """Leave-one-out on Herz-Jesu-P8 (queries 2 and 3) with ``mapping_conf``'s features merged
    with ``features_override``: every query localized within 0.1 deg and 3 cm."""
    from hloc_bpnp.config import load_config, merge
    from hloc_bpnp.geometry import pose_error
    from hloc_bpnp.io.datasets import read_strecha
    from hloc_bpnp.protocols.leave_one_out import leave_one_out

    scene = read_strecha(shared_data / "strecha_herzjesu_P8")
    conf = dict(mapping_conf)
    f = conf["features"]
    conf["features"] = merge(load_config("features", f) if isinstance(f, str) else f, dict(features_override))
    queries = scene.names[2:4]
    results, _ = leave_one_out(scene, mapping_conf=conf, loc_conf="fast_learned", queries=queries, progress=False)
    for q in queries:
        r = results["default"][q]
        assert r.success, (q, r.failure_reason)
        dr, dt = pose_error(r.pose, scene[q].pose)
        assert float(dr) < 0.1 and float(dt) < 0.03, (q, float(dr), float(dt))
