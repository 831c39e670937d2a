"""Training scenes from a finetune config's ``data`` section: synthetic scenes with exact depth
(:mod:`.data`) and real posed scenes with triangulated points (:mod:`.real`).

Kept apart from both so that ``real`` can build on ``data`` without an import circle.
"""
from __future__ import annotations

from typing import Dict, List, Sequence

from .data import TrainScene, load_synthetic_scenes
from .real import load_real_scenes


def scenes_from_config(data_conf: Dict, multiple: int = 8, channels: int = 1,
                       exclude: Sequence[str] = ()) -> List[TrainScene]:
    """Training scenes from a finetune config's ``data`` section.

    * ``source: synthetic``: ``preset``, ``seeds``, ``num_refs``, ``resize_max``, optional
      ``overrides`` of the synthetic preset (map points from exact depth);
    * ``source: real``: ``scenes`` (Strecha-layout or Middlebury folders), ``num_refs``,
      ``resize_max`` (map points triangulated with the known poses, :mod:`.real`), and
      optionally ``synthetic: {preset, seeds, overrides}``: extra synthetic scenes whose map
      points are exact (depth).

    ``multiple`` / ``channels``: the network's ``size_multiple`` / ``in_channels``;
    ``exclude``: scene folder names that must not train (evaluation scenes).
    """
    src = data_conf.get("source", "synthetic")
    if src == "real":
        scenes = data_conf.get("scenes") or []
        if not scenes:
            raise ValueError("data.source 'real' needs data.scenes: a list of scene folders")
        out = load_real_scenes(scenes, int(data_conf.get("num_refs", 3)), data_conf.get("resize_max"),
                               multiple=max(multiple, 8), channels=channels, exclude=exclude)
        extra = data_conf.get("synthetic") or None  # extra synthetic scenes with exact depth
        if extra:
            out += load_synthetic_scenes(extra.get("preset", "facades"), extra.get("seeds", [101]),
                                         int(data_conf.get("num_refs", 3)), None, extra.get("overrides"),
                                         multiple=max(multiple, 8))
        return out
    if src != "synthetic":
        raise ValueError(f"data.source {src!r} is not supported (use 'synthetic' or 'real')")
    return load_synthetic_scenes(data_conf["preset"], data_conf["seeds"], int(data_conf.get("num_refs", 3)),
                                 data_conf.get("resize_max"), data_conf.get("overrides"), multiple=max(multiple, 8))
