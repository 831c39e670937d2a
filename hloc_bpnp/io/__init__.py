"""Readers and writers: scenes, COLMAP models, hloc text formats, HDF5 stores, datasets."""
from .scene import Scene, SceneImage
from .hloc_text import (
    FormatError, read_pairs, read_query_list, read_results, write_pairs, write_query_list, write_results,
)
from .colmap import points_and_observations, read_model, scene_from_model, write_model
from .nvm import read_nvm, scene_from_nvm

__all__ = [
    "Scene", "SceneImage",
    "FormatError", "read_pairs", "read_query_list", "read_results", "write_pairs", "write_query_list",
    "write_results",
    "points_and_observations", "read_model", "scene_from_model", "write_model",
    "read_nvm", "scene_from_nvm",
]
