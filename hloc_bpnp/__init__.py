"""hloc_bpnp: hierarchical visual localization with a differentiable BPnP pose stage.

Conventions (everywhere in this library):
  * poses are world-to-camera ``cam_from_world``: ``x_cam = R x_world + t`` (COLMAP);
  * pixel coordinates follow COLMAP: the centre of the top-left pixel is (0.5, 0.5).
Conversions to other conventions happen only at I/O edges.
"""
import logging

__version__ = "0.1.0"

logging.getLogger(__name__).addHandler(logging.NullHandler())
