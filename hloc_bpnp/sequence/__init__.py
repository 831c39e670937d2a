"""Sequence (SLAM) mode: track a video's frames against a map with a motion prior,
relocalize when lost, grow the map where the camera goes (see ``tracker``)."""
from .frames import Frame, load_frames
from .growth import image_novelty, insert_keyframe
from .local_map import LocalMap, LocalMapBuilder, search_by_projection
from .mapping_thread import KeyframeJob, MappingThread
from .motion import MotionModel
from .tracker import DEFAULT_PRESET, LOST, RELOCALIZED, TRACKED, FrameResult, SequenceLocalizer, sequence_config
from .trajectory import plot_trajectory, read_tum_trajectory, trajectory_errors, write_tum_trajectory
from .frames import iter_frames, is_video
from .video import iter_video, probe_video

__all__ = ["SequenceLocalizer", "sequence_config", "DEFAULT_PRESET", "FrameResult", "MotionModel", "insert_keyframe", "image_novelty",
           "TRACKED", "RELOCALIZED", "LOST", "Frame", "load_frames", "write_tum_trajectory",
           "read_tum_trajectory", "trajectory_errors", "plot_trajectory", "MappingThread", "KeyframeJob",
           "LocalMap", "LocalMapBuilder", "search_by_projection", "iter_frames", "is_video", "iter_video",
           "probe_video"]
