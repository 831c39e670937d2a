"""Text tables of evaluation results: one row per scene (or method)."""
from __future__ import annotations

import math
from typing import Dict, List, Mapping, Optional

from .metrics import EvalResult


def _num(x: float, fmt: str = ".3f") -> str:
    if math.isnan(x):
        return "-"
    if math.isinf(x):
        return "inf"
    return format(x, fmt)


def format_table(
    results: Mapping[str, EvalResult], title: Optional[str] = None, row_header: str = "scene"
) -> str:
    """Aligned text table, one row per entry of ``results`` (scene or method name).

    ``row_header`` names the first column (e.g. ``"method"`` when comparing methods).

    Columns: ``n`` (queries), ``loc`` (localized), median rotation (deg) and position
    (cm, or scene units when the unit is unknown) over all queries with failures as inf
    (``med R``, ``med t``), the same medians over localized queries only (``R loc``,
    ``t loc``), then the recall (%) at each threshold. All results must share the
    position unit; thresholds missing from a row show ``-``.
    """
    if not results:
        raise ValueError("format_table needs at least one result")
    units = {r.position_unit for r in results.values()}
    if len(units) > 1:
        raise ValueError(f"results mix position units {sorted(units)}: set the same scale_to_cm")
    unit = units.pop()
    labels: List[str] = []
    for r in results.values():
        for th in r.thresholds:
            lab = th.label(r.scale_to_cm)
            if lab not in labels:
                labels.append(lab)

    header = [row_header, "n", "loc", "med R [deg]", f"med t [{unit}]", "R loc [deg]", f"t loc [{unit}]"]
    header += [f"{lab} [%]" for lab in labels]
    rows = []
    for name, r in results.items():
        rec = {th.label(r.scale_to_cm): v for th, v in zip(r.thresholds, r.recalls)}
        rows.append(
            [
                str(name),
                str(r.n_queries),
                str(r.n_localized),
                _num(r.median_rot_deg_all),
                _num(r.to_report_unit(r.median_pos_all)),
                _num(r.median_rot_deg_localized),
                _num(r.to_report_unit(r.median_pos_localized)),
            ]
            + [_num(100 * rec[lab], ".1f") if lab in rec else "-" for lab in labels]
        )
    widths = [max(len(row[i]) for row in [header] + rows) for i in range(len(header))]

    def line(cells):
        first = cells[0].ljust(widths[0])
        rest = [c.rjust(w) for c, w in zip(cells[1:], widths[1:])]
        return "  ".join([first] + rest)

    out = [title] if title else []
    out += [line(header), "  ".join("-" * w for w in widths)]
    out += [line(row) for row in rows]
    return "\n".join(out)


def format_failure_reasons(results: Mapping[str, EvalResult]) -> str:
    """Failure reason counts per scene, e.g. ``scene: 2 x not in results, 1 x too few inliers``.

    Returns an empty string when no query failed.
    """
    lines = []
    for name, r in results.items():
        counts: Dict[str, int] = r.failure_reason_counts
        if counts:
            lines.append(f"{name}: " + ", ".join(f"{n} x {reason}" for reason, n in counts.items()))
    return "\n".join(lines)
