"""Cameras (COLMAP models), poses (cam_from_world) and pose metrics."""
from .camera import CAMERA_MODELS, Camera, clamp_to_image, distort, undistort, split_params
from .metrics import center_error, pose_error, rotation_angle, rotation_error_deg
from .plane import plane_induced_affine
from .pose import Pose, is_rotation, project_to_so3, skew, so3_exp, so3_log

__all__ = [
    "CAMERA_MODELS", "Camera", "clamp_to_image", "distort", "undistort", "split_params",
    "Pose", "is_rotation", "project_to_so3", "skew", "so3_exp", "so3_log",
    "center_error", "pose_error", "rotation_angle", "rotation_error_deg", "plane_induced_affine",
]
