"""Matcher interface, registry and the ``build_matcher`` factory.

A matcher maps two feature dicts (as produced by :mod:`hloc_bpnp.features`) to hloc's
convention::

    {"matches0": (N0,) int64, index into image 1 or -1,
     "matching_scores0": (N0,) float32, 0 where unmatched}

``match_many(query, refs)`` matches one query against k reference images; the default loops
over ``match``, subclasses override it with a batched computation where possible.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Type, Union

import torch

from ..registry import ConfiguredModule, Registry

logger = logging.getLogger(__name__)

Features = Dict[str, torch.Tensor]
Matches = Dict[str, torch.Tensor]

_REGISTRY = Registry("matcher", "matchers", default_model="nearest_neighbor")


def register_matcher(name: str) -> Callable[[Type["Matcher"]], Type["Matcher"]]:
    """Class decorator adding a :class:`Matcher` subclass under ``name`` (the ``model`` key)."""
    return _REGISTRY.register(name, Matcher)


def available_matchers() -> List[str]:
    """Names of the registered matcher classes (values of a config's ``model`` key)."""
    return _REGISTRY.names()


def build_matcher(conf: Union[str, Path, Dict[str, Any]], **overrides: Any) -> "Matcher":
    """Build a matcher from a preset name (``configs/matchers/<name>.yaml``), a YAML path or a dict.

    The ``model`` key selects the class (default ``"nearest_neighbor"``); other keys are merged
    over its ``default_conf`` (unknown keys raise ``KeyError``), then ``overrides``.
    """
    return _REGISTRY.build(conf, **overrides)


def check_features(feats: Features, which: str, keys: Sequence[str] = ("keypoints", "descriptors")) -> None:
    """Validate a feature dict: required keys, (N, 2) keypoints, (N, D) descriptors with equal N."""
    if not isinstance(feats, dict):
        raise TypeError(f"{which}: expected a feature dict, got {type(feats).__name__}")
    missing = [k for k in keys if k not in feats]
    if missing:
        raise KeyError(f"{which}: missing feature entries {missing} (has {sorted(feats)})")
    d = feats["descriptors"]
    if d.ndim != 2:
        raise ValueError(f"{which}: descriptors must be (N, D), got shape {tuple(d.shape)}")
    if "keypoints" in feats:
        k = feats["keypoints"]
        if k.ndim != 2 or k.shape[-1] != 2 or k.shape[0] != d.shape[0]:
            raise ValueError(f"{which}: keypoints must be (N, 2) with N = {d.shape[0]} descriptors, "
                             f"got shape {tuple(k.shape)}")


def empty_matches(n0: int, device: Optional[torch.device] = None) -> Matches:
    """All-unmatched result for ``n0`` query keypoints."""
    return {"matches0": torch.full((n0,), -1, dtype=torch.int64, device=device),
            "matching_scores0": torch.zeros(n0, dtype=torch.float32, device=device)}


class Matcher(ConfiguredModule):
    """Base class: config merging (:class:`ConfiguredModule`) and ``match`` / ``match_many``."""

    @property
    def device(self) -> torch.device:
        for t in list(self.parameters()) + list(self.buffers()):
            return t.device
        return torch.device(self.conf["device"])

    def match(self, feats0: Features, feats1: Features) -> Matches:
        """Match image 0 to image 1; returns CPU ``matches0`` (N0,) int64 and ``matching_scores0`` (N0,) f32."""
        return self.match_many(feats0, [feats1])[0]

    @torch.inference_mode()
    def match_many(self, query: Features, refs: Sequence[Features]) -> List[Matches]:
        """Match one query against each of ``refs`` (one dict per reference, in order)."""
        check_features(query, "query")
        for i, r in enumerate(refs):
            check_features(r, f"refs[{i}]")
        return [self._match_pair(query, r) for r in refs]

    def _match_pair(self, feats0: Features, feats1: Features) -> Matches:
        raise NotImplementedError

    def forward(self, feats0: Features, feats1: Features) -> Matches:
        return self.match(feats0, feats1)
