"""Map building (pycolmap triangulation from known poses, incremental SfM) and the in-memory
:class:`Map` (reconstruction + features + 2D-3D lookups + global retrieval index)."""
from .build import (build_map_from_poses, build_map_sfm, default_conf, extract_features, list_images,
                    make_pairs, mapping_config, match_pairs, resolved_mapping_config)
from .database import create_database, skeleton_reconstruction, write_features, write_two_view_geometries
from .global_model import VLADGlobalModel, build_global_model
from .map import MAP_FILES, Map, MapConfigMismatch, check_saved_map_config, config_differences
from .reconstruction import incremental_sfm, reconstruction_stats, triangulate_known_poses
from .verification import sampson_errors, verify_pair_ransac, verify_pair_with_poses, verify_pairs

__all__ = [
    "Map", "MAP_FILES", "MapConfigMismatch", "check_saved_map_config", "config_differences",
    "build_map_from_poses", "build_map_sfm", "default_conf", "mapping_config", "resolved_mapping_config",
    "extract_features", "list_images", "make_pairs", "match_pairs",
    "create_database", "skeleton_reconstruction", "write_features", "write_two_view_geometries",
    "VLADGlobalModel", "build_global_model",
    "incremental_sfm", "reconstruction_stats", "triangulate_known_poses",
    "sampson_errors", "verify_pair_ransac", "verify_pair_with_poses", "verify_pairs",
]
