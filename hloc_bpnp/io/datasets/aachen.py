"""Aachen Day-Night (Sattler et al., CVPR 2018), v1.0 and v1.1, laid out as hloc expects.

v1.0::

    images/images_upright/{db,query}/...
    3D-models/aachen_cvpr2018_db.nvm          database poses (VisualSfM)
    3D-models/database_intrinsics.txt         database SIMPLE_RADIAL intrinsics (hloc query-list format)
    queries/{day,night}_time_queries_with_intrinsics.txt

v1.1::

    images/images_upright/{db,query,sequences}/...
    3D-models/aachen_v_1_1/{cameras,images,points3D}.{bin,txt}   database COLMAP model
    queries/{day,night}_time_queries_with_intrinsics.txt

Query poses are not public (evaluation runs on visuallocalization.net): the reader returns
the database :class:`Scene` (GT poses) and the query cameras.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Union

from ...geometry import Camera
from ..colmap import scene_from_model
from ..hloc_text import read_query_list
from ..nvm import scene_from_nvm
from ..scene import Scene
from ._common import check_dir

logger = logging.getLogger(__name__)

PathLike = Union[str, Path]
VERSIONS = ("v1.0", "v1.1")
QUERY_LISTS = {"day": "queries/day_time_queries_with_intrinsics.txt",
               "night": "queries/night_time_queries_with_intrinsics.txt"}


@dataclass
class AachenData:
    """Database scene (with GT poses) and query cameras ``{name: Camera}`` per condition."""

    database: Scene
    queries: Dict[str, Dict[str, Camera]]

    def all_queries(self) -> Dict[str, Camera]:
        out: Dict[str, Camera] = {}
        for q in self.queries.values():
            out.update(q)
        return out


def read_aachen(root: PathLike, version: str = "v1.0") -> AachenData:
    """Read an Aachen Day-Night folder (see module docstring for the layout)."""
    root = check_dir(root, "Aachen dataset")
    if version not in VERSIONS:
        raise ValueError(f"version must be one of {VERSIONS}, got {version!r}")
    image_dir = root / "images" / "images_upright"
    if version == "v1.0":
        database = scene_from_nvm(
            root / "3D-models" / "aachen_cvpr2018_db.nvm", image_dir,
            intrinsics=root / "3D-models" / "database_intrinsics.txt",
        )
    else:
        database = scene_from_model(root / "3D-models" / "aachen_v_1_1", image_dir)
    database.metadata.update({"dataset": "aachen", "version": version})
    queries = {cond: read_query_list(root / rel) for cond, rel in QUERY_LISTS.items()}
    logger.info("Read Aachen %s: %d database images, %s queries", version, len(database),
                {k: len(v) for k, v in queries.items()})
    return AachenData(database, queries)
