"""The per-query result of localization and its serialisation (hloc text + JSON log).

Results are never pickled: the JSON log holds plain numbers and names, so it stays readable
across versions. Failed queries are NOT written to the hloc results file (no fallback pose is
ever substituted); they appear in the JSON log with their failure reason, and evaluation
counts them as failures.
"""
from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np

from ..geometry import Camera, Pose
from ..io.atomic import atomic_path, atomic_write_text
from ..io.json_io import dumps_json, write_json

logger = logging.getLogger(__name__)

# failure reasons (stable strings, used in logs and tests)
NO_FEATURES = "no_features"
NO_RETRIEVAL = "no_retrieval_hits"
NO_MATCHES = "no_matches"
NO_2D3D = "no_2d3d_correspondences"
TOO_FEW_CORRESPONDENCES = "too_few_correspondences"
RANSAC_FAILED = "ransac_failed"
REFINEMENT_FAILED = "refinement_failed"  # pycolmap's pose (and intrinsics) refinement returned nothing
TOO_FEW_INLIERS = "too_few_inliers"
LOW_INLIER_RATIO = "low_inlier_ratio"
BAD_INTRINSICS = "implausible_refined_intrinsics"
IMAGE_ERROR = "image_error"
# batch execution (hloc_bpnp.distributed): the query killed its worker process repeatedly,
# or raised inside the worker (the batch goes on; the detail names the error)
WORKER_DIED = "worker_died"
WORKER_ERROR = "worker_error"


@dataclass
class LocalizationResult:
    """Everything known about one query's localization.

    Attributes:
        name: query name (relative path, as in hloc query lists).
        success: True when a pose passed the acceptance test.
        failure_reason: one of the module's reason strings when not successful.
        pose: cam_from_world (unbatched) or None.
        camera: the camera used (possibly with refined intrinsics).
        camera_source: 'given', 'exif' or 'image_size' (guessed prior).
        num_inliers, inlier_mask: RANSAC inliers over the 2D-3D correspondences.
        points2D: (M, 2) query keypoints of the correspondences; point3D_ids: (M,) COLMAP ids;
            keypoint_ids: (M,) the index of each correspondence's keypoint in the query's
            features (the same detection in every variant of a feature preset whose refiner
            moves positions only).
        weights: (M,) match scores used as correspondence weights.
        covariance: (6, 6) pose covariance sigma^2 (J^T W J)^-1 from the BPnP solve, in the
            solver tangent space [d_w (left rotation perturbation, rad), d_t], or None.
        retrieved: names of the retrieved keyframes, with their global scores.
        timings: seconds per stage.
        info: extra diagnostics (costs before/after refinement, cluster used, ...).
    """

    name: str
    success: bool = False
    failure_reason: Optional[str] = None
    pose: Optional[Pose] = None
    camera: Optional[Camera] = None
    camera_source: str = "given"
    num_keypoints: int = 0
    num_matches: int = 0
    num_inliers: int = 0
    inlier_mask: Optional[np.ndarray] = None
    points2D: Optional[np.ndarray] = None
    point3D_ids: Optional[np.ndarray] = None
    keypoint_ids: Optional[np.ndarray] = None
    weights: Optional[np.ndarray] = None
    covariance: Optional[np.ndarray] = None
    retrieved: List[str] = field(default_factory=list)
    retrieval_scores: List[float] = field(default_factory=list)
    timings: Dict[str, float] = field(default_factory=dict)
    info: Dict = field(default_factory=dict)

    def fail(self, reason: str, detail: str = "") -> "LocalizationResult":
        self.success = False
        self.failure_reason = reason
        self.pose = None
        if detail:
            self.info["failure_detail"] = detail
        return self

    def to_dict(self, with_correspondences: bool = True) -> Dict:
        """JSON-serialisable dict (numbers, lists, strings only)."""
        d = {
            "name": self.name,
            "success": self.success,
            "failure_reason": self.failure_reason,
            "camera": None
            if self.camera is None
            else {
                "model": self.camera.model,
                "width": self.camera.width,
                "height": self.camera.height,
                "params": [float(p) for p in self.camera.params.detach().cpu().tolist()],
            },
            "camera_source": self.camera_source,
            "num_keypoints": int(self.num_keypoints),
            "num_matches": int(self.num_matches),
            "num_inliers": int(self.num_inliers),
            "retrieved": list(self.retrieved),
            "retrieval_scores": [float(s) for s in self.retrieval_scores],
            "timings": {k: float(v) for k, v in self.timings.items()},
            "info": _jsonable(self.info),
        }
        if self.pose is not None:
            d["qvec"] = self.pose.qvec().detach().cpu().double().tolist()
            d["tvec"] = self.pose.t.detach().cpu().double().tolist()
        if self.covariance is not None:
            d["covariance"] = np.asarray(self.covariance, dtype=float).tolist()
        if with_correspondences and self.points2D is not None:
            d["points2D"] = np.asarray(self.points2D, dtype=float).tolist()
            d["point3D_ids"] = np.asarray(self.point3D_ids).astype(int).tolist()
            if self.keypoint_ids is not None:
                d["keypoint_ids"] = np.asarray(self.keypoint_ids).astype(int).tolist()
            if self.inlier_mask is not None:
                d["inlier_mask"] = np.asarray(self.inlier_mask).astype(bool).tolist()
            if self.weights is not None:
                d["weights"] = np.asarray(self.weights, dtype=float).tolist()
        return d


def _jsonable(x):
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.ndarray):
        return x.tolist()
    if isinstance(x, (np.floating, np.integer, np.bool_)):
        return x.item()
    if hasattr(x, "tolist"):  # torch tensors
        return x.tolist()
    return x


def write_results(results: Dict[str, LocalizationResult], results_path, log_path=None) -> None:
    """Write successful poses in hloc's text format and every query to a JSON log.

    Both files are written to a temporary name and renamed, so an interrupted job never
    leaves a truncated file. The JSON log is ``<results>_log.json`` unless given.
    """
    from ..io.hloc_text import write_results as write_hloc_results

    results_path = Path(results_path)
    results_path.parent.mkdir(parents=True, exist_ok=True)
    poses = {n: r.pose for n, r in results.items() if r.success and r.pose is not None}
    with atomic_path(results_path) as tmp:
        write_hloc_results(tmp, poses)
    log_path = Path(log_path) if log_path else results_path.with_name(results_path.stem + "_log.json")
    write_json(log_path, {"queries": [r.to_dict() for r in results.values()]}, indent=None)
    n_fail = len(results) - len(poses)
    logger.info("Wrote %d poses to %s (%d failures logged in %s)", len(poses), results_path, n_fail, log_path)


class ResultsWriter:
    """The results file and JSON log of :func:`write_results`, written as results arrive.

    ``add`` appends results (in the order they are added); ``flush`` rewrites both files
    atomically (temporary name + rename, the results file first, then the log, so the log never
    names a pose the results file lacks). The files hold exactly what :func:`write_results`
    would write for the same results. Flushes are throttled: at most one every
    ``flush_seconds``, and no more often than 10x the time the last write took, so a long batch
    spends at most ~10% of its time rewriting; :meth:`close` always writes.

    With ``resume=True`` an existing log is read back: its queries are :attr:`done` (kept, in
    their order, with their results-file lines verbatim) and new results are appended after
    them. A logged success whose line is missing from the results file is not done (localized
    again).

    Args:
        results_path: hloc results text file.
        log_path: JSON log (default ``<results>_log.json``).
        resume: keep the queries of an existing log.
        flush_seconds: minimum interval between two writes (0: write on every flush).
    """

    def __init__(self, results_path, log_path=None, resume: bool = False, flush_seconds: float = 1.0):
        self.results_path = Path(results_path)
        self.log_path = Path(log_path) if log_path else self.results_path.with_name(
            self.results_path.stem + "_log.json")
        self.flush_seconds = float(flush_seconds)
        self._entries: Dict[str, str] = {}  # name -> JSON text of its log entry
        self._lines: Dict[str, str] = {}  # name -> hloc results line (successes)
        self._success: Dict[str, bool] = {}
        self._dirty = False
        self._last_flush = -float("inf")
        self._last_write_seconds = 0.0
        if resume:
            self._load_existing()

    def _load_existing(self) -> None:
        if not self.log_path.is_file():
            logger.info("Resume: no log at %s, starting from scratch", self.log_path)
            return
        try:
            entries = json.loads(self.log_path.read_text())["queries"]
        except (ValueError, KeyError, TypeError) as e:
            raise ValueError(f"Cannot resume from {self.log_path}: not a localization log ({e})") from e
        lines = {}
        if self.results_path.is_file():
            for ln in self.results_path.read_text().splitlines(keepends=True):
                if ln.strip():
                    lines[ln.split(maxsplit=1)[0]] = ln if ln.endswith("\n") else ln + "\n"
        redo = []
        for e in entries:
            name = e["name"]
            if e.get("success") and name not in lines:
                redo.append(name)
                continue
            self._entries[name] = dumps_json(e)
            self._success[name] = bool(e.get("success"))
            if e.get("success"):
                self._lines[name] = lines[name]
        if redo:
            logger.warning("Resume: %d logged successes have no line in %s; localizing them again (e.g. %s)",
                           len(redo), self.results_path, redo[:3])
        logger.info("Resume: %d queries already done in %s", len(self._entries), self.log_path)

    @property
    def done(self) -> set:
        """Names of the queries written (or read back on resume)."""
        return set(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def num_success(self) -> int:
        return sum(self._success.values())

    def add(self, result: LocalizationResult) -> None:
        """Record one result (a name already present is replaced in place)."""
        from ..io.hloc_text import check_name, pose_to_fields

        name = check_name(result.name, "ResultsWriter")
        self._entries[name] = dumps_json(result.to_dict())
        self._success[name] = bool(result.success and result.pose is not None)
        self._lines.pop(name, None)
        if self._success[name]:
            self._lines[name] = " ".join([name] + pose_to_fields(result.pose)) + "\n"
        self._dirty = True

    def flush(self, force: bool = False) -> bool:
        """Write both files if anything changed and the throttle allows (always with ``force``).
        Returns whether it wrote."""
        now = time.perf_counter()
        wait = max(self.flush_seconds, 10.0 * self._last_write_seconds)
        if not self._dirty or (not force and now - self._last_flush < wait):
            return False
        self.results_path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.results_path, "".join(self._lines[n] for n in self._entries if n in self._lines))
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.log_path, '{"queries": [' + ", ".join(self._entries.values()) + "]}\n")
        self._dirty = False
        self._last_flush = time.perf_counter()
        self._last_write_seconds = self._last_flush - now
        return True

    def close(self) -> None:
        """Final write (logs the counts)."""
        self.flush(force=True)
        logger.info("Wrote %d poses to %s (%d failures logged in %s)", len(self._lines), self.results_path,
                    len(self._entries) - len(self._lines), self.log_path)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False


def query_seconds(timings: Dict[str, float]) -> float:
    """Wall time of one query from its per-stage ``timings``: ``timings["total"]`` (which
    already includes ``"features"`` and every other stage) when present, else the sum of the
    stages (a query that failed before the total was recorded). Never adds a stage twice."""
    if "total" in timings:
        return float(timings["total"])
    return float(sum(v for k, v in timings.items() if k != "total"))


def summarize_failures(results: Dict[str, LocalizationResult]) -> Dict[str, int]:
    counts: Dict[str, int] = {}
    for r in results.values():
        if not r.success:
            counts[r.failure_reason or "unknown"] = counts.get(r.failure_reason or "unknown", 0) + 1
    return counts
