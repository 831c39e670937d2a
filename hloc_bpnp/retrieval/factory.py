"""Build retrieval components from a preset (``configs/retrieval/<name>.yaml``)."""
from __future__ import annotations

from typing import Dict, Union

from ..config import load_config
from .global_head import GlobalHead, load_global_head
from .index import GlobalIndex
from .vlad import VLAD

RETRIEVAL_SECTION = "retrieval"


def load_retrieval_config(name_or_conf: Union[str, Dict]) -> Dict:
    """A retrieval preset with its three parts: ``global_descriptor``, ``index``, ``num_matched``."""
    conf = load_config(RETRIEVAL_SECTION, name_or_conf)
    for key in ("global_descriptor", "index"):
        if key not in conf:
            raise KeyError(f"Retrieval config lacks {key!r}; has {sorted(conf)}")
    conf.setdefault("num_matched", 10)
    return conf


def build_global_descriptor(conf: Dict) -> Union[VLAD, GlobalHead]:
    """An unfitted :class:`VLAD` (``type: vlad``) or a loaded :class:`GlobalHead` (``type: learned``)."""
    conf = dict(conf)
    kind = conf.pop("type", "vlad")
    if kind == "vlad":
        return VLAD(conf)
    if kind == "learned":
        return load_global_head(conf)
    raise ValueError(f"global_descriptor.type must be 'vlad' or 'learned', got {kind!r}")


def build_index(dim: int, conf: Dict) -> GlobalIndex:
    """An empty :class:`GlobalIndex` of dimension ``dim``."""
    return GlobalIndex(dim, conf)
