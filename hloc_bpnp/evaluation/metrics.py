"""Pose errors and recalls of localization results against ground truth, in memory.

Definitions used throughout (documented once, here):

- **Rotation error**: angle of ``R_est R_gt^T`` in degrees, both rotations projected onto
  SO(3) first and the angle taken with the atan2 form
  (:func:`hloc_bpnp.geometry.rotation_error_deg`), so near-orthonormal ground truth
  (Strecha: ~1e-6) gives ~0 error for identical poses.
- **Position error**: distance between the camera centres ``-R^T t`` in scene units;
  ``scale_to_cm`` converts it to centimetres for reports (100 when the unit is metres,
  ``None`` when the scene has no metric scale).
- **Failures**: a query in the ground truth (or in ``queries``) with no estimate, an
  estimate of ``None``, a non-finite pose, or a per-query log saying ``success: false``
  (the log wins over a fallback pose written anyway). A failure has infinite errors.
- **Medians**: ``*_all`` over all queries with failures counted as infinite error (hloc's
  convention: the median is infinite once half the queries fail); ``*_localized`` over
  the localized queries only (NaN when none is localized). Means are over localized only.
- **Recall** at a threshold ``(position, rotation_deg)``: fraction of ALL queries whose
  position error and rotation error are both within the threshold. ``inclusive=True``
  (the default) uses ``<=``; ``inclusive=False`` uses strict ``<`` as hloc's
  Cambridge/7-Scenes scripts do.
- **Estimates for names not in the ground truth** are an error by default (the message
  lists them, they are usually a naming mismatch); ``unknown="warn"`` logs a warning and
  ignores them instead. Estimates for ground-truth images outside ``queries`` (e.g. the
  map images of a leave-one-out model) are ignored.
"""
from __future__ import annotations

import difflib
import logging
import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Union

import numpy as np
import torch

from ..config import load_config, merge
from ..geometry import Pose, center_error, rotation_error_deg

logger = logging.getLogger(__name__)

default_conf: Dict[str, Any] = {
    "thresholds": [],  # list of [position (scene units), rotation (deg)]
    "scale_to_cm": 100.0,  # scene units -> cm; None if the unit is unknown
    "inclusive": True,  # error <= threshold counts (False: strict <)
}


@dataclass(frozen=True)
class Threshold:
    """A recall threshold: position in scene units and rotation in degrees."""

    position: float
    rotation_deg: float

    def label(self, scale_to_cm: Optional[float] = 100.0) -> str:
        """Short label, e.g. ``"2cm,0.2deg"``, ``"0.25m,2deg"`` or ``"0.1u,1deg"``."""
        rot = f"{self.rotation_deg:g}deg"
        if scale_to_cm is None:
            return f"{self.position:g}u,{rot}"
        cm = self.position * scale_to_cm
        if cm < 25:
            return f"{cm:.6g}cm,{rot}"
        return f"{cm / 100:.6g}m,{rot}"


ThresholdsLike = Union[Sequence[Union[Threshold, Sequence[float]]], str, Path, None]


def parse_thresholds(thresholds: Sequence[Union[Threshold, Sequence[float]]]) -> List[Threshold]:
    """Validate a list of ``(position, rotation_deg)`` pairs (or :class:`Threshold`)."""
    if isinstance(thresholds, (str, bytes)) or not isinstance(thresholds, Sequence):
        raise ValueError(
            f"thresholds must be a list of (position, rotation_deg) pairs, got {thresholds!r}"
        )
    out = []
    for i, th in enumerate(thresholds):
        if not isinstance(th, Threshold):
            try:
                p, a = (float(x) for x in th)
            except (TypeError, ValueError):
                raise ValueError(
                    f"threshold {i} must be a (position, rotation_deg) pair, got {th!r}"
                ) from None
            th = Threshold(p, a)
        if not (math.isfinite(th.position) and math.isfinite(th.rotation_deg)) or min(
            th.position, th.rotation_deg
        ) < 0:
            raise ValueError(f"threshold {i} must be finite and >= 0, got {th}")
        out.append(th)
    if not out:
        raise ValueError("at least one recall threshold is needed")
    return out


def load_evaluation_config(preset: Union[str, Path, Dict, None] = "default") -> Dict[str, Any]:
    """Load a threshold preset from ``configs/evaluation/`` (name, YAML path or dict).

    Returns the preset merged into :data:`default_conf` (unknown keys rejected) with
    ``thresholds`` parsed into :class:`Threshold` objects.
    """
    conf = merge(default_conf, load_config("evaluation", preset or "default"), strict=True)
    conf["thresholds"] = parse_thresholds(conf["thresholds"])
    s = conf["scale_to_cm"]
    if s is not None and not (isinstance(s, (int, float)) and s > 0):
        raise ValueError(f"scale_to_cm must be a positive number or null, got {s!r}")
    return conf


def _resolve_thresholds(thresholds: ThresholdsLike) -> List[Threshold]:
    if thresholds is None or isinstance(thresholds, (str, Path)):
        return load_evaluation_config(thresholds or "default")["thresholds"]
    return parse_thresholds(thresholds)


def _fmt_float(x: float) -> Optional[float]:
    """JSON-safe float: inf / nan become None."""
    x = float(x)
    return x if math.isfinite(x) else None


@dataclass
class EvalResult:
    """Per-query errors and summary statistics of one method on one scene.

    Attributes:
        names: (N,) query names, in evaluation order.
        rotation_errors_deg: (N,) float64, ``inf`` for failures.
        position_errors: (N,) float64 camera-centre errors in scene units, ``inf`` for failures.
        thresholds: recall thresholds.
        scale_to_cm: scene units -> cm (``None``: unit unknown, report scene units).
        inclusive: recall uses ``<=`` (True) or ``<`` (False).
        failure_reasons: name -> reason, for the failed queries only.
    """

    names: List[str]
    rotation_errors_deg: np.ndarray
    position_errors: np.ndarray
    thresholds: List[Threshold]
    scale_to_cm: Optional[float] = 100.0
    inclusive: bool = True
    failure_reasons: Dict[str, str] = field(default_factory=dict)

    def __post_init__(self):
        self.rotation_errors_deg = np.asarray(self.rotation_errors_deg, dtype=np.float64)
        self.position_errors = np.asarray(self.position_errors, dtype=np.float64)
        n = len(self.names)
        if self.rotation_errors_deg.shape != (n,) or self.position_errors.shape != (n,):
            raise ValueError(
                f"EvalResult needs (N,) error arrays for N={n} names, got rotation "
                f"{self.rotation_errors_deg.shape} and position {self.position_errors.shape}"
            )

    # ------------------------------------------------------------------ counts
    @property
    def n_queries(self) -> int:
        return len(self.names)

    @property
    def localized(self) -> np.ndarray:
        """(N,) bool: the query has a (finite) pose."""
        return np.isfinite(self.rotation_errors_deg) & np.isfinite(self.position_errors)

    @property
    def n_localized(self) -> int:
        return int(self.localized.sum())

    # ------------------------------------------------------------------ units
    @property
    def position_unit(self) -> str:
        """``"cm"`` when the scene is metric, else ``"units"`` (scene units)."""
        return "units" if self.scale_to_cm is None else "cm"

    def to_report_unit(self, x):
        """Scene units -> report unit (cm, or unchanged when the unit is unknown)."""
        return x if self.scale_to_cm is None else x * self.scale_to_cm

    # ------------------------------------------------------------------ statistics
    def _median(self, x: np.ndarray) -> float:
        return float(np.median(x)) if x.size else math.nan

    def _mean(self, x: np.ndarray) -> float:
        return float(np.mean(x)) if x.size else math.nan

    @property
    def median_rot_deg_all(self) -> float:
        """Median rotation error over all queries, failures = inf (hloc convention)."""
        return self._median(self.rotation_errors_deg)

    @property
    def median_pos_all(self) -> float:
        """Median position error (scene units) over all queries, failures = inf."""
        return self._median(self.position_errors)

    @property
    def median_rot_deg_localized(self) -> float:
        """Median rotation error over localized queries only (NaN if none)."""
        return self._median(self.rotation_errors_deg[self.localized])

    @property
    def median_pos_localized(self) -> float:
        """Median position error (scene units) over localized queries only (NaN if none)."""
        return self._median(self.position_errors[self.localized])

    @property
    def mean_rot_deg_localized(self) -> float:
        return self._mean(self.rotation_errors_deg[self.localized])

    @property
    def mean_pos_localized(self) -> float:
        return self._mean(self.position_errors[self.localized])

    @property
    def recalls(self) -> np.ndarray:
        """(T,) fraction of all queries within each threshold (both errors)."""
        le = np.less_equal if self.inclusive else np.less
        if self.n_queries == 0:
            return np.full(len(self.thresholds), math.nan)
        return np.array(
            [
                np.mean(le(self.position_errors, th.position) & le(self.rotation_errors_deg, th.rotation_deg))
                for th in self.thresholds
            ],
            dtype=np.float64,
        )

    @property
    def failure_reason_counts(self) -> Dict[str, int]:
        """Reason -> number of failed queries, most frequent first."""
        return dict(Counter(self.failure_reasons.values()).most_common())

    # ------------------------------------------------------------------ export
    def to_dict(self, per_query: bool = True) -> Dict[str, Any]:
        """JSON-ready summary (infinite / NaN values become ``null``)."""
        conv = self.to_report_unit
        d: Dict[str, Any] = {
            "n_queries": self.n_queries,
            "n_localized": self.n_localized,
            "scale_to_cm": self.scale_to_cm,
            "position_unit": self.position_unit,
            "recall_inclusive": self.inclusive,
            "median_rotation_deg_all": _fmt_float(self.median_rot_deg_all),
            "median_position_all": _fmt_float(conv(self.median_pos_all)),
            "median_rotation_deg_localized": _fmt_float(self.median_rot_deg_localized),
            "median_position_localized": _fmt_float(conv(self.median_pos_localized)),
            "mean_rotation_deg_localized": _fmt_float(self.mean_rot_deg_localized),
            "mean_position_localized": _fmt_float(conv(self.mean_pos_localized)),
            "recalls": [
                {
                    "position": th.position,
                    "rotation_deg": th.rotation_deg,
                    "label": th.label(self.scale_to_cm),
                    "recall": _fmt_float(r),
                }
                for th, r in zip(self.thresholds, self.recalls)
            ],
            "failure_reasons": self.failure_reason_counts,
        }
        if per_query:
            d["per_query"] = [
                {
                    "name": n,
                    "localized": bool(ok),
                    "rotation_error_deg": _fmt_float(r),
                    "position_error": _fmt_float(conv(p)),
                    **({"failure_reason": self.failure_reasons[n]} if n in self.failure_reasons else {}),
                }
                for n, ok, r, p in zip(
                    self.names, self.localized, self.rotation_errors_deg, self.position_errors
                )
            ]
        return d


def _check_pose(name: str, pose: Any, what: str) -> Pose:
    if not isinstance(pose, Pose):
        raise ValueError(f"{what} for {name!r} must be a Pose or None, got {type(pose).__name__}")
    if pose.shape != ():
        raise ValueError(f"{what} for {name!r} must be a single pose, got batch shape {tuple(pose.shape)}")
    return pose


def _stack(poses: List[Pose]) -> Pose:
    return Pose(
        torch.stack([p.R.detach().cpu().double() for p in poses]),
        torch.stack([p.t.detach().cpu().double() for p in poses]),
    )


def evaluate(
    estimates: Mapping[str, Optional[Pose]],
    ground_truth: Mapping[str, Pose],
    thresholds: ThresholdsLike = None,
    scale_to_cm: Optional[float] = 100.0,
    *,
    inclusive: bool = True,
    queries: Optional[Iterable[str]] = None,
    logs: Optional[Mapping[str, Mapping[str, Any]]] = None,
    unknown: str = "error",
) -> EvalResult:
    """Compare estimated poses (cam_from_world) with the ground truth.

    Args:
        estimates: query name -> estimated single :class:`Pose`, or ``None`` for a failure.
        ground_truth: image name -> ground-truth single :class:`Pose`.
        thresholds: recall thresholds ``[(position, rotation_deg), ...]`` (position in
            scene units), a preset name / YAML path under ``configs/evaluation``, or
            ``None`` for the ``default`` preset.
        scale_to_cm: scene units -> cm (100 for metres; ``None`` if the unit is unknown).
        inclusive: recall counts ``error <= threshold`` (True) or ``error < threshold``.
        queries: the names to evaluate (default: every ground-truth name). Names missing
            from ``ground_truth`` raise ``KeyError``.
        logs: optional per-query records (see :func:`hloc_bpnp.evaluation.read_query_logs`)
            with ``success`` (bool) and ``failure_reason``; ``success: false`` makes the
            query a failure even if a pose was written, and its reason is reported.
        unknown: what to do with estimates whose name is not in ``ground_truth``:
            ``"error"`` (raise ``ValueError`` listing them) or ``"warn"`` (log, ignore).

    Returns:
        :class:`EvalResult` with per-query errors (``inf`` for failures).
    """
    if unknown not in ("error", "warn"):
        raise ValueError(f"unknown must be 'error' or 'warn', got {unknown!r}")
    if scale_to_cm is not None and not scale_to_cm > 0:
        raise ValueError(f"scale_to_cm must be > 0 or None, got {scale_to_cm!r}")
    ths = _resolve_thresholds(thresholds)
    logs = logs or {}

    extra = sorted(set(estimates) - set(ground_truth))
    if extra:
        msg = (
            f"{len(extra)} estimate(s) have no ground truth: {extra[:10]}"
            + (" ..." if len(extra) > 10 else "")
            + f"; ground-truth names look like {sorted(ground_truth)[:3]}"
        )
        if unknown == "error":
            raise ValueError(msg)
        logger.warning("%s (ignored)", msg)

    if queries is None:
        names = sorted(ground_truth)
    else:
        names = list(dict.fromkeys(queries))
        missing = [n for n in names if n not in ground_truth]
        if missing:
            close = difflib.get_close_matches(missing[0], list(ground_truth), n=3)
            raise KeyError(
                f"{len(missing)} query name(s) not in the ground truth: {missing[:10]}; "
                f"close matches for {missing[0]!r}: {close}"
            )
        ignored = set(estimates) & (set(ground_truth) - set(names))
        if ignored:
            logger.info("Ignoring %d estimate(s) of images that are not queries", len(ignored))
    if not names:
        raise ValueError("nothing to evaluate: no query names")

    reasons: Dict[str, str] = {}
    good_names, good_est, good_gt = [], [], []
    for name in names:
        gt = _check_pose(name, ground_truth[name], "ground truth")
        log = logs.get(name)
        est = estimates.get(name)
        if log is not None and log.get("success") is False:
            reasons[name] = str(log.get("failure_reason") or "unknown (log: success=false)")
            continue
        if name not in estimates:
            reasons[name] = "not in results"
            continue
        if est is None:
            reasons[name] = "no pose"
            continue
        est = _check_pose(name, est, "estimate")
        if not (torch.isfinite(est.R).all() and torch.isfinite(est.t).all()):
            reasons[name] = "non-finite pose"
            continue
        good_names.append(name)
        good_est.append(est)
        good_gt.append(gt)

    rot = np.full(len(names), np.inf)
    pos = np.full(len(names), np.inf)
    if good_names:
        est_b, gt_b = _stack(good_est), _stack(good_gt)
        index = {n: i for i, n in enumerate(names)}
        idx = [index[n] for n in good_names]
        rot[idx] = rotation_error_deg(est_b.R, gt_b.R).cpu().numpy()
        pos[idx] = center_error(est_b, gt_b).cpu().numpy()
    if reasons:
        logger.info("%d/%d queries failed: %s", len(reasons), len(names), dict(Counter(reasons.values())))
    return EvalResult(names, rot, pos, ths, scale_to_cm, inclusive, reasons)
