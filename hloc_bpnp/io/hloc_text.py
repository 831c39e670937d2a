"""hloc's plain-text formats: query lists, image pairs and localization results.

=============== ==========================================================================
file            one line per entry (fields separated by whitespace)
=============== ==========================================================================
query list      ``name MODEL W H p1 p2 ...`` (COLMAP camera model, params in COLMAP order)
pairs           ``name0 name1``
results         ``name qw qx qy qz tx ty tz`` (``cam_from_world``, quaternion w first)
=============== ==========================================================================

Blank lines and lines starting with ``#`` are skipped. Every reader fails on the first
bad line with a :class:`FormatError` (a ``ValueError``) whose message starts with
``"<file>:<line>: "`` (1-based line number) and says what is wrong; a missing file raises
``FileNotFoundError`` naming it. :func:`format_error` and :func:`iter_fields` are shared by
the other readers of :mod:`hloc_bpnp.io` (NVM, dataset formats).

Writers use the shortest representation that round-trips a float64 exactly (``repr``),
so ``read_x(write_x(d)) == d`` bit for bit.
"""
from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Dict, Iterable, Iterator, List, Optional, Sequence, Tuple, Union

import torch

from ..geometry import CAMERA_MODELS, Camera, Pose

logger = logging.getLogger(__name__)

PathLike = Union[str, Path]

__all__ = [
    "FormatError", "format_error", "check_file", "iter_fields", "parse_floats",
    "read_query_list", "write_query_list", "read_pairs", "write_pairs",
    "read_results", "write_results",
]


# ------------------------------------------------------------------ shared parse helpers
class FormatError(ValueError):
    """A malformed line in a text file; the message is ``"<file>:<line>: <what is wrong>"``.

    Attributes:
        path: the file.
        lineno: 1-based line number (None when the error concerns the whole file).
    """

    def __init__(self, path: PathLike, lineno: Optional[int], message: str):
        self.path = Path(path)
        self.lineno = lineno
        where = f"{self.path}:{lineno}" if lineno is not None else f"{self.path}"
        super().__init__(f"{where}: {message}")


def format_error(path: PathLike, lineno: Optional[int], message: str) -> FormatError:
    """Build (not raise) the ``"file:line: message"`` error used by all readers."""
    return FormatError(path, lineno, message)


def check_file(path: PathLike, what: str = "file") -> Path:
    """Return ``Path(path)`` or raise ``FileNotFoundError`` naming it (and what it is)."""
    p = Path(path)
    if not p.is_file():
        msg = f"{what} is not a regular file" if p.exists() else f"{what} not found"
        raise FileNotFoundError(2, msg, str(p))
    return p


def iter_fields(path: PathLike, what: str = "file") -> Iterator[Tuple[int, List[str]]]:
    """Yield ``(lineno, fields)`` for every non-blank, non-comment line (1-based lineno)."""
    p = check_file(path, what)
    with open(p, "r", encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            s = line.strip()
            if not s or s.startswith("#"):
                continue
            yield lineno, s.split()


def parse_floats(path: PathLike, lineno: int, tokens: Sequence[str], what: str) -> List[float]:
    """Parse finite floats, or raise a file:line error naming the bad token."""
    out = []
    for i, tok in enumerate(tokens):
        try:
            v = float(tok)
        except ValueError:
            raise format_error(path, lineno, f"{what}: value #{i + 1} {tok!r} is not a number") from None
        if not math.isfinite(v):
            raise format_error(path, lineno, f"{what}: value #{i + 1} {tok!r} is not finite")
        out.append(v)
    return out


INT64_MAX = 2 ** 63 - 1


def parse_int(path: PathLike, lineno: int, token: str, what: str, minimum: Optional[int] = None,
              maximum: Optional[int] = INT64_MAX) -> int:
    """Parse an integer (``"640"`` or ``"640.0"``) within [minimum, maximum] (by default
    int64's range, so that it fits the arrays it is stored in), or raise a file:line error."""
    try:
        v = float(token)
    except ValueError:
        raise format_error(path, lineno, f"{what} {token!r} is not an integer") from None
    if not math.isfinite(v) or v != int(v):
        raise format_error(path, lineno, f"{what} {token!r} is not an integer")
    v = int(v)
    if minimum is not None and v < minimum:
        raise format_error(path, lineno, f"{what} must be >= {minimum}, got {v}")
    if maximum is not None and v > maximum:
        raise format_error(path, lineno, f"{what} must be <= {maximum}, got {v}")
    return v


def _fmt(x: float) -> str:
    return repr(float(x))


def _prepare_output(path: PathLike) -> Path:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    return p


def check_name(name: str, what: str) -> str:
    """``name`` if it can be written in an hloc text file (non-empty, no whitespace), else a
    ValueError naming ``what`` and the name."""
    if not isinstance(name, str) or not name or any(c.isspace() for c in name):
        raise ValueError(f"{what}: image name {name!r} must be a non-empty string without whitespace")
    return name


# ------------------------------------------------------------------ query lists
def parse_camera_fields(path: PathLike, lineno: int, fields: Sequence[str]) -> Camera:
    """``MODEL W H p1 ...`` -> unbatched float64 :class:`Camera` (errors name file:line)."""
    if len(fields) < 3:
        raise format_error(path, lineno, f"expected 'MODEL WIDTH HEIGHT params...', got {len(fields)} fields")
    model = fields[0]
    if model not in CAMERA_MODELS:
        raise format_error(path, lineno, f"unknown camera model {model!r}; supported: {sorted(CAMERA_MODELS)}")
    width = parse_int(path, lineno, fields[1], "image width", minimum=1)
    height = parse_int(path, lineno, fields[2], "image height", minimum=1)
    n = CAMERA_MODELS[model]
    if len(fields) - 3 != n:
        raise format_error(path, lineno, f"camera model {model} needs {n} params, got {len(fields) - 3}")
    params = parse_floats(path, lineno, fields[3:], f"{model} params")
    return Camera(model, width, height, torch.tensor(params, dtype=torch.float64))


def camera_to_fields(camera: Camera) -> List[str]:
    """Unbatched camera -> ``[MODEL, W, H, p1, ...]`` strings (exact float round-trip)."""
    if camera.params.dim() != 1:
        raise ValueError(f"expected an unbatched camera (params (P,)), got params {tuple(camera.params.shape)}")
    return [camera.model, str(camera.width), str(camera.height)] + [
        _fmt(p) for p in camera.params.detach().cpu().double().tolist()
    ]


def read_query_list(path: PathLike) -> Dict[str, Camera]:
    """Read an hloc query list ``name MODEL W H p1 p2 ...``.

    Returns:
        ordered ``{name: Camera}`` (unbatched, float64 params), in file order.
    Raises:
        FileNotFoundError: missing file. FormatError (ValueError): bad line, naming file:line
        (too few fields, unknown model, wrong parameter count, non-numeric value, duplicate name).
    """
    out: Dict[str, Camera] = {}
    seen: Dict[str, int] = {}
    for lineno, fields in iter_fields(path, "query list"):
        if len(fields) < 4:
            raise format_error(path, lineno, f"expected 'name MODEL WIDTH HEIGHT params...', got {len(fields)} fields")
        name = fields[0]
        if name in seen:
            raise format_error(path, lineno, f"duplicate image {name!r} (first on line {seen[name]})")
        out[name] = parse_camera_fields(path, lineno, fields[1:])
        seen[name] = lineno
    logger.debug("Read %d queries from %s", len(out), path)
    return out


def read_image_list(path: PathLike) -> List[str]:
    """Read an hloc image list: one image name per line (the first field; a query list with
    intrinsics reads too), ``#`` comments and blank lines skipped.

    Returns:
        the names in file order.
    Raises:
        FileNotFoundError: missing file. FormatError (ValueError): a duplicate name or an empty
        list, naming file:line.
    """
    out: List[str] = []
    seen: Dict[str, int] = {}
    for lineno, fields in iter_fields(path, "image list"):
        name = check_name(fields[0], "image name")
        if name in seen:
            raise format_error(path, lineno, f"duplicate image name {name!r} (first on line {seen[name]})")
        seen[name] = lineno
        out.append(name)
    if not out:
        raise format_error(path, None, "the image list names no image")
    return out


def write_query_list(path: PathLike, queries: Dict[str, Camera]) -> Path:
    """Write ``{name: Camera}`` as an hloc query list (one line per image, dict order)."""
    p = _prepare_output(path)
    lines = []
    for name, cam in queries.items():
        check_name(name, "write_query_list")
        if not isinstance(cam, Camera):
            raise TypeError(f"write_query_list: value for {name!r} must be a Camera, got {type(cam).__name__}")
        lines.append(" ".join([name] + camera_to_fields(cam)))
    p.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    logger.debug("Wrote %d queries to %s", len(lines), p)
    return p


# ------------------------------------------------------------------ pairs
def read_pairs(path: PathLike) -> List[Tuple[str, str]]:
    """Read an hloc pairs file (``name0 name1`` per line), in file order, duplicates kept."""
    pairs: List[Tuple[str, str]] = []
    for lineno, fields in iter_fields(path, "pairs file"):
        if len(fields) != 2:
            raise format_error(path, lineno, f"expected 'name0 name1', got {len(fields)} fields")
        pairs.append((fields[0], fields[1]))
    logger.debug("Read %d pairs from %s", len(pairs), path)
    return pairs


def write_pairs(path: PathLike, pairs: Iterable[Tuple[str, str]]) -> Path:
    """Write ``[(name0, name1), ...]`` as an hloc pairs file."""
    p = _prepare_output(path)
    lines = []
    for i, pair in enumerate(pairs):
        if len(pair) != 2:
            raise ValueError(f"write_pairs: pair #{i} must have 2 names, got {pair!r}")
        a, b = (check_name(n, f"write_pairs pair #{i}") for n in pair)
        lines.append(f"{a} {b}\n")
    p.write_text("".join(lines), encoding="utf-8")
    return p


# ------------------------------------------------------------------ results
def parse_qt(path: PathLike, lineno: int, tokens: Sequence[str], what: str = "pose") -> Pose:
    """7 tokens ``qw qx qy qz tx ty tz`` -> unbatched float64 Pose (quaternion normalised).

    A zero (norm < 1e-12) quaternion is an error; a non-unit one is normalised.
    """
    if len(tokens) != 7:
        raise format_error(path, lineno, f"{what}: expected 7 values 'qw qx qy qz tx ty tz', got {len(tokens)}")
    v = parse_floats(path, lineno, tokens, what)
    q = torch.tensor(v[:4], dtype=torch.float64)
    n = float(q.norm())
    if n < 1e-12:
        raise format_error(path, lineno, f"{what}: zero quaternion {v[:4]} is not a rotation")
    if abs(n - 1) > 1e-6:
        logger.debug("%s:%d: normalising quaternion of norm %.6g", path, lineno, n)
    return Pose.from_qt(q / n, torch.tensor(v[4:], dtype=torch.float64))


def read_results(path: PathLike) -> Dict[str, Pose]:
    """Read hloc localization results ``name qw qx qy qz tx ty tz`` (cam_from_world).

    Returns:
        ordered ``{name: Pose}`` (unbatched, float64).
    Raises:
        FileNotFoundError; FormatError (ValueError) naming file:line for a wrong field count,
        a non-numeric value, a zero quaternion or a duplicate name.
    """
    out: Dict[str, Pose] = {}
    seen: Dict[str, int] = {}
    for lineno, fields in iter_fields(path, "results file"):
        if len(fields) != 8:
            raise format_error(path, lineno, f"expected 'name qw qx qy qz tx ty tz' (8 fields), got {len(fields)}")
        name = fields[0]
        if name in seen:
            raise format_error(path, lineno, f"duplicate image {name!r} (first on line {seen[name]})")
        out[name] = parse_qt(path, lineno, fields[1:], f"pose of {name!r}")
        seen[name] = lineno
    logger.debug("Read %d poses from %s", len(out), path)
    return out


def pose_to_fields(pose: Pose) -> List[str]:
    """Unbatched Pose -> ``[qw, qx, qy, qz, tx, ty, tz]`` strings (w >= 0, full precision)."""
    if pose.t.dim() != 1:
        raise ValueError(f"expected an unbatched pose (t (3,)), got t {tuple(pose.t.shape)}")
    p64 = Pose(pose.R.detach().cpu().double(), pose.t.detach().cpu().double())
    return [_fmt(x) for x in p64.qvec().tolist() + p64.t.tolist()]


def write_results(path: PathLike, results: Dict[str, Pose]) -> Path:
    """Write ``{name: Pose}`` (cam_from_world) as hloc results, full float64 precision."""
    p = _prepare_output(path)
    lines = []
    for name, pose in results.items():
        check_name(name, "write_results")
        if not isinstance(pose, Pose):
            raise TypeError(f"write_results: value for {name!r} must be a Pose, got {type(pose).__name__}")
        lines.append(" ".join([name] + pose_to_fields(pose)) + "\n")
    p.write_text("".join(lines), encoding="utf-8")
    logger.debug("Wrote %d poses to %s", len(lines), p)
    return p
