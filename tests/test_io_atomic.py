"""The atomic-write helper: the target is replaced whole or not at all."""
import pytest

from hloc_bpnp.io.atomic import atomic_open, atomic_path, atomic_write_bytes, atomic_write_text


def test_atomic_write_replaces_whole_file(tmp_path):
    p = tmp_path / "sub" / "a.txt"
    atomic_write_text(p, "one\n")
    assert p.read_text() == "one\n"
    atomic_write_bytes(p, b"two")
    assert p.read_bytes() == b"two"
    assert [x.name for x in p.parent.iterdir()] == ["a.txt"]


def test_failed_write_keeps_the_old_file_and_no_temp(tmp_path):
    p = tmp_path / "a.txt"
    p.write_text("old")
    with pytest.raises(RuntimeError, match="boom"):
        with atomic_open(p) as f:
            f.write("half")
            raise RuntimeError("boom")
    assert p.read_text() == "old"
    with pytest.raises(RuntimeError):
        with atomic_path(p) as tmp:
            tmp.write_text("half")
            raise RuntimeError("boom")
    assert p.read_text() == "old" and sorted(x.name for x in tmp_path.iterdir()) == ["a.txt"]


def test_atomic_open_refuses_read_modes(tmp_path):
    with pytest.raises(ValueError, match="mode must be"):
        with atomic_open(tmp_path / "a.txt", "r"):
            pass


def test_no_hand_written_temp_then_rename_blocks():
    """Outputs go through hloc_bpnp.io.atomic (the HDF5 store's resumable partial file aside)."""
    import re
    from pathlib import Path

    pkg = Path(__file__).resolve().parents[1] / "hloc_bpnp"
    pattern = re.compile(r"os\.replace\(|\btmp\.replace\(|\.tmp\b[\"']")
    bad = [f"{p.relative_to(pkg)}:{i}" for p in pkg.rglob("*.py") if p.name not in ("atomic.py", "h5store.py")
           for i, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1) if pattern.search(line)]
    assert not bad, bad
