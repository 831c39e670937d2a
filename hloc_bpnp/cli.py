"""The ``hloc-bpnp`` command line: thin wrappers that parse, load a config, call the API.

Each subcommand lives in ``hloc_bpnp/commands/<name>.py`` and defines
``register(subparsers)`` (adds its parser, sets ``func``). Modules are imported lazily so
``hloc-bpnp --help`` stays fast.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import sys

# (subcommand module, one-line help) -- module names under hloc_bpnp.commands
COMMANDS = [
    ("synth", "generate a synthetic textured scene with exact ground truth"),
    ("map", "build a map (features, retrieval index, COLMAP model) from images"),
    ("localize", "localize query images against a map"),
    ("evaluate", "compare localization results with ground truth"),
    ("finetune", "fine-tune features/descriptors end-to-end against pose error"),
    ("visualize", "draw one query's localization: inliers, reprojected map points, keyframe matches"),
    ("track", "sequence (SLAM) mode: track a video's frames against a map, relocalize, grow the map"),
]


# third-party loggers kept at WARNING unless -v (faiss's loader, e.g., logs a
# ModuleNotFoundError for every SIMD build it probes, at INFO, on each import)
THIRD_PARTY_LOGGERS = (
    "faiss", "PIL", "matplotlib", "h5py", "urllib3", "fsspec", "filelock", "numexpr", "torch",
    "kornia", "asyncio", "httpx", "huggingface_hub", "pycolmap", "git", "numba", "fontTools",
    "ray", "evo",
)


def configure_logging(verbose: bool = False) -> None:
    """Log at INFO (DEBUG with ``verbose``), the third-party loggers at WARNING.

    Without ``verbose`` the known third-party loggers (``THIRD_PARTY_LOGGERS``, set before
    those libraries are imported, so their import-time messages are filtered too) log only
    warnings and errors; with ``verbose`` they inherit DEBUG like everything else.
    """
    level = logging.DEBUG if verbose else logging.INFO
    logging.basicConfig(
        level=level,
        format="[%(asctime)s %(name)s %(levelname)s] %(message)s",
        datefmt="%H:%M:%S",
    )
    _third_party_levels(verbose)


def _third_party_levels(verbose: bool) -> None:
    for name in THIRD_PARTY_LOGGERS:
        logging.getLogger(name).setLevel(logging.NOTSET if verbose else logging.WARNING)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hloc-bpnp",
        description="Hierarchical localization with a differentiable BPnP pose stage.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, help_ in COMMANDS:
        try:
            mod = importlib.import_module(f"hloc_bpnp.commands.{name}")
        except ModuleNotFoundError as e:
            if e.name != f"hloc_bpnp.commands.{name}":
                raise
            continue  # subcommand not available in this build
        mod.register(sub, help_)
    return parser


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # before the subcommands import anything (their imports may log)
    _third_party_levels(any(a in ("-v", "--verbose") for a in argv))
    parser = build_parser()
    args = parser.parse_args(argv)
    configure_logging(args.verbose)
    if not getattr(args, "func", None):
        parser.print_help()
        return 1
    try:
        return int(args.func(args) or 0)
    except (FileNotFoundError, ValueError, KeyError) as e:
        logging.getLogger("hloc_bpnp").error("%s", e)
        return 2


if __name__ == "__main__":
    sys.exit(main())
