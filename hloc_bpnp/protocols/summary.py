"""Benchmark summaries shared by the pipeline scripts: localization results + ground truth
-> the ``results.json`` structure the pipelines write, and its table.

``results.json``::

    {"summary": {"n_queries", "n_localized", "median_rot_deg", "median_pos_cm",
                 "recall": {"2cm,0.2deg": 1.0, ...}, "seconds_per_query", ...},
     "queries": [{"name", "success", "failure_reason", "rot_err_deg", "pos_err_cm",
                  "num_inliers", "timings", ...}, ...]}

Medians are over ALL queries with failures counted as infinite error (hloc's convention);
``median_*_localized`` give the medians over localized queries only.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Dict, Mapping, Optional

from ..geometry import Pose
from ..evaluation.metrics import EvalResult, evaluate


def _finite_or_none(x: float) -> Optional[float]:
    return float(x) if x is not None and math.isfinite(x) else None


def summarize(results: Mapping, ground_truth: Mapping[str, Pose], thresholds=None,
              scale_to_cm: Optional[float] = 100.0, extra: Optional[Dict] = None) -> Dict:
    """Evaluate LocalizationResults against ground truth into the pipelines' JSON structure.

    Args:
        results: name -> :class:`~hloc_bpnp.localization.LocalizationResult`.
        ground_truth: name -> Pose (cam_from_world) for every query.
        thresholds: recall thresholds (preset name or list), default preset.
        scale_to_cm: scene units -> cm (100 for metres; None for unit-less scenes).
        extra: more summary fields (e.g. timings of the mapping stage).
    """
    est = {n: (r.pose if r.success else None) for n, r in results.items()}
    logs = {n: {"success": r.success, "failure_reason": r.failure_reason} for n, r in results.items()}
    ev: EvalResult = evaluate(est, ground_truth, thresholds, scale_to_cm, queries=list(ground_truth), logs=logs)
    d = ev.to_dict(per_query=False)
    from ..localization.results import query_seconds

    times = [query_seconds(r.timings) for r in results.values()]
    summary = {
        "n_queries": ev.n_queries,
        "n_localized": ev.n_localized,
        "median_rot_deg": _finite_or_none(ev.median_rot_deg_all),
        "median_pos_cm": _finite_or_none(ev.to_report_unit(ev.median_pos_all)),
        "median_rot_deg_localized": _finite_or_none(ev.median_rot_deg_localized),
        "median_pos_cm_localized": _finite_or_none(ev.to_report_unit(ev.median_pos_localized)),
        "recall": {t.label(scale_to_cm): float(r) for t, r in zip(ev.thresholds, ev.recalls)},
        "seconds_per_query": (sum(times) / len(times)) if times else None,
        "failure_reasons": d.get("failure_reasons", ev.failure_reason_counts),
        "position_unit": ev.position_unit,
    }
    summary.update(extra or {})
    queries = []
    for i, name in enumerate(ev.names):
        r = results.get(name)
        q = {
            "name": name,
            "success": bool(ev.localized[i]),
            "failure_reason": None if r is None else r.failure_reason,
            "rot_err_deg": _finite_or_none(ev.rotation_errors_deg[i]),
            "pos_err_cm": _finite_or_none(ev.to_report_unit(ev.position_errors[i])),
        }
        if r is not None:
            q.update(num_inliers=r.num_inliers, num_matches=r.num_matches, retrieved=list(r.retrieved),
                     timings={k: float(v) for k, v in r.timings.items()},
                     info={k: v for k, v in r.info.items() if isinstance(v, (int, float, str, bool))})
        queries.append(q)
    return {"summary": summary, "queries": queries, "_eval": ev}


def write_summary(summary: Dict, path) -> Path:
    """Write a :func:`summarize` dict (without its in-memory EvalResult) as strict JSON
    (non-finite numbers -> null), atomically (see :func:`hloc_bpnp.io.json_io.write_json`)."""
    from ..io.json_io import write_json

    return write_json(path, {k: v for k, v in summary.items() if not k.startswith("_")})
