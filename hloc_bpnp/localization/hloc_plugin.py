"""Plugin mode for hloc pipelines: localize from hloc's own artefacts, no re-extraction.

Swaps hloc's ``localize_sfm`` step for ours (LO-RANSAC + BPnP refinement + honest
failures) with one call: the reference SfM model, the features and matches HDF5 files (hloc
layout; keypoint pixel origin converted at the store's edge), the retrieval pairs and the
query list with intrinsics are read as they are.
"""
from __future__ import annotations

import logging
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Optional, Union

import numpy as np
from tqdm import tqdm

from ..config import load_config, merge
from ..io.image import read_image
from . import patch_alignment as PA
from . import results as R
from .keypoint_noise import enabled
from .localizer import default_conf, localize_from_matches
from .results import LocalizationResult

logger = logging.getLogger(__name__)


@dataclass
class ModelLookup:
    """keypoint -> 3D point lookup of a reference model, as arrays (the Map's interface)."""

    kp_to_point: Dict[str, np.ndarray]
    points3D: np.ndarray
    point3D_ids: np.ndarray
    point_errors: Optional[np.ndarray] = None  # (P,) angular track errors, as Map.point_errors

    @classmethod
    def from_reconstruction(cls, rec) -> "ModelLookup":
        from ..io.colmap import angular_point_errors, points_and_observations

        mp = points_and_observations(rec)
        kp = {n: mp.index_of(obs.point3D_ids).astype(np.int64) for n, obs in mp.images.items()}
        return cls(kp, mp.xyz.astype(np.float64), mp.point3D_ids.astype(np.int64), angular_point_errors(rec, mp))


def localize_from_hloc(
    reference_sfm: Union[str, Path],
    features_path: Union[str, Path],
    matches_path: Union[str, Path],
    pairs_path: Union[str, Path],
    query_list: Union[str, Path],
    conf: Union[str, Dict, None] = None,
    progress: bool = True,
    query_images: Union[str, Path, None] = None,
) -> Dict[str, LocalizationResult]:
    """Localize every query of an hloc query list from hloc artefacts.

    Args:
        reference_sfm: COLMAP model triangulated by hloc (keypoints = the features file's).
        features_path: hloc features HDF5 holding the query and reference keypoints.
        matches_path: hloc matches HDF5 for the query-reference pairs.
        pairs_path: hloc pairs file (``query ref`` per line).
        query_list: hloc query list with intrinsics.
        conf: localization preset/dict (retrieval and matcher keys are unused here).
        query_images: folder of the query images (names as in the query list), needed by
            ``refinement.keypoint_covariance`` (e.g. ``fast_learned``); a query whose image
            cannot be read is a failure (``image_error``) naming the file.
    Returns:
        name -> LocalizationResult; queries without pairs/matches are failures with reasons.
    """
    from ..io.colmap import read_model
    from ..io.h5store import FeatureStore, MatchStore
    from ..io.hloc_text import read_pairs, read_query_list

    conf = merge(default_conf, load_config("localization", conf) if conf else {})
    if PA.resolve_enabled(conf["patch_alignment"], False):  # "auto" does not align here
        raise ValueError("patch_alignment needs the query and map images, which the hloc plugin mode does not "
                         "read; use a preset without it (e.g. features_only) or `hloc-bpnp localize --map`")
    needs_image = enabled(conf)
    if needs_image and query_images is None:
        raise ValueError(f"refinement.keypoint_covariance.method is "
                         f"{conf['refinement']['keypoint_covariance']['method']!r} and needs the query images: pass "
                         f"query_images= (`hloc-bpnp localize --images DIR`) or use a preset without it "
                         f"(e.g. features_only)")
    rec = read_model(reference_sfm)
    lookup = ModelLookup.from_reconstruction(rec)
    queries = read_query_list(query_list)
    refs_of: Dict[str, list] = OrderedDict((q, []) for q in queries)
    for a, b in read_pairs(pairs_path):
        if a in refs_of and b in lookup.kp_to_point:
            refs_of[a].append(b)
        elif b in refs_of and a in lookup.kp_to_point:
            refs_of[b].append(a)
    results: Dict[str, LocalizationResult] = {}
    # the BPnP weights from a refiner's keypoint uncertainties need the query's sigmas ('auto':
    # read where the file has them)
    weights_mode = conf["refinement"]["use_weights"]
    with FeatureStore(features_path, "r") as fs, MatchStore(matches_path, "r") as ms:
        for q, cam in tqdm(queries.items(), desc="localize (hloc plugin)", disable=not progress):
            res = LocalizationResult(name=q, camera=cam)
            t0 = time.perf_counter()
            if q not in fs:
                results[q] = res.fail(R.NO_FEATURES, f"{q!r} not in {features_path}")
                continue
            sig = weights_mode == "uncertainty" or (weights_mode == "auto" and fs.has_key(q, "sigmas"))
            qf = fs.get(q, keys=["keypoints", "sigmas"] if sig else ["keypoints"])
            kpts = np.asarray(qf["keypoints"], dtype=np.float64)
            res.num_keypoints = len(kpts)
            refs = list(dict.fromkeys(refs_of[q]))
            res.retrieved = refs
            if not refs:
                results[q] = res.fail(R.NO_RETRIEVAL, f"no pair for {q!r} in {pairs_path}")
                continue
            m0, s0, used = [], [], []
            for r in refs:
                if (q, r) not in ms:
                    logger.debug("No matches for pair (%s, %s) in %s", q, r, matches_path)
                    continue
                m, s = ms.get(q, r, num0=len(kpts))
                m0.append(np.asarray(m, dtype=np.int64))
                s0.append(np.asarray(s, dtype=np.float64))
                used.append(r)
            res.num_matches = int(sum((m >= 0).sum() for m in m0))
            res.timings["read"] = time.perf_counter() - t0
            if res.num_matches == 0:
                results[q] = res.fail(R.NO_MATCHES)
                continue
            if len(used) < len(refs):  # ``retrieved`` lists every paired reference
                res.info["pairs_without_matches"] = [r for r in refs if r not in set(used)]
            image = None
            if needs_image:
                try:
                    image = read_image(Path(query_images) / q)
                except (OSError, ValueError) as e:  # missing or undecodable: this query fails, the batch goes on
                    results[q] = res.fail(R.IMAGE_ERROR, str(e))
                    continue
                if image.shape[:2] != (int(cam.height), int(cam.width)):
                    results[q] = res.fail(R.IMAGE_ERROR,
                                          f"{Path(query_images) / q} is {image.shape[1]}x{image.shape[0]} px but its "
                                          f"camera in {query_list} is {int(cam.width)}x{int(cam.height)}")
                    continue
            results[q] = localize_from_matches(kpts, used, m0, s0, lookup, cam, conf, res, sigmas=qf.get("sigmas"),
                                               image=image)
            res.timings["total"] = sum(v for k, v in res.timings.items() if k != "total")
    n_ok = sum(r.success for r in results.values())
    logger.info("hloc plugin: localized %d / %d queries", n_ok, len(results))
    return results
