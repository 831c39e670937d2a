"""``hloc-bpnp finetune``: train the feature network end-to-end against pose error (BPnP).

Writes ``log.csv``, ``checkpoint_last.pt``, ``weights.pt`` (for the ``trainable`` extractor
preset) and ``config.yaml`` into ``--output``. ``--resume`` continues from the checkpoint there.
Multi-process: ``torchrun --nproc_per_node N -m hloc_bpnp.cli finetune ...`` (gloo on CPU).
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

logger = logging.getLogger("hloc_bpnp.finetune")


def register(subparsers, help_text: str) -> None:
    p = subparsers.add_parser("finetune", help=help_text, description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="synthetic_quick",
                   help="preset in configs/finetune/ or a YAML path (default: %(default)s)")
    p.add_argument("--output", type=Path, required=True, help="output folder")
    p.add_argument("--resume", action="store_true", help="continue from OUTPUT/checkpoint_last.pt")
    p.add_argument("--steps", type=int, default=None, help="override the config's total steps")
    p.add_argument("--init-weights", type=Path, default=None, help="start from this network state dict")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..config import load_config
    from ..training import Trainer, init_distributed, scenes_from_config
    from ..training.trainer import default_conf
    from ..config import merge

    raw = load_config("finetune", args.config)
    raw.pop("experiment", None)  # the budget of pipelines/finetune_synthetic.py, not a Trainer key
    conf = merge(default_conf, raw, strict=True)
    if args.init_weights is not None:
        conf["init_weights"] = str(args.init_weights)
    init_distributed(conf["device"])
    scenes = scenes_from_config(conf["data"])
    trainer = Trainer(conf, scenes, args.output)
    rows = trainer.train(steps=args.steps, resume=args.resume)
    if rows:
        logger.info("finished at step %d; last loss %.4f; %d steps skipped", trainer.step, rows[-1]["loss"],
                    trainer.skipped)
    return 0
