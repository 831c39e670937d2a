"""Named stage presets (hloc's ``confs`` idea) stored as YAML under ``configs/``.

``load_config("features", "sift")`` reads ``configs/features/sift.yaml``; a path to a YAML
file works too. ``merge(default, override)`` merges nested dicts (override wins) and
rejects unknown keys when ``strict`` so typos fail loudly; :func:`load_preset` does both and
names the file (and the section a misplaced preset belongs to) in the error.
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


class UnknownConfigKeyError(KeyError):
    """Keys of a config that its section does not know (a typo, or a preset of another kind:
    a localization preset given where a sequence one is expected). A ``KeyError`` whose
    message names every offending key (dotted), the known keys and, when known, the file."""

    def __init__(self, message: str, keys: List[str]):
        super().__init__(message)
        self.message, self.keys = message, list(keys)

    def __str__(self) -> str:  # KeyError's would quote the message
        return self.message


def preset_path(section: str, name_or_path: Union[str, Path, Dict, None]) -> Optional[Path]:
    """The YAML file :func:`load_config` reads for ``name_or_path`` (None for a dict / None)."""
    if name_or_path is None or isinstance(name_or_path, dict):
        return None
    p = Path(name_or_path)
    return p if p.suffix in (".yaml", ".yml") else CONFIG_DIR / section / f"{name_or_path}.yaml"


def load_config(section: str, name_or_path: Union[str, Path, Dict, None]) -> Dict[str, Any]:
    """Load a preset by name from ``configs/<section>/<name>.yaml`` or from a YAML path.

    A dict is returned as a deep copy. Raises ``FileNotFoundError`` listing the presets.
    """
    if name_or_path is None:
        return {}
    if isinstance(name_or_path, dict):
        return copy.deepcopy(name_or_path)
    p = preset_path(section, name_or_path)
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


def unknown_keys(default: Dict[str, Any], override: Optional[Dict[str, Any]], _path: str = "") -> List[str]:
    """Dotted paths of the keys of ``override`` that ``default`` does not have, recursing
    where both values are dicts (an empty dict in ``default`` is an open mapping)."""
    out = []
    for k, v in (override or {}).items():
        if default and k not in default:
            out.append(_path + str(k))
        elif isinstance(v, dict) and isinstance(default.get(k), dict):
            out.extend(unknown_keys(default[k], v, _path + str(k) + "."))
    return out


def _known_at(default: Dict[str, Any], dotted: str) -> List[str]:
    node = default
    for part in dotted.split(".")[:-1]:
        node = node[part]
    return sorted(node)


def _section_of(path: Optional[Path]) -> Optional[str]:
    """``configs/<section>`` when ``path`` is one of the shipped presets, else None."""
    try:
        rel = Path(path).resolve().relative_to(CONFIG_DIR)
    except (TypeError, ValueError, OSError):
        return None
    return rel.parts[0] if len(rel.parts) == 2 else None


def merge(default: Dict[str, Any], override: Optional[Dict[str, Any]], strict: bool = False,
          source: Optional[str] = None, section: Optional[str] = None) -> Dict[str, Any]:
    """Recursively merge ``override`` into a copy of ``default``.

    ``strict``: keys of ``override`` unknown to ``default`` raise
    :class:`UnknownConfigKeyError` naming all of them with the known keys, and ``source`` (the
    file the override came from) and ``section`` (its kind) when given.
    """
    if strict:
        bad = unknown_keys(default, override)
        if bad:
            known = _known_at(default, bad[0])
            what = f"{section} config" if section else "config"
            where = f"{source}: " if source else ""
            msg = (f"{where}Unknown {what} key{'s' if len(bad) > 1 else ''} "
                   f"{', '.join(repr(b) for b in bad)}; known keys: {known}")
            other = _section_of(Path(source)) if source else None
            if other and section and other != section:
                msg += f" (this is a {other} preset, not a {section} one)"
            raise UnknownConfigKeyError(msg, bad)
    out = copy.deepcopy(default)
    for k, v in (override or {}).items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def load_preset(section: str, name_or_path: Union[str, Path, Dict, None], default: Dict[str, Any]) -> Dict[str, Any]:
    """``default`` with the preset ``name_or_path`` of ``configs/<section>/`` (a name, a YAML
    path or a dict) merged over it strictly: an unknown key -- a typo, or a preset of another
    kind -- is an :class:`UnknownConfigKeyError` naming the file and every offending key."""
    src = preset_path(section, name_or_path)
    return merge(default, load_config(section, name_or_path), strict=True,
                 source=str(src) if src is not None else None, section=section)
