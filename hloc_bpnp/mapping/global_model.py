"""The map's global-descriptor model: VLAD over local features, accepting feature dicts.

:class:`VLADGlobalModel` is :class:`hloc_bpnp.retrieval.VLAD` whose ``encode`` also takes a
features dict (its ``descriptors`` are used) or a torch tensor, the interface the
:class:`~hloc_bpnp.mapping.Map` promises to the localizer.
"""
from __future__ import annotations

from typing import Dict, Mapping, Optional, Sequence, Union

import numpy as np

from ..retrieval.vlad import VLAD


def descriptors_of(feats_or_desc) -> np.ndarray:
    """(N, D) float32 numpy descriptors from a features dict, a tensor or an array."""
    d = feats_or_desc["descriptors"] if isinstance(feats_or_desc, Mapping) else feats_or_desc
    if hasattr(d, "detach"):
        d = d.detach().cpu().numpy()
    return np.asarray(d, dtype=np.float32)


class VLADGlobalModel(VLAD):
    """VLAD whose :meth:`encode` accepts ``feats`` dicts or (N, D) descriptors."""

    kind = "vlad"

    def encode(self, feats_or_descriptors: Union[Dict, np.ndarray]) -> np.ndarray:
        """Global descriptor of one image.

        Args:
            feats_or_descriptors: a features dict with ``descriptors`` (N, D), or the
                (N, D) descriptors themselves (numpy or torch).
        Returns:
            (Dg,) float32, unit L2 norm.
        """
        return super().encode(descriptors_of(feats_or_descriptors))

    def fit(self, descriptors: Sequence) -> "VLADGlobalModel":
        """Learn the vocabulary on one (N_i, D) array (or features dict) per map image."""
        return super().fit([descriptors_of(d) for d in descriptors])


def build_global_model(conf: Optional[Dict], features: Mapping[str, dict]):
    """Fit the global model described by a retrieval config on the map's features.

    Args:
        conf: retrieval config (``configs/retrieval/*.yaml``) whose ``global_descriptor.type``
            must be ``vlad`` (learned heads work on images: pass them to ``Map`` instead).
        features: name -> feature dict of the map images.
    """
    gd = dict((conf or {}).get("global_descriptor", {"type": "vlad"}))
    kind = gd.pop("type", "vlad")
    if kind != "vlad":
        raise ValueError(f"Cannot fit a {kind!r} global model from local features; build it "
                         "yourself and pass global_model= (only 'vlad' is fitted here)")
    names = sorted(features)
    n_desc = sum(len(features[n]["descriptors"]) for n in names)
    k = int(gd.get("num_clusters", VLAD.default_conf["num_clusters"]))
    if n_desc < k:
        raise ValueError(f"VLAD with num_clusters={k} needs at least {k} map descriptors, got {n_desc}")
    return VLADGlobalModel(gd).fit([features[n] for n in names])
