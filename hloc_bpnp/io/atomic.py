"""Atomic file writes: every output goes to a temporary name in its folder, then is renamed.

A reader (or a resumed run) never sees a half-written file: either the old one or the new one.
One helper for the whole package instead of hand-written temp-then-rename blocks.
"""
from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import IO, Iterator, Union

PathLike = Union[str, Path]


def temp_path(path: PathLike) -> Path:
    """The temporary name ``path`` is written under: ``<name>.tmp`` in the same folder (same
    file system, so the final rename is atomic)."""
    path = Path(path)
    return path.with_name(path.name + ".tmp")


@contextlib.contextmanager
def atomic_path(path: PathLike) -> Iterator[Path]:
    """Yield a temporary path to write ``path`` through; renamed over ``path`` on success,
    removed on error. For writers that take a file name (``torch.save``, h5py, numpy)::

        with atomic_path(out / "weights.pt") as tmp:
            torch.save(state, tmp)
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(path)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


@contextlib.contextmanager
def atomic_open(path: PathLike, mode: str = "w", **kwargs) -> Iterator[IO]:
    """``open(path, mode)`` through a temporary file that replaces ``path`` when the block
    succeeds (text modes default to UTF-8). Only write modes make sense."""
    if not any(c in mode for c in "wx"):
        raise ValueError(f"atomic_open writes a new file: mode must be 'w' or 'wb', got {mode!r}")
    if "b" not in mode:
        kwargs.setdefault("encoding", "utf-8")
    with atomic_path(path) as tmp:
        with open(tmp, mode, **kwargs) as f:
            yield f


def atomic_write_text(path: PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically; returns ``path``."""
    with atomic_open(path, "w") as f:
        f.write(text)
    return Path(path)


def atomic_write_bytes(path: PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically; returns ``path``."""
    with atomic_open(path, "wb") as f:
        f.write(data)
    return Path(path)
