"""``hloc-bpnp evaluate``: compare localization results with ground truth.

Prints a table (one row per results file), optionally writes a JSON summary and a
cumulative-error plot. Several ``--results`` compare methods on one ground truth.
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Dict, List, Optional

from ..io.json_io import write_json

logger = logging.getLogger("hloc_bpnp.evaluate")


def _scale(value: str) -> Optional[float]:
    if value.lower() in ("none", "null"):
        return None
    try:
        v = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--scale-to-cm must be a number or 'none', got {value!r}")
    if v <= 0:
        raise argparse.ArgumentTypeError(f"--scale-to-cm must be > 0, got {value!r}")
    return v


def register(subparsers, help_text: str) -> None:
    p = subparsers.add_parser("evaluate", help=help_text, description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--results", type=Path, action="append", required=True, metavar="FILE",
                   help="hloc results file (name qw qx qy qz tx ty tz); repeat to compare methods")
    p.add_argument("--gt", type=Path, required=True,
                   help="ground truth: COLMAP model folder or results file")
    p.add_argument("--thresholds", default="default",
                   help="preset name in configs/evaluation/ or a YAML path (default: %(default)s)")
    p.add_argument("--queries", type=Path, default=None,
                   help="query list (first token per line); default: the queries of the localizer's log "
                        "beside the results (results_log.json), else every ground-truth image")
    p.add_argument("--logs", type=Path, action="append", default=None, metavar="LOG",
                   help="per-query logs (.json/.jsonl/folder), one per --results, same order "
                        "(default: <results stem>_log.json next to each results file, if present)")
    p.add_argument("--no-logs", action="store_true", help="ignore per-query logs")
    p.add_argument("--scale-to-cm", type=_scale, default=argparse.SUPPRESS,
                   help="scene units -> cm (default from the preset: 100 for metres; 'none')")
    p.add_argument("--exclusive", action="store_true",
                   help="recall counts error < threshold (default: <=)")
    p.add_argument("--unknown", choices=("error", "warn"), default="error",
                   help="estimates with no ground truth: fail (default) or warn and ignore")
    p.add_argument("--scene-name", default=None, help="row label (prefix with several --results)")
    p.add_argument("--json", type=Path, default=None, help="write the summary JSON here")
    p.add_argument("--plot", type=Path, default=None, help="write a cumulative-error PNG here")
    p.set_defaults(func=run)


def _labels(paths: List[Path], scene: Optional[str]) -> List[str]:
    if len(paths) == 1:
        return [scene or paths[0].stem]
    stems = [p.stem for p in paths]
    base = stems if len(set(stems)) == len(stems) else [str(p) for p in paths]
    if len(set(base)) != len(base):
        raise ValueError(f"--results given twice: {[str(p) for p in paths]}")
    return [f"{scene}/{b}" if scene else b for b in base]


def run(args) -> int:
    from ..evaluation import (
        default_log_path,
        evaluate,
        format_failure_reasons,
        format_table,
        load_evaluation_config,
        load_ground_truth,
        plot_cumulative,
        read_poses,
        read_query_logs,
        read_query_names,
    )

    conf = load_evaluation_config(args.thresholds)
    scale = getattr(args, "scale_to_cm", conf["scale_to_cm"])
    if args.logs is not None and len(args.logs) != len(args.results):
        raise ValueError(f"got {len(args.logs)} --logs for {len(args.results)} --results: give one per results file")
    gt = load_ground_truth(args.gt)
    queries = read_query_names(args.queries) if args.queries else None
    labels = _labels(args.results, args.scene_name)

    results: Dict[str, object] = {}
    for i, (label, path) in enumerate(zip(labels, args.results)):
        logs, own_log = None, False
        if args.logs and not args.no_logs:
            logs = read_query_logs(args.logs[i])
        elif not args.no_logs and default_log_path(path).is_file():
            logger.info("Using the query log %s", default_log_path(path))
            logs, own_log = read_query_logs(default_log_path(path)), True
        estimates = read_poses(path)
        q = queries
        if q is None and own_log and logs:  # default: exactly the queries the localizer processed (its log)
            q = sorted(logs)
            logger.info("Evaluating the %d queries of the log (give --queries to choose)", len(q))
        try:
            results[label] = evaluate(
                estimates, gt, conf["thresholds"], scale,
                inclusive=not args.exclusive and conf["inclusive"],
                queries=q, logs=logs, unknown=args.unknown,
            )
        except KeyError as e:
            raise KeyError(f"{path} vs {args.gt}: {e.args[0]}") from None
        except ValueError as e:
            raise ValueError(f"{path} vs {args.gt}: {e}") from None

    print(format_table(results, row_header="scene" if len(results) == 1 else "method"))
    reasons = format_failure_reasons(results)
    if reasons:
        print("\nFailures:\n" + reasons)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        payload = {
            "ground_truth": str(args.gt),
            "thresholds_preset": str(args.thresholds),
            "results": {
                label: {"file": str(path), **r.to_dict()}
                for (label, r), path in zip(results.items(), args.results)
            },
        }
        write_json(args.json, payload, indent=2)
        logger.info("Wrote %s", args.json)
    if args.plot:
        plot_cumulative(results, args.plot, title=args.scene_name)
    return 0
