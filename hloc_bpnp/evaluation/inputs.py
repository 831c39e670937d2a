"""Reading evaluation inputs: pose files, ground truth, query lists and per-query logs.

- Results / poses: hloc's text format (``name qw qx qy qz tx ty tz``), read with
  :func:`hloc_bpnp.io.hloc_text.read_results`.
- Ground truth: a COLMAP model folder (text or binary, read by pycolmap) or a results file.
- Query lists: one query per line, the name being the first token (plain name lists and
  hloc's ``name MODEL W H params...`` lists both work); ``#`` starts a comment.
- Per-query logs (written by the localizer), one of:
  a ``.json`` file holding ``{name: record}``, a list of records with ``name``, or
  ``{"queries": [records]}`` (the localizer's ``<results>_log.json``);
  a ``.jsonl`` file with one record per line; or a folder of ``*.json`` files, one record
  each. A record needs ``success`` (bool); ``failure_reason`` (str) is reported for failures.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Dict, List, Union

from ..geometry import Pose

logger = logging.getLogger(__name__)

PathLike = Union[str, Path]


def read_poses(path: PathLike) -> Dict[str, Pose]:
    """Poses (cam_from_world) from an hloc results file ``name qw qx qy qz tx ty tz``."""
    from ..io.hloc_text import read_results

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Results file not found: {path}")
    return read_results(path)


def load_ground_truth(path: PathLike) -> Dict[str, Pose]:
    """Ground-truth poses from a COLMAP model folder or an hloc-format results file.

    Images of a COLMAP model without a pose are skipped (with a warning).
    """
    path = Path(path)
    if path.is_dir():
        import pycolmap

        from ..io.scene import Scene

        if not any((path / f"images{ext}").is_file() for ext in (".txt", ".bin")):
            raise FileNotFoundError(
                f"Ground-truth folder {path} is not a COLMAP model (no images.txt / images.bin)"
            )
        scene = Scene.from_reconstruction(pycolmap.Reconstruction(str(path)))
        gt = {im.name: im.pose for im in scene if im.pose is not None}
        if len(gt) < len(scene):
            logger.warning("%d image(s) of %s have no pose and are skipped", len(scene) - len(gt), path)
        return gt
    if path.is_file():
        return read_poses(path)
    raise FileNotFoundError(f"Ground truth not found: {path} (expected a COLMAP model folder or a results file)")


def read_query_names(path: PathLike) -> List[str]:
    """Query names: first token of each non-empty, non-comment line."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Query list not found: {path}")
    names = []
    with open(path) as f:
        for line in f:
            line = line.strip()
            if line and not line.startswith("#"):
                names.append(line.split()[0])
    if not names:
        raise ValueError(f"Query list {path} is empty")
    return names


def _check_record(rec: Any, where: str) -> Dict[str, Any]:
    if not isinstance(rec, dict):
        raise ValueError(f"{where}: a log record must be a JSON object, got {type(rec).__name__}")
    if not isinstance(rec.get("success"), bool):
        raise ValueError(f"{where}: log record needs a boolean 'success' field, got keys {sorted(rec)}")
    return rec


def _name_of(rec: Dict[str, Any], where: str) -> str:
    name = rec.get("name", rec.get("query"))
    if not isinstance(name, str):
        raise ValueError(f"{where}: log record needs a 'name' (string) field, got keys {sorted(rec)}")
    return name


def default_log_path(results_path: PathLike) -> Path:
    """The localizer's log next to a results file: ``<results stem>_log.json``."""
    p = Path(results_path)
    return p.with_name(p.stem + "_log.json")


def read_query_logs(path: PathLike) -> Dict[str, Dict[str, Any]]:
    """Per-query log records keyed by query name (formats in the module docstring)."""
    path = Path(path)
    logs: Dict[str, Dict[str, Any]] = {}
    if path.is_dir():
        files = sorted(path.rglob("*.json"))
        if not files:
            raise FileNotFoundError(f"No *.json log files in {path}")
        for p in files:
            with open(p) as f:
                try:
                    rec = _check_record(json.load(f), str(p))
                except json.JSONDecodeError as e:
                    raise ValueError(f"{p}: invalid JSON ({e})") from None
            logs[_name_of(rec, str(p))] = rec
        return logs
    if not path.is_file():
        raise FileNotFoundError(f"Query log not found: {path}")
    if path.suffix == ".jsonl":
        with open(path) as f:
            for i, line in enumerate(f, 1):
                if not line.strip():
                    continue
                where = f"{path}:{i}"
                try:
                    rec = _check_record(json.loads(line), where)
                except json.JSONDecodeError as e:
                    raise ValueError(f"{where}: invalid JSON ({e})") from None
                logs[_name_of(rec, where)] = rec
        return logs
    with open(path) as f:
        try:
            data = json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: invalid JSON ({e})") from None
    if isinstance(data, dict) and isinstance(data.get("queries"), list):
        data = data["queries"]  # the localizer's ``<results>_log.json``
    if isinstance(data, dict):
        for name, rec in data.items():
            logs[name] = _check_record(rec, f"{path} [{name!r}]")
    elif isinstance(data, list):
        for i, rec in enumerate(data):
            where = f"{path} [{i}]"
            rec = _check_record(rec, where)
            logs[_name_of(rec, where)] = rec
    else:
        raise ValueError(f"{path}: expected a JSON object or list of records, got {type(data).__name__}")
    return logs
