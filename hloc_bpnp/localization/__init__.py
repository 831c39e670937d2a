"""Localization: the in-memory Localizer, 2D-3D aggregation, RANSAC + BPnP refinement."""
from .camera_prior import guess_camera
from .correspondences import Correspondences, covisibility_clusters, gather_2d3d
from ..features.feature_dict import select_keypoints, to_numpy, to_torch
from .localizer import Localizer, default_conf, localization_config
from .pose_estimation import estimate_pose, refine_bpnp
from .results import LocalizationResult, ResultsWriter, summarize_failures, write_results

__all__ = [
    "Localizer", "default_conf", "localization_config", "LocalizationResult", "write_results", "ResultsWriter", "summarize_failures",
    "estimate_pose", "refine_bpnp", "gather_2d3d", "covisibility_clusters", "Correspondences",
    "guess_camera", "to_numpy", "to_torch", "select_keypoints",
]
