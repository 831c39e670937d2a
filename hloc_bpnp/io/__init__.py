"""Readers and writers: scenes, COLMAP models, hloc text formats, HDF5 stores, datasets."""
from .scene import Scene, SceneImage

__all__ = ["Scene", "SceneImage"]
