"""Strict JSON output: every JSON file the library writes goes through :func:`write_json`.

Python's ``json`` writes ``Infinity`` / ``NaN`` for non-finite floats by default, which is
not JSON (``jq``, JavaScript and most parsers reject the file). :func:`json_safe` turns
them into ``null`` and converts numpy / torch values, paths, tuples and sets to plain JSON
types; :func:`write_json` then serializes with ``allow_nan=False`` to a temporary name in the
same folder and renames it, so a crash never leaves a truncated file.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Union

from .atomic import atomic_write_text


def json_safe(x: Any) -> Any:
    """A copy of ``x`` made of dict / list / str / int / float / bool / None only.

    Non-finite floats (inf, -inf, NaN, also numpy / torch ones) become None; numpy and torch
    scalars become Python numbers, arrays and tensors nested lists; Path -> str; tuples and
    sets -> lists (sets sorted by ``repr`` when their items are not comparable); dict keys
    -> str. Other objects become ``str(obj)``.
    """
    if x is None or isinstance(x, (bool, str)):
        return x
    if isinstance(x, int):
        return int(x)
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, dict):
        return {str(k): json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [json_safe(v) for v in x]
    if isinstance(x, (set, frozenset)):
        try:
            items = sorted(x)
        except TypeError:
            items = sorted(x, key=repr)
        return [json_safe(v) for v in items]
    if isinstance(x, Path):
        return str(x)
    try:
        import numpy as np

        if isinstance(x, np.bool_):
            return bool(x)
        if isinstance(x, np.integer):
            return int(x)
        if isinstance(x, np.floating):
            return json_safe(float(x))
        if isinstance(x, np.ndarray):
            return json_safe(x.tolist())
    except ImportError:  # pragma: no cover - numpy is a dependency
        pass
    try:
        import torch

        if isinstance(x, torch.Tensor):
            return json_safe(x.detach().cpu().tolist())
    except ImportError:  # pragma: no cover
        pass
    return str(x)


def dumps_json(x: Any, **kwargs) -> str:
    """``json.dumps(json_safe(x), allow_nan=False, **kwargs)``: always valid JSON."""
    return json.dumps(json_safe(x), allow_nan=False, **kwargs)


def write_json(path: Union[str, Path], x: Any, indent: int = 1) -> Path:
    """Write ``x`` as strict JSON (non-finite numbers -> null) atomically to ``path``.

    The parent folder is created; the text goes to ``<path>.tmp`` first and is renamed over
    ``path``. Returns ``path``.
    """
    return atomic_write_text(path, dumps_json(x, indent=indent) + "\n")
