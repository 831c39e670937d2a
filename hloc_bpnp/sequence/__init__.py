"""Sequence (SLAM) mode: track a video's frames against a map with a motion prior,
relocalize when lost, grow the map where the camera goes (see ``tracker``)."""
from .growth import image_novelty, insert_keyframe
from .motion import MotionModel
from .tracker import LOST, RELOCALIZED, TRACKED, FrameResult, SequenceLocalizer

__all__ = ["SequenceLocalizer", "FrameResult", "MotionModel", "insert_keyframe", "image_novelty",
           "TRACKED", "RELOCALIZED", "LOST"]
