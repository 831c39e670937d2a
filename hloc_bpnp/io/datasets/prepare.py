"""What every ``datasets/<name>/prepare.py`` shares: its command line, its description and
the reference outputs it writes.

A preparation script never downloads anything: it checks a copy the user downloaded (see the
README beside it) and writes, under ``--output``, the COLMAP reference model
(``reference_model/``) and the hloc query list (``queries_with_intrinsics.txt``). A script
supplies only its dataset's arguments and the step that reads the dataset::

    def add_arguments(p): p.add_argument("scene_dir", type=Path, help="...")
    def prepare(args): write_reference_outputs(read_x(args.scene_dir), ..., args.output)
    if __name__ == "__main__":
        sys.exit(prepare_cli("the X dataset", add_arguments, prepare))
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Callable, Dict, Optional, Sequence, Tuple, Union

from ._common import image_size

PathLike = Union[str, Path]
logger = logging.getLogger(__name__)

__all__ = ["describe", "prepare_cli", "write_reference_outputs", "write_ground_truth", "require_files", "image_size"]


def describe(dataset: str) -> str:
    """The description of a preparation script for ``dataset`` (its ``--help`` text)."""
    return (f"Check a downloaded copy of {dataset} and write, under --output, the COLMAP reference model "
            "(reference_model/) and the hloc query list (queries_with_intrinsics.txt). Never downloads "
            "anything; see the README.md beside this script.")


def prepare_cli(dataset: str, add_arguments: Callable[[argparse.ArgumentParser], None],
                prepare: Callable[[argparse.Namespace], object], argv: Optional[Sequence[str]] = None) -> int:
    """Parse ``argv`` (``--output`` plus the dataset's own arguments), set up logging and run
    ``prepare(args)``. A missing or malformed input is reported as one line naming it (exit 2)."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    p = argparse.ArgumentParser(description=describe(dataset))
    add_arguments(p)
    p.add_argument("--output", type=Path, required=True, help="folder for the reference model and query list")
    args = p.parse_args(argv)
    try:
        prepare(args)
    except (FileNotFoundError, ValueError) as e:
        logger.error("%s: %s", dataset, e)
        return 2
    return 0


def write_reference_outputs(reference, queries: Dict, output: PathLike) -> Tuple[Path, Path]:
    """Write a dataset's COLMAP reference model (``output/reference_model``, text) and its hloc
    query list (``output/queries_with_intrinsics.txt``).

    Args:
        reference: :class:`~hloc_bpnp.io.Scene` of the posed reference images.
        queries: name -> Camera of the query images.
    """
    from ..hloc_text import write_query_list

    output = Path(output)
    model = reference.write_colmap(output / "reference_model", text=True)
    qlist = write_query_list(output / "queries_with_intrinsics.txt", queries)
    logger.info("Reference model: %s (%d images); query list: %s (%d queries)", model, len(reference), qlist,
                len(queries))
    return model, qlist


def write_ground_truth(output: PathLike, images) -> Path:
    """The ground-truth poses of the query images (``output/queries_gt.txt``, hloc results
    format), for ``hloc-bpnp evaluate``. ``images``: SceneImages with poses."""
    from ..hloc_text import write_results

    return write_results(Path(output) / "queries_gt.txt", {im.name: im.pose for im in images})


def require_files(root: PathLike, names: Sequence[str], what: str) -> None:
    """Error naming the first missing files of ``names`` under ``root``."""
    missing = [n for n in names if not (Path(root) / n).is_file()]
    if missing:
        raise FileNotFoundError(2, f"{len(missing)} of the {len(names)} {what} are missing (e.g. {missing[:5]})",
                                str(root))
