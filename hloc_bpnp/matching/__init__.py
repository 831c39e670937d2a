"""Matchers: ``build_matcher("mnn_ratio").match(feats0, feats1)`` -> hloc's ``matches0`` /
``matching_scores0``; ``match_many(query, refs)`` matches one query against k images at once.

Presets (configs/matchers/): ``mnn``, ``ratio``, ``mnn_ratio`` (= hloc's NN-ratio), ``smnn``,
``adalam``, ``lightglue``.
"""
from .base import (Matcher, Matches, available_matchers, build_matcher, check_features, empty_matches,
                   register_matcher)
from .nearest_neighbor import NearestNeighbor, nn_match_batched, pad_descriptors
from .adalam import AdaLAM, features_to_lafs
from .lightglue import LightGlue

__all__ = ["AdaLAM", "LightGlue", "Matcher", "Matches", "NearestNeighbor", "available_matchers", "build_matcher",
           "check_features", "empty_matches", "features_to_lafs", "nn_match_batched", "pad_descriptors",
           "register_matcher"]
