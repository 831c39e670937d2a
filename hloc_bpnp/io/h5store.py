"""HDF5 feature and match stores in hloc's on-disk layout.

Features (one group per image name; a name with '/' becomes nested groups, as in hloc)::

    <name>/keypoints         (N, 2) float32   pixel coords, top-left pixel centre at (0, 0)
    <name>/descriptors       (D, N) float32   (float16 with ``descriptors_as_half``)
    <name>/scores            (N,)   float32
    <name>/image_size        (2,)   int       (W, H)
    <name>/<extra>           any extra per-image array (``scales``, ``oris``, ...)

Matches (group key ``names_to_pair(name0, name1)``: both names with '/' replaced by '-',
joined by '/')::

    <pair>/matches0          (N0,) int32      index into image 1's keypoints, -1 if unmatched
    <pair>/matching_scores0  (N0,) float32

In memory the API follows this project's conventions: keypoints in COLMAP pixels (top-left
pixel centre at (0.5, 0.5)) and descriptors as (N, D). The 0.5 shift and the transpose
happen here, at the I/O edge, so hloc reads our files and we read hloc's with the same
meaning. Keypoints are always stored as float32 (float16 loses up to 1 px on 3000-px images).

Atomic, resumable writing: :meth:`FeatureStore.writer` / :meth:`MatchStore.writer` write
into ``<path>.partial`` and rename it to ``<path>`` on a clean ``close()`` (or a clean exit of
the ``with`` block). If the job raises, the partial file is kept; a re-run opens it again
and skips the names already in it. If only ``<path>`` exists, it is copied into the partial
file first, so a job can extend a finished store without ever leaving it half-written.
"""
from __future__ import annotations

import difflib
import logging
import os
import shutil
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Tuple, Union

import h5py
import numpy as np

logger = logging.getLogger(__name__)

PathLike = Union[str, os.PathLike]

#: root attribute recording where the stored keypoints put the top-left pixel centre
CONVENTION_ATTR = "keypoint_pixel_origin"
#: hloc: top-left pixel centre at (0, 0) (files without the attribute are read as this)
HLOC_ORIGIN = "hloc"
#: COLMAP: top-left pixel centre at (0.5, 0.5)
COLMAP_ORIGIN = "colmap"
_OFFSETS = {HLOC_ORIGIN: 0.5, COLMAP_ORIGIN: 0.0}


def names_to_pair(name0: str, name1: str, separator: str = "/") -> str:
    """hloc's match group key: both names with '/' replaced by '-', joined by ``separator``."""
    return separator.join((name0.replace("/", "-"), name1.replace("/", "-")))


def names_to_pair_old(name0: str, name1: str) -> str:
    """hloc's older match key (``'_'`` separator), still accepted when reading."""
    return names_to_pair(name0, name1, separator="_")


def find_pair(hfile: h5py.Group, name0: str, name1: str) -> Tuple[str, bool]:
    """Locate the group of a pair in a match file, as hloc does.

    Returns:
        (key, reversed): ``reversed`` is True when the file stores the pair as (name1, name0).
    Raises:
        KeyError: if neither order is stored, with either separator.
    """
    for key, rev in ((names_to_pair(name0, name1), False), (names_to_pair(name1, name0), True),
                     (names_to_pair_old(name0, name1), False), (names_to_pair_old(name1, name0), True)):
        if key in hfile and isinstance(hfile[key], h5py.Group) and "matches0" in hfile[key]:
            return key, rev
    raise KeyError(f"Pair {(name0, name1)!r} not found in {hfile.file.filename} "
                   f"(neither order, '/' or '_' separator). Matched with a different pair list?")


def invert_matches(matches0: np.ndarray, scores0: np.ndarray, num1: int) -> Tuple[np.ndarray, np.ndarray]:
    """Turn image-0-indexed matches into image-1-indexed ones.

    Args:
        matches0: (N0,) int, index into image 1 or -1.
        scores0: (N0,) float.
        num1: N1, the number of keypoints of image 1.
    Returns:
        matches1 (N1,) int32 with -1 for unmatched, scores1 (N1,) float32 (0 where unmatched).
    """
    matches0 = np.asarray(matches0)
    valid = np.flatnonzero(matches0 >= 0)
    if valid.size and matches0[valid].max() >= num1:
        raise ValueError(f"matches0 refers to keypoint {int(matches0[valid].max())} but image 1 "
                         f"has only {num1} keypoints")
    matches1 = np.full(num1, -1, np.int32)
    scores1 = np.zeros(num1, np.float32)
    matches1[matches0[valid]] = valid
    scores1[matches0[valid]] = np.asarray(scores0)[valid]
    return matches1, scores1


def _missing(kind: str, name: str, known: Iterable[str], path: Path) -> KeyError:
    close = difflib.get_close_matches(name, list(known), n=3, cutoff=0.5)
    return KeyError(f"{kind} {name!r} not in {path}; close matches: {close}")


class _H5Store:
    """One open h5py handle for the whole job; context manager; atomic writer."""

    def __init__(self, path: PathLike, mode: str = "r", *, _final_path: Optional[Path] = None):
        if mode not in ("r", "a", "w"):
            raise ValueError(f"mode must be 'r', 'a' or 'w', got {mode!r}")
        self.path = Path(path)
        self.mode = mode
        self._final_path = _final_path  # set for writers: rename target on close()
        if mode == "r" and not self.path.is_file():
            raise FileNotFoundError(f"No HDF5 store at {self.path}")
        if mode != "r":
            self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._h5 = h5py.File(str(self.path), mode, libver="latest")
        except OSError as e:  # truncated / not HDF5: name the file, not h5py's internals alone
            raise OSError(f"{self.path}: not a readable HDF5 file ({e})") from e

    @classmethod
    def writer(cls, path: PathLike, overwrite: bool = False, **kwargs):
        """Open an atomic, resumable writer for ``path`` (see the module docstring).

        Args:
            path: the final store path.
            overwrite: ignore both an existing store and an interrupted partial file.
        """
        path = Path(path)
        partial = path.with_name(path.name + ".partial")
        if overwrite:
            partial.unlink(missing_ok=True)
        elif partial.is_file():
            try:
                with h5py.File(str(partial), "r"):
                    pass
                logger.info("Resuming interrupted job from %s", partial)
            except OSError as err:  # killed mid-write: file unreadable, start again
                logger.warning("Partial store %s is unreadable (%s); starting again", partial, err)
                partial.unlink()
        if not partial.is_file() and path.is_file() and not overwrite:
            shutil.copyfile(path, partial)
            logger.info("Continuing existing store %s", path)
        return cls(partial, "a", _final_path=path, **kwargs)

    @property
    def is_open(self) -> bool:
        return bool(self._h5)

    def _check_writable(self):
        if not self.is_open:
            raise ValueError(f"Store {self.path} is closed")
        if self.mode == "r":
            raise ValueError(f"Store {self.path} is open read-only (mode='r')")

    def close(self, commit: bool = True) -> Optional[Path]:
        """Close the file; a writer renames its partial file onto the target when ``commit``.

        Returns the path of the stored file (None if a writer did not commit).
        """
        if self.is_open:
            self._h5.close()
        if self._final_path is not None:
            if not commit:
                logger.warning("Left partial store %s (re-run to resume)", self.path)
                return None
            if self.path.is_file():
                os.replace(self.path, self._final_path)
                logger.info("Wrote %s", self._final_path)
            return self._final_path
        return self.path

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        self.close(commit=exc_type is None)
        return False

    def __del__(self):
        try:
            if self.is_open:
                self._h5.close()
        except Exception:  # interpreter shutdown
            pass


class FeatureStore(_H5Store):
    """Local features per image, in hloc's HDF5 layout.

    Args:
        path: the ``.h5`` file.
        mode: 'r' (read), 'a' (read/write, create if missing), 'w' (truncate).
        descriptors_as_half: store descriptors as float16 (keypoints stay float32).
        keypoint_origin: pixel convention for files this store creates: 'hloc' (default,
            readable by hloc) or 'colmap'. An existing file keeps its own (recorded in the
            root attribute; files without it are hloc's).
    """

    def __init__(self, path: PathLike, mode: str = "r", *, descriptors_as_half: bool = False,
                 keypoint_origin: str = HLOC_ORIGIN, _final_path: Optional[Path] = None):
        if keypoint_origin not in _OFFSETS:
            raise ValueError(f"keypoint_origin must be one of {list(_OFFSETS)}, got {keypoint_origin!r}")
        super().__init__(path, mode, _final_path=_final_path)
        self.descriptors_as_half = descriptors_as_half
        if CONVENTION_ATTR in self._h5.attrs:
            origin = self._h5.attrs[CONVENTION_ATTR]
            self.keypoint_origin = origin.decode() if isinstance(origin, bytes) else str(origin)
        elif mode != "r" and len(self._h5) == 0:
            self.keypoint_origin = keypoint_origin
            self._h5.attrs[CONVENTION_ATTR] = keypoint_origin
        else:
            self.keypoint_origin = HLOC_ORIGIN
        self._offset = _OFFSETS[self.keypoint_origin]
        self._names = self._scan_names()
        self._name_set = set(self._names)

    def _scan_names(self) -> List[str]:
        names = set()

        def visit(_, obj):
            if isinstance(obj, h5py.Dataset):
                names.add(obj.parent.name.strip("/"))

        self._h5.visititems(visit)
        return sorted(names)

    def names(self) -> List[str]:
        """All image names (full names, with '/'), sorted."""
        return list(self._names)

    def __len__(self) -> int:
        return len(self._names)

    def __contains__(self, name: str) -> bool:
        return name in self._name_set

    def put(self, name: str, feats: Dict[str, np.ndarray], overwrite: bool = True) -> None:
        """Store the features of one image.

        Args:
            name: image name (may contain '/').
            feats: ``keypoints`` (N, 2) COLMAP pixels, ``descriptors`` (N, D), ``scores`` (N,),
                ``image_size`` (2,) = (W, H), plus any extra arrays. Torch tensors are accepted.
            overwrite: replace an existing entry (else raise ``KeyError``).
        """
        self._check_writable()
        if not name or name.startswith("/") or name.endswith("/"):
            raise ValueError(f"Invalid image name {name!r}")
        feats = {k: _to_numpy(v) for k, v in feats.items()}
        n = None
        if "keypoints" in feats:
            kp = feats["keypoints"]
            if kp.ndim != 2 or kp.shape[1] != 2:
                raise ValueError(f"{name}: keypoints must be (N, 2), got {kp.shape}")
            n = kp.shape[0]
            feats["keypoints"] = (kp.astype(np.float64) - self._offset).astype(np.float32)
        if "descriptors" in feats:
            d = feats["descriptors"]
            if d.ndim != 2 or (n is not None and d.shape[0] != n):
                raise ValueError(f"{name}: descriptors must be (N, D) with N={n}, got {d.shape}")
            d = np.ascontiguousarray(d.T)
            feats["descriptors"] = d.astype(np.float16 if self.descriptors_as_half else np.float32)
        if "scores" in feats:
            s = feats["scores"]
            if s.ndim != 1 or (n is not None and s.shape[0] != n):
                raise ValueError(f"{name}: scores must be (N,) with N={n}, got {s.shape}")
            feats["scores"] = s.astype(np.float32)
        if "image_size" in feats:
            sz = feats["image_size"].reshape(-1)
            if sz.shape != (2,):
                raise ValueError(f"{name}: image_size must be (W, H), got shape {feats['image_size'].shape}")
            feats["image_size"] = sz
        if name in self._h5:
            if not overwrite:
                raise KeyError(f"{name!r} already in {self.path}")
            del self._h5[name]
        try:
            grp = self._h5.create_group(name)
            for k, v in feats.items():
                grp.create_dataset(k, data=v)
        except BaseException:
            if name in self._h5:  # never leave a half-written group behind
                del self._h5[name]
            if name in self._name_set:
                self._name_set.discard(name)
                self._names.remove(name)
            raise
        if name not in self._name_set:
            self._names.append(name)
            self._name_set.add(name)
        self._h5.flush()

    def get(self, name: str, keys: Optional[Sequence[str]] = None) -> Dict[str, np.ndarray]:
        """Features of one image: descriptors (N, D), keypoints (N, 2) in COLMAP pixels.

        Args:
            keys: the arrays to read (default: all).
        Raises:
            KeyError: unknown name (lists close matches) or unknown key.
        """
        if name not in self:
            raise _missing("Image", name, self._names, self.path)
        grp = self._h5[name]
        keys = [k for k in grp.keys() if isinstance(grp[k], h5py.Dataset)] if keys is None else list(keys)
        out = {}
        for k in keys:
            if k not in grp:
                raise KeyError(f"{name!r} in {self.path} has no {k!r}; has {sorted(grp.keys())}")
            v = grp[k][()]
            if k == "keypoints":
                if v.ndim != 2 or v.shape[1] != 2:
                    raise ValueError(f"{self.path}: image {name!r}: keypoints must be (N, 2), got {v.shape}")
                v = (v.astype(np.float64) + self._offset).astype(np.float32)
            elif k == "descriptors":
                if v.ndim != 2:
                    raise ValueError(f"{self.path}: image {name!r}: descriptors must be (D, N), got {v.shape}")
                v = np.ascontiguousarray(v.T)
            out[k] = v
        n = {k: (out[k].shape[0] if out[k].ndim else -1) for k in ("keypoints", "descriptors", "scores") if k in out}
        if len(set(n.values())) > 1:
            raise ValueError(f"{self.path}: image {name!r}: inconsistent counts {n} (descriptors are stored (D, N))")
        return out

    def has_key(self, name: str, key: str) -> bool:
        """Whether image ``name`` stores the array ``key`` (e.g. a refiner's ``sigmas``)."""
        if name not in self:
            raise _missing("Image", name, self._names, self.path)
        return isinstance(self._h5[name].get(key), h5py.Dataset)

    def num_keypoints(self, name: str) -> int:
        """N for one image (from the keypoints' shape; no data read)."""
        if name not in self:
            raise _missing("Image", name, self._names, self.path)
        return int(self._h5[name]["keypoints"].shape[0])


class MatchStore(_H5Store):
    """Pairwise matches in hloc's HDF5 layout (see the module docstring).

    Groups we write also carry ``name0``/``name1`` attributes (hloc ignores them) so
    :meth:`pairs` returns the original names; for hloc's files it returns the keys' parts.
    """

    def __init__(self, path: PathLike, mode: str = "r", *, _final_path: Optional[Path] = None):
        super().__init__(path, mode, _final_path=_final_path)
        self._pairs = self._scan_pairs()

    def _scan_pairs(self) -> List[Tuple[str, str]]:
        pairs = []

        def visit(key, obj):
            if isinstance(obj, h5py.Group) and "matches0" in obj:
                if "name0" in obj.attrs:
                    pairs.append((str(obj.attrs["name0"]), str(obj.attrs["name1"])))
                elif "/" in key:
                    pairs.append(tuple(key.split("/", 1)))
                else:  # old '_' separator: ambiguous split, keep the key as one name
                    pairs.append((key, ""))

        self._h5.visititems(visit)
        return pairs

    def pairs(self) -> List[Tuple[str, str]]:
        """Stored pairs in storage order (name0, name1)."""
        return list(self._pairs)

    def __len__(self) -> int:
        return len(self._pairs)

    def __contains__(self, pair: Tuple[str, str]) -> bool:
        try:
            find_pair(self._h5, *pair)
            return True
        except KeyError:
            return False

    def put(self, name0: str, name1: str, matches0: np.ndarray, scores0: np.ndarray,
            num1: Optional[int] = None, overwrite: bool = True) -> None:
        """Store the matches of a pair.

        Args:
            matches0: (N0,) int, index into image 1's keypoints or -1.
            scores0: (N0,) float.
            num1: N1 (optional); recorded so the reversed pair can be inverted without features.
        """
        self._check_writable()
        m = _to_numpy(matches0).reshape(-1)
        s = _to_numpy(scores0).reshape(-1)
        if m.shape != s.shape:
            raise ValueError(f"{(name0, name1)}: matches0 {m.shape} and scores0 {s.shape} differ")
        if m.size and not np.issubdtype(m.dtype, np.integer):
            raise ValueError(f"{(name0, name1)}: matches0 must be integers, got {m.dtype}")
        if m.size and m.min() < -1:
            raise ValueError(f"{(name0, name1)}: matches0 has entries < -1")
        if num1 is not None and m.size and m.max() >= num1:
            raise ValueError(f"{(name0, name1)}: matches0 refers to {int(m.max())} >= num1={num1}")
        key = names_to_pair(name0, name1)
        try:
            old, _ = find_pair(self._h5, name0, name1)
        except KeyError:
            old = None
        if old is not None:
            if not overwrite:
                raise KeyError(f"Pair {(name0, name1)} already in {self.path}")
            del self._h5[old]
            self._pairs = [p for p in self._pairs if p not in ((name0, name1), (name1, name0))]
        try:
            grp = self._h5.create_group(key)
            grp.create_dataset("matches0", data=m.astype(np.int32))
            grp.create_dataset("matching_scores0", data=s.astype(np.float32))
            grp.attrs["name0"], grp.attrs["name1"] = name0, name1
            if num1 is not None:
                grp.attrs["num_keypoints1"] = int(num1)
        except BaseException:
            if key in self._h5:
                del self._h5[key]
            raise
        self._pairs.append((name0, name1))
        self._h5.flush()

    def get(self, name0: str, name1: str, num0: Optional[int] = None) -> Tuple[np.ndarray, np.ndarray]:
        """matches0 (N0,) int32 (-1 = unmatched) and scores0 (N0,) float32 for (name0, name1).

        A pair stored in the other order is inverted; that needs N0, taken from ``num0``
        or from the ``num_keypoints1`` attribute we write (hloc files lack it: pass ``num0``,
        e.g. ``FeatureStore.num_keypoints(name0)``, or use :meth:`get_matches`).
        """
        key, rev = self._find(name0, name1)
        grp = self._h5[key]
        m, s = self._read_pair(grp, name0, name1)
        if not rev:
            return m, s
        if num0 is None:
            if "num_keypoints1" not in grp.attrs:
                raise ValueError(f"Pair {(name0, name1)} is stored reversed in {self.path} without "
                                 f"the keypoint count of {name0!r}: pass num0")
            num0 = int(grp.attrs["num_keypoints1"])
        return invert_matches(m, s, num0)

    def get_matches(self, name0: str, name1: str) -> Tuple[np.ndarray, np.ndarray]:
        """Matched index pairs (M, 2) int (column 0 indexes name0) and their scores (M,)."""
        key, rev = self._find(name0, name1)
        m, s = self._read_pair(self._h5[key], name0, name1)
        idx = np.flatnonzero(m >= 0)
        ij = np.stack([idx, m[idx]], -1).astype(np.int64)
        if rev:
            ij = np.ascontiguousarray(ij[:, ::-1])
        return ij, s[idx].astype(np.float32)

    def _read_pair(self, grp, name0, name1) -> Tuple[np.ndarray, np.ndarray]:
        """(matches0 int32 (N0,), scores0 float32 (N0,)) of a stored pair, validated."""
        missing = [k for k in ("matches0", "matching_scores0") if k not in grp]
        if missing:
            raise KeyError(f"{self.path}: pair {(name0, name1)} lacks {missing}; has {sorted(grp.keys())}")
        m, s = grp["matches0"][()], grp["matching_scores0"][()]
        if m.ndim != 1 or s.shape != m.shape:
            raise ValueError(f"{self.path}: pair {(name0, name1)}: matches0 {m.shape} and matching_scores0 "
                             f"{s.shape} must both be (N0,)")
        return m.astype(np.int32), s.astype(np.float32)

    def _find(self, name0, name1):
        try:
            return find_pair(self._h5, name0, name1)
        except KeyError:
            known = [f"{a} {b}" for a, b in self._pairs]
            close = difflib.get_close_matches(f"{name0} {name1}", known, n=3, cutoff=0.5)
            raise KeyError(f"Pair {(name0, name1)} not in {self.path} (either order); "
                           f"close matches: {close}") from None


def _to_numpy(v) -> np.ndarray:
    if hasattr(v, "detach"):
        v = v.detach().cpu().numpy()
    return np.asarray(v)
