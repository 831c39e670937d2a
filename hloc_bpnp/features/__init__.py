"""Local feature extractors (kornia SIFT by default; learned ones from local weight files).

``build_extractor("sift").extract(image)`` -> dict of CPU tensors with ``keypoints`` (N, 2) in
COLMAP pixels of the original image, ``descriptors`` (N, D), ``scores`` (N,), ``image_size``
(W, H), and ``scales``/``oris``/``lafs`` where the method has them. See :mod:`.base`.
"""
from .base import (Extractor, Features, available_extractors, build_extractor, load_weights,
                   register_extractor)
from . import sift as _sift  # noqa: F401  (registers "sift")
from . import learned as _learned  # noqa: F401  (registers the learned presets)
from . import trainable as _trainable  # noqa: F401  (registers "trainable", the fine-tunable net)
from . import pycolmap_sift as _pycolmap_sift  # noqa: F401  (registers "sift_pycolmap", COLMAP's C++ SIFT)
from .sift import SIFT, sift_lightglue_scale_ori

__all__ = ["Extractor", "Features", "SIFT", "available_extractors", "build_extractor", "load_weights",
           "register_extractor", "sift_lightglue_scale_ori"]
