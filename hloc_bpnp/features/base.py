"""Local feature extractor interface, registry and shared pre-/post-processing.

Every extractor turns one image into a dict of CPU torch tensors (N-first, in memory):

=============== ============ ==========================================================
key             shape/dtype  meaning
=============== ============ ==========================================================
``keypoints``   (N, 2) f32   (x, y) in ORIGINAL-image pixels, COLMAP convention (the
                             centre of the top-left pixel is (0.5, 0.5))
``descriptors`` (N, D) f32   one descriptor per keypoint (the HDF5 store writes (D, N))
``scores``      (N,) f32     detection score (higher is better)
``image_size``  (2,) i64     (W, H) of the original image
``scales``      (N,) f32     kornia LAF scale in original pixels (methods with scale)
``oris``        (N,) f32     kornia LAF orientation in radians (methods with orientation)
``lafs``        (N, 2, 3)    full local affine frames, centre in COLMAP pixels of the
                             original image (LAF-based methods only)
=============== ============ ==========================================================

Subclasses implement ``_init(conf)`` and ``_extract(images)``, which receives the resized
image batch ``(B, C, H', W')`` in [0, 1] and returns per image a dict whose keypoints are in
KORNIA's frame of the resized image (centre of the top-left pixel at (0, 0)); the base class
converts them with ``(k + 0.5) * s``, ``s = original / resized`` per axis.
"""
from __future__ import annotations

import itertools
import logging
import math
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Type, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..geometry.camera import clamp_to_image
from ..registry import ConfiguredModule, Registry

logger = logging.getLogger(__name__)

Features = Dict[str, torch.Tensor]
ImageLike = Union[np.ndarray, torch.Tensor]

_REGISTRY = Registry("extractor", "features", default_model="sift")


def register_extractor(name: str) -> Callable[[Type["Extractor"]], Type["Extractor"]]:
    """Class decorator adding an :class:`Extractor` subclass under ``name`` (the ``model`` key).

    Example::

        @register_extractor("mynet")
        class MyNet(Extractor):
            default_conf = {"weights": None}
            def _init(self, conf): ...
            def _extract(self, images): ...
    """
    return _REGISTRY.register(name, Extractor)


def available_extractors() -> List[str]:
    """Names of the registered extractor classes (values of a config's ``model`` key)."""
    return _REGISTRY.names()


def build_extractor(conf: Union[str, Path, Dict[str, Any]], **overrides: Any) -> "Extractor":
    """Build an extractor from a preset name (``configs/features/<name>.yaml``), a YAML path or a dict.

    The config's ``model`` key selects the registered class (default ``"sift"``); the other keys
    are merged over that class's ``default_conf`` (unknown keys raise ``KeyError``).
    ``overrides`` are merged last, e.g. ``build_extractor("sift", max_keypoints=2048)``.
    """
    return _REGISTRY.build(conf, **overrides)


class Extractor(ConfiguredModule):
    """Base class: config handling, image preparation, resizing, coordinate conversion, batching."""

    name: str = "base"
    base_default_conf: Dict[str, Any] = {
        "preset": None,  # name used in error messages
        "max_keypoints": 4096,
        "resize_max": None,  # longest side after resizing (only ever downscales unless resize_force)
        "resize_force": False,
        "grayscale": True,  # feed the network a 1-channel image
        "device": "cpu",
    }
    default_conf: Dict[str, Any] = {}
    #: the network needs H and W to be multiples of this (resize rounds to it; 1 = any size)
    size_multiple: int = 1
    #: ``_extract`` accepts B > 1 images of one size in a call
    supports_batch: bool = True

    # -- to implement -------------------------------------------------------------------
    def _init(self, conf: Dict[str, Any]) -> None:
        raise NotImplementedError

    def _extract(self, images: torch.Tensor) -> List[Features]:
        """``images`` (B, C, H', W') in [0, 1] -> per image keypoints in kornia's resized frame."""
        raise NotImplementedError

    # -- public API ---------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        for t in itertools.chain(self.parameters(), self.buffers()):  # the first one (no lists)
            return t.device
        return torch.device(self.conf["device"])

    def extract(self, image: ImageLike) -> Features:
        """Extract features from one image.

        Args:
            image: ``(H, W)`` or ``(H, W, 3)`` numpy/torch (uint8 or float in [0, 1]), or a
                tensor ``(1, C, H, W)`` / ``(C, H, W)`` with C in {1, 3}.

        Returns:
            dict of CPU tensors described in the module docstring.
        """
        return self.extract_many([image])[0]

    def extract_path(self, path: Union[str, Path]) -> Features:
        """Read ``path`` with :func:`hloc_bpnp.io.image.read_image` (EXIF applied) and extract."""
        from ..io.image import read_image

        return self.extract(read_image(path, grayscale=False))

    @torch.inference_mode()
    def extract_many(self, images: Sequence[ImageLike], batch_size: int = 8) -> List[Features]:
        """Extract several images; those of equal size run in batches of ``batch_size`` when supported."""
        prepared = [self._prepare(im, i) for i, im in enumerate(images)]
        out: List[Optional[Features]] = [None] * len(prepared)
        groups: Dict[tuple, List[int]] = {}
        for i, (t, _) in enumerate(prepared):
            groups.setdefault(tuple(t.shape), []).append(i)
        bs = batch_size if self.supports_batch else 1
        for idx in groups.values():
            for start in range(0, len(idx), bs):
                chunk = idx[start:start + bs]
                batch = torch.cat([prepared[i][0] for i in chunk]).to(self.device)
                results = self._extract(batch)
                for i, res in zip(chunk, results):
                    out[i] = self._postprocess(res, prepared[i][1], tuple(batch.shape[-2:]))
        return out  # type: ignore[return-value]

    # -- helpers ------------------------------------------------------------------------
    def resized_size(self, width: int, height: int) -> tuple:
        """(W', H') the network sees for an original image of (width, height)."""
        rmax = self.conf["resize_max"]
        scale = 1.0
        if rmax and (self.conf["resize_force"] or max(width, height) > rmax):
            scale = rmax / max(width, height)
        w, h = width * scale, height * scale
        m = self.size_multiple
        if m > 1:
            w, h = max(m, int(w // m) * m), max(m, int(h // m) * m)
        else:
            w, h = max(1, int(round(w))), max(1, int(round(h)))
        return w, h

    def _prepare(self, image: ImageLike, index: int) -> tuple:
        from ..io.image import image_to_gray_tensor, image_to_tensor

        try:
            t = image_to_gray_tensor(image) if self.conf["grayscale"] else image_to_tensor(image)
        except (TypeError, ValueError) as e:
            raise type(e)(f"{self.conf['preset']}: image {index}: {e}") from e
        _, c, h, w = t.shape
        if not self.conf["grayscale"] and c == 1:
            t = t.expand(-1, 3, -1, -1)
        w2, h2 = self.resized_size(w, h)
        if (w2, h2) != (w, h):
            t = F.interpolate(t, size=(h2, w2), mode="bilinear", align_corners=False,
                              antialias=(w2 < w or h2 < h))
        return t.contiguous(), (w, h)

    def _postprocess(self, res: Features, orig_wh: tuple, resized_hw: tuple) -> Features:
        w, h = orig_wh
        sx, sy = w / resized_hw[1], h / resized_hw[0]
        s = torch.tensor([sx, sy], dtype=torch.float32)
        kpts = res["keypoints"].detach().float().cpu().reshape(-1, 2)
        desc = res["descriptors"].detach().float().cpu()
        # a refiner's offset can carry a border keypoint up to a pixel past the image; COLMAP's
        # image spans [0, W] x [0, H], and matchers (LightGlue) refuse keypoints outside it
        out: Features = {
            "keypoints": clamp_to_image((kpts + 0.5) * s, w, h),
            "descriptors": desc.reshape(kpts.shape[0], desc.shape[-1]),
            "scores": res["scores"].detach().float().cpu().reshape(-1),
            "image_size": torch.tensor([w, h], dtype=torch.int64),
        }
        mean_s = math.sqrt(sx * sy)
        if "scales" in res:
            out["scales"] = res["scales"].detach().float().cpu().reshape(-1) * mean_s
        if "oris" in res:
            out["oris"] = res["oris"].detach().float().cpu().reshape(-1)
        if "log_var" in res:  # a refiner's keypoint uncertainty: std in original pixels
            out["sigmas"] = (0.5 * res["log_var"].detach().float().cpu().reshape(-1)).exp() * mean_s
        if "lafs" in res:
            lafs = res["lafs"].detach().float().cpu().clone()
            lafs[..., 0, :] *= sx
            lafs[..., 1, :] *= sy
            lafs[..., :, 2] = out["keypoints"]
            out["lafs"] = lafs
        return out


def unpad_batch(out: Dict[str, torch.Tensor]) -> List[Features]:
    """A trainable network's padded batch output (``keypoints`` (B, K, 2), ``descriptors``,
    ``scores``, ``valid`` (B, K)) -> one feature dict per image, valid entries sorted by score."""
    res = []
    for b in range(out["keypoints"].shape[0]):
        v = out["valid"][b]
        order = torch.argsort(out["scores"][b][v], descending=True, stable=True)
        keys = ("keypoints", "descriptors", "scores") + (("log_var",) if "log_var" in out else ())
        res.append({k: out[k][b][v][order] for k in keys})
    return res


def unwrap_state_dict(obj: Any) -> Dict[str, torch.Tensor]:
    """The state dict inside a checkpoint: a plain state dict or one nested under a usual key."""
    if isinstance(obj, nn.Module):
        return obj.state_dict()
    if isinstance(obj, dict):
        for key in ("state_dict", "model", "extractor", "net", "model_state_dict"):
            inner = obj.get(key)
            if isinstance(inner, dict) and inner and all(isinstance(k, str) for k in inner):
                return unwrap_state_dict(inner)
        prefixes = ("module.", "_orig_mod.")
        out = {}
        for k, v in obj.items():
            for p in prefixes:
                if k.startswith(p):
                    k = k[len(p):]
            out[k] = v
        return out
    raise TypeError(f"Expected a state dict, got {type(obj).__name__}")


def check_weights_path(path: Optional[Union[str, Path]], preset: str, key: str = "weights",
                       default_key: Optional[str] = None) -> Path:
    """Validate a weights path from a config before building a (large) network.

    ``path`` null: the packaged pretrained file ``default_key`` (:mod:`hloc_bpnp.weights`).

    Raises:
        ValueError: ``path`` is not set and there is no packaged default (names the preset and key).
        FileNotFoundError: the file is missing (for a packaged default: the command that installs it).
    """
    from ..weights import resolve_weights

    if isinstance(path, dict):
        raise ValueError(f"Feature preset {preset!r}: config key {key!r} must be a path, got a dict")
    return resolve_weights(path, default_key, preset, key)


def load_weights(module: nn.Module, path: Optional[Union[str, Path]], preset: str, key: str = "weights",
                 default_key: Optional[str] = None, computed_buffers: Sequence[str] = ()) -> Path:
    """Load local weights into ``module`` (no download ever); every persistent tensor must come
    from the file (``computed_buffers``: constants the module computes itself, made non-persistent).

    Returns:
        the file loaded.
    Raises:
        ValueError / FileNotFoundError: see :func:`check_weights_path`.
        RuntimeError: the file is not a safe weights file, or does not fit the architecture.
    """
    from ..weights import load_state_strict, mark_non_persistent, read_state_dict

    p = check_weights_path(path, preset, key, default_key)
    source = f"Feature preset {preset!r}: weights {p} (key {key!r})"
    state = unwrap_state_dict(read_state_dict(p, source))
    mark_non_persistent(module, computed_buffers)
    load_state_strict(module, state, source)
    return p
