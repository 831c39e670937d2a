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
]


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
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="[%(asctime)s %(name)s %(levelname)s] %(message)s",
        datefmt="%H:%M:%S",
    )
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
