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
