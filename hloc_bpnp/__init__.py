"""hloc_bpnp: hierarchical visual localization with a differentiable BPnP pose stage.

Conventions (everywhere in this library):
  * poses are world-to-camera ``cam_from_world``: ``x_cam = R x_world + t`` (COLMAP);
  * pixel coordinates follow COLMAP: the centre of the top-left pixel is (0.5, 0.5).
Conversions to other conventions happen only at I/O edges.
"""
import logging
import sys as _sys

# Load libz.so.1 before pycolmap can: pycolmap's extension embeds and exports its own zlib,
# and a libz.so.1 first loaded by it binds to that copy, after which compressing (Pillow's
# PNG encoder, zlib.compress) corrupts the heap. See hloc_bpnp/io/png.py.
_ZLIB_LOADED_BEFORE_PYCOLMAP = "pycolmap" not in _sys.modules
import zlib as _zlib  # noqa: E402

_ZLIB_RUNTIME_VERSION = _zlib.ZLIB_RUNTIME_VERSION

__version__ = "0.1.0"

logging.getLogger(__name__).addHandler(logging.NullHandler())
