"""Cumulative error plots (PNG), rendered with matplotlib's Agg canvas (no display needed).

PNGs are encoded by :func:`hloc_bpnp.io.png.save_figure_png`, not by Pillow: with pycolmap
imported before zlib was loaded, Pillow's PNG encoder corrupts the heap (see ``io/png.py``).
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Mapping, Optional, Union

import numpy as np

from .metrics import EvalResult

logger = logging.getLogger(__name__)


def cumulative_curve(errors: np.ndarray, n_total: int):
    """Sorted finite errors (K,) and the fraction of ``n_total`` queries at or below each.

    Failures (``inf``) never enter the curve, so it plateaus at the localized fraction.
    """
    e = np.sort(errors[np.isfinite(errors)])
    return e, np.arange(1, e.size + 1) / max(n_total, 1)


def plot_cumulative(
    results: Mapping[str, EvalResult],
    path: Union[str, Path],
    log_scale: bool = True,
    title: Optional[str] = None,
    dpi: int = 120,
) -> Path:
    """Two panels: fraction of queries vs position error and vs rotation error.

    One step curve per entry of ``results`` (method or scene); the fraction is over all
    queries (failures included), dotted vertical lines mark the recall thresholds.
    With ``log_scale`` zero errors are drawn at the smallest positive error.

    Returns:
        The path of the written image (parent folders are created).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if not results:
        raise ValueError("plot_cumulative needs at least one result")
    units = {r.position_unit for r in results.values()}
    if len(units) > 1:
        raise ValueError(f"results mix position units {sorted(units)}: set the same scale_to_cm")
    unit = units.pop()

    fig = Figure(figsize=(11, 4.2))
    FigureCanvasAgg(fig)
    ax_t, ax_r = fig.subplots(1, 2)
    panels = [
        (ax_t, lambda r: r.to_report_unit(r.position_errors), f"position error [{unit}]",
         lambda r, th: r.to_report_unit(th.position)),
        (ax_r, lambda r: r.rotation_errors_deg, "rotation error [deg]", lambda r, th: th.rotation_deg),
    ]
    for ax, get, xlabel, th_value in panels:
        curves = {name: cumulative_curve(get(r), r.n_queries) for name, r in results.items()}
        positive = np.concatenate([e[e > 0] for e, _ in curves.values()] + [np.empty(0)])
        floor = positive.min() if positive.size else 1e-6
        for name, (e, y) in curves.items():
            x = np.maximum(e, floor) if log_scale else e
            loc = results[name].n_localized
            ax.step(np.r_[x[:1], x], np.r_[0.0, y] if x.size else y, where="post",
                    label=f"{name} ({loc}/{results[name].n_queries})")
        marks = sorted({th_value(r, th) for r in results.values() for th in r.thresholds})
        for m in marks:
            if not log_scale or m > 0:
                ax.axvline(m, color="0.6", linestyle=":", linewidth=0.8)
        if log_scale:
            ax.set_xscale("log")
        ax.set_xlabel(xlabel)
        ax.set_ylabel("fraction of queries")
        ax.set_ylim(0, 1.02)
        ax.grid(True, which="major", alpha=0.3)
    ax_r.legend(loc="lower right", fontsize="small")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path = save_figure(fig, path, dpi)
    logger.info("Wrote cumulative error plot to %s", path)
    return path


def save_figure(fig, path: Union[str, Path], dpi: float = 100) -> Path:
    """Write a matplotlib Figure, atomically (temporary name, then rename), safe whatever was
    imported first: PNG (or no suffix) through :func:`hloc_bpnp.io.png.save_figure_png`;
    other formats through ``savefig``, with PDF stream compression off when the process's
    zlib is unsafe (see ``io/png.py``)."""
    import matplotlib

    from ..io.png import deflate_is_safe, save_figure_png

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fmt = path.suffix.lower().lstrip(".") or "png"
    if fmt == "png":
        return save_figure_png(fig, path, dpi=dpi)
    if fmt in ("svgz",) and not deflate_is_safe():
        raise ValueError(f"{path}: cannot write compressed SVG in this process (pycolmap was imported before "
                         "zlib; see hloc_bpnp/io/png.py): use .png, .pdf or .svg")
    from ..io.atomic import atomic_path

    rc = {} if deflate_is_safe() else {"pdf.compression": 0}
    with atomic_path(path) as tmp, matplotlib.rc_context(rc):
        fig.savefig(tmp, dpi=dpi, format=fmt)
    return path
