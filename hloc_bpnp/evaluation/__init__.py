"""Evaluation: pose errors, recalls, tables and cumulative plots.

In memory: :func:`evaluate` (estimates + ground truth -> :class:`EvalResult`),
:func:`format_table`, :func:`plot_cumulative`. Files: :func:`read_poses`,
:func:`load_ground_truth`, :func:`read_query_names`, :func:`read_query_logs`.
Threshold presets live in ``configs/evaluation/`` (:func:`load_evaluation_config`).
Metrics and plots only: the experiment protocols that build maps and localize (leave-one-out,
datasets, the keypoint-limited pose) are in :mod:`hloc_bpnp.protocols`.
"""
from .inputs import (
    default_log_path,
    load_ground_truth,
    read_poses,
    read_query_logs,
    read_query_names,
)
from .metrics import (
    EvalResult,
    Threshold,
    default_conf,
    evaluate,
    load_evaluation_config,
    parse_thresholds,
)
from .plot import cumulative_curve, plot_cumulative
from .report import format_failure_reasons, format_table

__all__ = [
    "EvalResult", "Threshold", "default_conf", "evaluate", "load_evaluation_config",
    "parse_thresholds", "format_table", "format_failure_reasons", "plot_cumulative",
    "cumulative_curve", "default_log_path", "load_ground_truth", "read_poses", "read_query_logs",
    "read_query_names",
]
