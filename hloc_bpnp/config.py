"""Named stage presets (hloc's ``confs`` idea) stored as YAML under ``configs/``.

``load_config("features", "sift")`` reads ``configs/features/sift.yaml``; a path to a YAML
file works too. ``merge(default, override)`` merges nested dicts (override wins) and
rejects unknown keys when ``strict`` so typos fail loudly.
"""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Dict, List, Optional, Union

import yaml

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"


def list_configs(section: str) -> List[str]:
    """Names of the presets available in ``configs/<section>/``."""
    d = CONFIG_DIR / section
    return sorted(p.stem for p in d.glob("*.yaml")) if d.is_dir() else []


def load_config(section: str, name_or_path: Union[str, Path, Dict, None]) -> Dict[str, Any]:
    """Load a preset by name from ``configs/<section>/<name>.yaml`` or from a YAML path.

    A dict is returned as a deep copy. Raises ``FileNotFoundError`` listing the presets.
    """
    if name_or_path is None:
        return {}
    if isinstance(name_or_path, dict):
        return copy.deepcopy(name_or_path)
    p = Path(name_or_path)
    if p.suffix not in (".yaml", ".yml"):
        p = CONFIG_DIR / section / f"{name_or_path}.yaml"
    if not p.is_file():
        raise FileNotFoundError(
            f"No {section} config {str(name_or_path)!r} (looked for {p}); "
            f"available presets: {list_configs(section)}"
        )
    with open(p) as f:
        data = yaml.safe_load(f) or {}
    if not isinstance(data, dict):
        raise ValueError(f"Config file {p} must contain a mapping, got {type(data).__name__}")
    return data


def merge(default: Dict[str, Any], override: Optional[Dict[str, Any]], strict: bool = False,
          _path: str = "") -> Dict[str, Any]:
    """Recursively merge ``override`` into a copy of ``default``."""
    out = copy.deepcopy(default)
    for k, v in (override or {}).items():
        # an empty dict default is an open mapping (e.g. ``query_features: {}``): any keys
        if strict and k not in default and default:
            raise KeyError(f"Unknown config key {_path + k!r}; known keys: {sorted(default)}")
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = merge(out[k], v, strict, _path + k + ".")
        else:
            out[k] = copy.deepcopy(v)
    return out
