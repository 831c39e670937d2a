"""The Localizer: a loaded Map kept in memory, localizing many queries.

Stages for one query::

    features -> global descriptor -> FAISS top-k keyframes -> batched matching against them
    -> 2D-3D candidates (all distinct (keypoint, 3D point) pairs, match scores as weights)
    -> [covisibility clusters of the keyframes] -> pycolmap LO-RANSAC -> acceptance test
    -> BPnP refinement (robust loss, full camera model, [anisotropic keypoint noise from the
       query image's structure tensors]) -> pose + covariance
    -> [patch alignment: inlier keypoints aligned to the map's observations, BPnP again]

A query that cannot be localized is returned with ``success=False`` and a failure reason;
no fallback pose (e.g. the top-1 keyframe's) is ever substituted.
"""
from __future__ import annotations

import copy
import logging
import time
from pathlib import Path
from typing import Dict, Iterable, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from tqdm import tqdm

from ..config import load_config, load_preset, merge
from ..geometry import Camera
from . import results as R
from .camera_prior import guess_camera
from .correspondences import Correspondences, covisibility_clusters, gather_2d3d
from ..features.feature_dict import as_numpy, select_keypoints, to_numpy, to_torch
from .pose_estimation import default_conf as pose_default_conf
from .pose_estimation import RESOLVED_WEIGHT_MODES, estimate_pose, next_inliers, refine_bpnp
from . import keypoint_noise as KN
from . import patch_alignment as PA
from ..features.patch_lk import gray_image
from .results import LocalizationResult

logger = logging.getLogger(__name__)

default_conf = merge(
    pose_default_conf,
    {
        "features": None,  # None: the map's feature preset (must match the map's)
        "query_features": {},  # overrides merged onto it for queries only, e.g. {resize_max: 800}
        "matcher": None,  # None: the map's matcher preset
        "retrieval": {"num_keyframes": 10},
        "covisibility_clustering": False,
        # match the query only against map keypoints that have a 3D point (the others can
        # never give a 2D-3D correspondence): 2-3x less matching work on triangulated maps
        "match_3d_only": True,
        # photometric alignment of the inlier keypoints to the map's observations, then BPnP
        # again (hloc_bpnp/localization/patch_alignment.py); needs the map's images
        "patch_alignment": PA.default_conf,
    },
)


def localization_config(conf: Union[str, Dict, None] = None) -> Dict:
    """The full localization conf: the preset ``conf`` (a name in ``configs/localization/``, a
    YAML path or a dict) merged over :data:`default_conf`. An unknown key (a typo, or a preset
    of another kind) raises :class:`~hloc_bpnp.config.UnknownConfigKeyError` naming the file
    and the key(s); check a conf with it before long work (a pipeline's map build)."""
    return load_preset("localization", conf, default_conf) if conf else copy.deepcopy(default_conf)


class Localizer:
    """Localize query images against a :class:`~hloc_bpnp.mapping.Map` held in memory.

    Args:
        map: a loaded Map (``Map.load(dir)``).
        conf: a preset name in ``configs/localization/``, a YAML path or a dict, merged
            over ``default_conf``.
        map_images: the map's images (a folder, name -> uint8 array, or a
            :class:`~hloc_bpnp.localization.patch_alignment.MapImages` cache to share between
            localizers), needed only by ``patch_alignment``.
    """

    def __init__(self, map, conf: Union[str, Dict, None] = None, map_images=None):
        from ..features import build_extractor
        from ..matching import build_matcher

        self.map = map
        # strict: a misspelt key (``gate_pix``) is an error naming it and the known keys
        self.conf = localization_config(conf)
        fconf = self.conf["features"] or map.conf.get("features")
        mconf = self.conf["matcher"] or map.conf.get("matcher")
        if fconf is None or mconf is None:
            raise ValueError("The map's config names no feature/matcher preset; pass them in the localization conf")
        if self.conf["query_features"]:
            fconf = merge(load_config("features", fconf), self.conf["query_features"])
        self.extractor = build_extractor(fconf)
        self.matcher = build_matcher(mconf)
        if isinstance(map_images, PA.MapImages):  # a cache shared between localizers
            self.map_images = map_images
        else:
            self.map_images = None if map_images is None else PA.MapImages(map_images)
        # "auto": align when the map images are given (resolved here, once)
        self.conf["patch_alignment"] = {**self.conf["patch_alignment"],
                                        "enabled": PA.resolve_enabled(self.conf["patch_alignment"],
                                                                      self.map_images is not None)}
        if self.conf["patch_alignment"]["enabled"]:
            if self.conf["refinement"]["method"] != "bpnp":
                raise ValueError("patch_alignment needs refinement.method 'bpnp' (the pose is refined again from "
                                 f"the aligned keypoints), got {self.conf['refinement']['method']!r}")
            if self.map_images is None:
                raise ValueError("patch_alignment is enabled but no map images were given: "
                                 "Localizer(map, conf, map_images=FOLDER) (hloc-bpnp localize --map-images)")
            PA.check_conf(self.conf["patch_alignment"])
            normals = getattr(map, "point_normals", None)
            if self.conf["patch_alignment"].get("template_warp", "none") != "none" and (
                    normals is None or not np.isfinite(normals).all(axis=1).any()):
                logger.info("patch_alignment.template_warp %r needs the map's point normals, and this map has none "
                            "(build it with keypoint_adjustment method 'plane'): its templates are not warped",
                            self.conf["patch_alignment"]["template_warp"])
        KN.enabled(self.conf)  # checks refinement.keypoint_covariance now, not at the first query
        self._ref_cache: Dict[str, Tuple[Dict, Optional[np.ndarray]]] = {}

    def set_map(self, map) -> None:
        """Use ``map`` from now on (e.g. a grown or reloaded map); per-image caches are dropped."""
        self.map = map
        self._ref_cache.clear()

    def reference_features(self, name: str) -> Tuple[Dict, Optional[np.ndarray]]:
        """(torch features of map image ``name``, row -> keypoint index or None), cached per
        map image and refreshed when the map changes that image's points.

        With ``match_3d_only`` the features are restricted to keypoints with a 3D point and the
        second item maps their rows back to the keyframe's keypoint indices.
        """
        version = self.map.image_version(name) if hasattr(self.map, "image_version") else 0
        hit = self._ref_cache.get(name)
        if hit is None or hit[0] != version:
            feats = self.map.features[name]
            keep = None
            if self.conf["match_3d_only"]:
                keep = np.flatnonzero(self.map.kp_to_point[name] >= 0)
                feats = select_keypoints(feats, keep)
            hit = self._ref_cache[name] = (version, to_torch(feats), keep)
        return hit[1], hit[2]

    _reference = reference_features  # the name used before it was public

    def match_images(self, feats: Dict[str, np.ndarray], names: Sequence[str],
                     subsets: Optional[Sequence[Optional[np.ndarray]]] = None):
        """Match query features against the given map images.

        Args:
            feats: the query's features (numpy dict, hloc keys), Nq keypoints.
            names: map images.
            subsets: per image, None or (K_j,) keypoint indices of that image to match against
                (e.g. those whose 3D point projects into the query at a predicted pose).
        Returns:
            (matches0, scores0): per image, (Nq,) keypoint index in that map image (-1: none)
            and (Nq,) match scores.
        """
        refs = []
        for j, n in enumerate(names):
            ref, keep = self.reference_features(n)
            sub = None if subsets is None else subsets[j]
            if sub is not None:
                sub = np.asarray(sub, np.int64)
                if keep is None:
                    ref, keep = select_keypoints(ref, sub), sub
                else:  # positions of the wanted keypoints among the kept ones
                    pos = np.searchsorted(keep, sub)
                    pos = np.clip(pos, 0, max(len(keep) - 1, 0))
                    ok = (keep[pos] == sub) if len(keep) else np.zeros(len(sub), bool)
                    ref, keep = select_keypoints(ref, pos[ok]), sub[ok]
            refs.append((ref, keep))
        if not refs:
            return [], []
        matches = self.matcher.match_many(to_torch(feats), [r[0] for r in refs])
        m0 = [_to_keyframe_indices(as_numpy(m["matches0"]), keep) for m, (_, keep) in zip(matches, refs)]
        s0 = [as_numpy(m["matching_scores0"]).astype(np.float64) for m in matches]
        return m0, s0

    def match_2d3d(self, feats: Dict[str, np.ndarray], names: Sequence[str],
                   subsets: Optional[Sequence[Optional[np.ndarray]]] = None) -> Correspondences:
        """Match query features against these map images -> 2D-3D correspondences (query
        keypoint index, ``points3D`` row, match score); see :meth:`match_images`."""
        m0, s0 = self.match_images(feats, names, subsets)
        return gather_2d3d(m0, s0, [self.map.kp_to_point[n] for n in names])

    # ---------------------------------------------------------------- one query
    def localize(
        self,
        image: np.ndarray,
        camera: Optional[Camera] = None,
        name: str = "query",
        image_path=None,
    ) -> LocalizationResult:
        """Localize one image.

        Args:
            image: (H, W) or (H, W, 3) uint8 image.
            camera: the query's Camera (COLMAP model); None: guessed from EXIF (if
                ``image_path``) or the image size, and the result says so.
            name: name recorded in the result.
        """
        res = LocalizationResult(name=name)
        t0 = time.perf_counter()
        if camera is None:
            h, w = image.shape[:2]
            camera, res.camera_source = guess_camera(w, h, image_path)
            res.info["camera_guessed"] = True
        res.camera = camera
        feats = to_numpy(self.extractor.extract(image))
        res.timings["features"] = time.perf_counter() - t0
        return self.localize_features(feats, camera, res, image=image)

    def localize_features(self, feats: Dict[str, np.ndarray], camera: Camera,
                          res: Optional[LocalizationResult] = None, image: Optional[np.ndarray] = None
                          ) -> LocalizationResult:
        """Localize from already extracted query features (numpy dict, hloc keys).

        ``image``: the query's (H, W[, 3]) uint8 image, needed only by ``patch_alignment`` and
        ``refinement.keypoint_covariance``.
        ``res.timings["total"]`` is the sum of every stage recorded (``"features"`` included
        when ``res`` came from :meth:`localize`), also for failed queries."""
        res = res or LocalizationResult(name="query", camera=camera)
        try:
            res = self._localize_features(feats, camera, res, image)
            if res.success and self.conf["patch_alignment"]["enabled"]:
                self.align_inliers(res, image)
            return res
        finally:
            res.timings["total"] = sum(v for k, v in res.timings.items() if k != "total")

    def _localize_features(self, feats, camera: Camera, res: LocalizationResult, image=None) -> LocalizationResult:
        res.camera = camera
        kpts = np.asarray(feats["keypoints"], dtype=np.float64)
        res.num_keypoints = len(kpts)
        if len(kpts) == 0:
            return res.fail(R.NO_FEATURES)

        t = time.perf_counter()
        names, scores = self.retrieve(feats)
        res.retrieved, res.retrieval_scores = names, [float(s) for s in scores]
        res.timings["retrieval"] = time.perf_counter() - t
        if not names:
            return res.fail(R.NO_RETRIEVAL)

        t = time.perf_counter()
        m0, s0 = self.match_images(feats, names)
        res.num_matches = int(sum((m >= 0).sum() for m in m0))
        res.timings["matching"] = time.perf_counter() - t
        if res.num_matches == 0:
            return res.fail(R.NO_MATCHES)

        pa = self.conf["patch_alignment"]
        # the pose is refined after the alignment; before it only where refine_first asks
        refine = not pa["enabled"] or bool(pa["refine_first"])
        return localize_from_matches(kpts, names, m0, s0, self.map, camera, self.conf, res,
                                     sigmas=feats.get("sigmas"), image=image, refine=refine)

    def align_inliers(self, res: LocalizationResult, image: Optional[np.ndarray]) -> LocalizationResult:
        """Patch alignment of a localized result (in place): its inlier keypoints aligned to the
        observations of their 3D points in the nearest retrieved map image, then the pose
        refined again by BPnP from them (``res.points2D``, ``pose``, ``covariance`` updated;
        ``res.info["patch_alignment"]`` says how many moved). With
        ``refinement.reselect_rounds``, the inliers are then classified again at the refined
        pose (the detected keypoints, ``ransac.max_error_px``) and aligned and refined once more,
        until the set stops changing (:func:`~.pose_estimation.reselect_inliers`)."""
        if image is None:
            raise ValueError(f"query {res.name!r}: patch_alignment needs the query image "
                             f"(Localizer.localize, or localize_features(..., image=))")
        if self.map_images is None:
            raise ValueError("patch_alignment: the Localizer has no map images (Localizer(map, conf, map_images=))")
        t = time.perf_counter()
        gray = query_gray_image(image, res.camera, res.name)
        rows = self.map.rows_of(res.point3D_ids)
        if np.any(rows < 0):
            raise ValueError(f"query {res.name!r}: 3D point ids of its correspondences not in the map")
        X = self.map.points3D[rows]  # (M, 3) the correspondences' points, gathered once for all rounds
        detected = np.asarray(res.points2D, np.float64).copy()
        # per correspondence: its aligned position and tensor once aligned (a re-selection round
        # aligns only the inliers it adds: a point's alignment does not depend on the pose)
        cache = {"aligned": detected.copy(), "tensors": torch.zeros(len(detected), 2, 2, dtype=torch.float64),
                 "done": np.zeros(len(detected), bool)}
        res.info["patch_alignment"] = {}
        self._align_and_refine(res, gray, detected, rows, X, cache)
        rounds = 0
        while rounds < int(self.conf["refinement"]["reselect_rounds"]):
            new = next_inliers(detected, X, res.camera, res.pose, self.conf, res.inlier_mask)
            if new is None:
                break
            res.inlier_mask, res.num_inliers, rounds = new, int(new.sum()), rounds + 1
            self._align_and_refine(res, gray, detected, rows, X, cache)
        inl = np.asarray(res.inlier_mask, bool)
        shift = np.linalg.norm(cache["aligned"] - detected, axis=1)[inl]
        res.info["patch_alignment"].update(n_points=int(inl.sum()), n_aligned=int((shift > 0).sum()),
                                           median_shift_px=float(np.median(shift[shift > 0])) if (shift > 0).any()
                                           else 0.0, reselect_rounds=rounds)
        res.timings["alignment"] = time.perf_counter() - t
        return res

    def _align_and_refine(self, res: LocalizationResult, gray, detected: np.ndarray, rows: np.ndarray, X: np.ndarray,
                          cache: Dict):
        """Align ``res``'s inliers not aligned yet (``cache``: per correspondence its aligned
        position, tensor and whether it was aligned) from their ``detected`` (M, 2) positions
        (``rows``: the (M,) map rows of all its correspondences, ``X`` their (M, 3) points),
        then one BPnP refinement of ``res.pose`` from all its inliers' aligned positions."""
        inl = np.flatnonzero(np.asarray(res.inlier_mask))
        todo = inl[~cache["done"][inl]]
        pa = self.conf["patch_alignment"]
        if todo.size:
            center = res.pose.to(torch.float64).center.reshape(-1).cpu().numpy()
            out, info, H = PA.align_to_map(gray, detected[todo], rows[todo], self.map, self.map_images, res.retrieved,
                                           center, pa, return_tensors=True, query_pose=res.pose,
                                           query_camera=res.camera)
            cache["aligned"][todo], cache["tensors"][torch.from_numpy(todo)] = out, H.to(torch.float64)
            cache["done"][todo] = True
            if not res.info["patch_alignment"]:  # the first alignment's counts (updated at the end)
                res.info["patch_alignment"].update(info)
        pts = detected.copy()
        pts[inl] = cache["aligned"][inl]
        ref = self.conf["refinement"]
        # the weights localize_from_matches used ('auto' resolved there)
        mode = res.info.get("correspondence_weights", ref["use_weights"])
        if ref["use_weights"] == "auto" and mode == "uncertainty":
            # the refiner's sigmas describe the detections, not the aligned positions (the
            # structure tensors below do): measured on the temple with an xfeat_refined_adjusted
            # map, 0.0184 deg without them against 0.0211 with them (README, "3D points refined on planes")
            mode = False
        w = np.asarray(res.weights)[inl] if (mode and res.weights is not None) else None
        ref = {**ref, "use_weights": mode}
        if pa["loss_scale_px"] is not None:  # the aligned keypoints' own scale
            ref["loss_scale_px"] = pa["loss_scale_px"]
        # the anisotropic noise of the aligned positions: the alignment's own Gauss-Newton matrices,
        # or structure tensors read again with refinement.keypoint_covariance's radius and blur
        L = None
        if KN.enabled(self.conf):
            kc = ref["keypoint_covariance"]
            L = KN.sqrt_info_from_tensors(cache["tensors"][torch.from_numpy(inl)], kc["floor"]) \
                if pa["keypoint_covariance"] == "alignment" \
                else KN.keypoint_sqrt_info(gray, pts[inl], kc, res.name)
        pose, cov, rinfo = refine_bpnp(pts[inl], X[inl], res.camera, res.pose, ref, w, L)
        res.points2D, res.pose, res.covariance = pts, pose, cov
        res.info["patch_alignment"].pop("refinement_rejected", None)  # the last refinement's outcome
        res.info["patch_alignment"].update({k: v for k, v in rinfo.items() if k.startswith(("cost", "ref"))})
        res.info["patch_alignment"].update(correspondence_weights=mode, loss_scale_px=rinfo["loss_scale_px"])

    def retrieve(self, feats) -> Tuple[list, np.ndarray]:
        """Top-k map keyframes for a query's features: (names, global scores)."""
        k = min(int(self.conf["retrieval"]["num_keyframes"]), len(self.map.image_names))
        if k <= 0:
            return [], np.zeros(0)
        g = np.asarray(self.map.global_model.encode(feats), dtype=np.float32).reshape(1, -1)
        scores, names = self.map.global_index.search(g, k)
        scores = np.asarray(scores).reshape(-1)
        names = list(names[0]) if len(names) and isinstance(names[0], (list, tuple, np.ndarray)) else list(names)
        keep = [i for i, n in enumerate(names) if n is not None and n in self.map.features]
        return [names[i] for i in keep], scores[keep]

    # ---------------------------------------------------------------- many queries
    def localize_many(
        self,
        queries: Iterable[Tuple[str, Union[str, Path, np.ndarray], Optional[Camera]]],
        image_dir=None,
        progress: bool = True,
    ) -> Dict[str, LocalizationResult]:
        """Localize (name, image or path, camera or None) triples with a progress bar.

        An unreadable image becomes a failed result naming the file (the batch goes on).
        """
        from ..io.image import read_image

        queries = list(queries)
        out: Dict[str, LocalizationResult] = {}
        for name, img, cam in tqdm(queries, desc="localize", disable=not progress):
            path = None
            if not isinstance(img, np.ndarray):
                path = Path(img) if image_dir is None else Path(image_dir) / img
                try:
                    img = read_image(path)
                except (OSError, ValueError) as e:
                    out[name] = LocalizationResult(name=name).fail(R.IMAGE_ERROR, f"{path}: {e}")
                    logger.warning("Query %s: cannot read image %s: %s", name, path, e)
                    continue
            out[name] = self.localize(img, cam, name=name, image_path=path)
        n_ok = sum(r.success for r in out.values())
        logger.info("Localized %d / %d queries", n_ok, len(out))
        return out


def _to_keyframe_indices(m0: np.ndarray, keep: Optional[np.ndarray]) -> np.ndarray:
    """Map matches into a keypoint subset back to the keyframe's keypoint indices."""
    if keep is None:
        return m0
    out = np.full_like(m0, -1)
    ok = m0 >= 0
    out[ok] = keep[m0[ok]]
    return out


#: ``refinement.use_weights`` values: those :func:`estimate_pose` takes, and ``auto``: a
#: refiner's uncertainties when the query's features carry them (else none)
WEIGHT_MODES = RESOLVED_WEIGHT_MODES + ("auto",)


def weight_mode(conf: Dict, has_sigmas: bool, name: str = "query"):
    """The BPnP correspondence weights of one query: ``refinement.use_weights`` with ``auto``
    resolved to ``"uncertainty"`` when its features carry keypoint ``sigmas`` (a feature preset
    with a refiner, e.g. ``xfeat_refined``) and to ``False`` otherwise.

    Raises:
        ValueError: an unknown mode, or ``uncertainty`` without sigmas (names the query).
    """
    mode = conf["refinement"]["use_weights"]
    if mode not in WEIGHT_MODES:
        raise ValueError(f"refinement.use_weights must be false, true (match scores), 'uncertainty', 'track' or 'auto', "
                         f"got {mode!r}")
    if mode == "auto":
        return "uncertainty" if has_sigmas else False
    if mode == "uncertainty" and not has_sigmas:
        raise ValueError(f"query {name!r}: refinement.use_weights is 'uncertainty' but its features have "
                         f"no keypoint 'sigmas' (use a feature preset with a refiner, e.g. xfeat_refined)")
    return mode


def point_noise_factor(point_noise) -> float:
    """``refinement.point_noise`` as a float >= 0 (else an error naming the key)."""
    try:
        pn = float(point_noise)
    except (TypeError, ValueError):
        pn = float("nan")
    if isinstance(point_noise, bool) or not (np.isfinite(pn) and pn >= 0):
        raise ValueError(f"refinement.point_noise must be a number >= 0, got {point_noise!r}")
    return pn


def point_variances(corr: Correspondences, point_errors: Optional[np.ndarray], camera: Camera,
                    point_noise) -> np.ndarray:
    """(M,) ``point_noise * (f e_X)^2`` of the candidates' 3D points, pixels^2 of the query:
    ``e_X`` their angular track errors (:attr:`hloc_bpnp.mapping.Map.point_errors`), ``f`` the
    query camera's mean focal length; unknown (NaN) errors take the median of the known ones;
    zeros without errors or with ``point_noise`` 0."""
    pn = point_noise_factor(point_noise)
    if pn == 0 or point_errors is None or not len(corr):
        return np.zeros(len(corr))
    e = np.asarray(point_errors, np.float64)[corr.point_idx]
    known = np.isfinite(e)
    e = np.where(known, e, np.median(e[known]) if known.any() else 0.0)
    return pn * (e * float(camera.f.double().mean())) ** 2


def uncertainty_weights(sigmas, corr: Correspondences, point_errors: Optional[np.ndarray], camera: Camera,
                        point_noise) -> np.ndarray:
    """(M,) BPnP weights of the 2D-3D candidates ``corr``: inverse variances
    ``1 / (sigma_q^2 + point_noise * (f e_X)^2)``, divided by their median (a typical
    correspondence weighs 1, so the robust loss scale keeps its meaning in pixels).

    Args:
        sigmas: (Nq,) the query keypoints' standard deviations (pixels, a refiner's ``sigmas``).
        corr: the candidates (``query_idx``, ``point_idx`` rows of the map's points).
        point_errors: (P,) each 3D point's mean track reprojection error as an angle, or None
            (:func:`point_variances`).
        point_noise: the factor on the point's variance (``refinement.point_noise``; 0: the
            keypoints' own ``1 / sigma^2``). The map's error is a mean residual norm over the
            track; a point the map's views disagree on (a silhouette, a merged track) is no
            better seen from the query. Measured: README, "Previous round: each correspondence
            weighed by its 3D point's track error too".
    """
    s = np.asarray(sigmas.cpu() if hasattr(sigmas, "cpu") else sigmas, dtype=np.float64).reshape(-1)
    if s.size and (not np.all(np.isfinite(s)) or np.any(s <= 0)):
        raise ValueError(f"keypoint sigmas must be finite and > 0, got range [{s.min()}, {s.max()}]")
    w = 1.0 / (s[corr.query_idx] ** 2 + point_variances(corr, point_errors, camera, point_noise))
    return w / np.median(w) if w.size else w


def track_weights(corr: Correspondences, point_errors: Optional[np.ndarray], camera: Camera, point_noise,
                  name: str = "query") -> np.ndarray:
    """(M,) BPnP weights from the candidates' 3D points' track errors alone, for features
    without keypoint sigmas (``refinement.use_weights: track``): ``1 / (m + v_X)``, ``v_X`` from
    :func:`point_variances` and ``m`` its median over the candidates (the keypoints' variance
    taken equal to a typical point's), divided by the median.

    Raises:
        ValueError: the map's points carry no track error at all (names the query).
    """
    if point_errors is None or not np.isfinite(np.asarray(point_errors, np.float64)[corr.point_idx]).any():
        raise ValueError(f"query {name!r}: refinement.use_weights is 'track' but the map's 3D points have no "
                         f"track errors (e.g. points added by hand, without a reprojection error)")
    v = point_variances(corr, point_errors, camera, point_noise)
    var = np.median(v) + v if v.size else v
    w = 1.0 / np.maximum(var, 1e-12)
    return w / np.median(w) if w.size else w


def query_gray_image(image, camera: Camera, name: str) -> torch.Tensor:
    """The (1, 1, H, W) gray query image that patch alignment and the keypoint covariance read;
    an image whose size is not its camera's is an error naming the query and both sizes."""
    gray = gray_image(image)
    if (gray.shape[-1], gray.shape[-2]) != (int(camera.width), int(camera.height)):
        raise ValueError(f"query {name!r}: image is {gray.shape[-1]}x{gray.shape[-2]} px but its camera is "
                         f"{int(camera.width)}x{int(camera.height)}")
    return gray


def localize_from_matches(kpts: np.ndarray, names, matches0, scores0, lookup, camera: Camera,
                          conf: Dict, res: LocalizationResult, sigmas=None, image=None,
                          refine: bool = True) -> LocalizationResult:
    """The stages after matching, shared by :class:`Localizer` and the hloc plugin.

    Args:
        kpts: (Nq, 2) query keypoints (COLMAP pixels).
        names: the k keyframe names the query was matched to.
        matches0, scores0: per keyframe, (Nq,) matches (-1 = none) and scores.
        lookup: object with ``kp_to_point`` (name -> (N,) rows or -1), ``points3D`` (P, 3)
            and ``point3D_ids`` (P,) -- a :class:`~hloc_bpnp.mapping.Map` or the plugin's
            lookup built from a reference model.
        camera: the query's Camera.
        conf: merged localization conf.
        res: the result to fill (also returned).
        sigmas: (Nq,) optional keypoint standard deviations (pixels; a refiner's
            ``sigmas``): with ``refinement.use_weights: uncertainty`` (or ``auto``, see
            :func:`weight_mode`) the BPnP refinement weighs each correspondence by
            :func:`uncertainty_weights` (the keypoint's variance plus its 3D point's, from
            ``lookup.point_errors`` when it has them).
        image: the query's (H, W[, 3]) image, needed by ``refinement.keypoint_covariance``
            (anisotropic keypoint noise from its structure tensors, :mod:`keypoint_noise`).
        refine: False: the RANSAC pose is returned unrefined (no covariance, no structure
            tensors), for a caller that refines it later (:meth:`Localizer.align_inliers`);
            ``res.info["refinement_deferred"]`` says so.
    """
    t = time.perf_counter()
    mode = weight_mode(conf, sigmas is not None, res.name)
    if mode != conf["refinement"]["use_weights"]:  # 'auto' resolved for this query
        conf = {**conf, "refinement": {**conf["refinement"], "use_weights": mode}}
    res.info["correspondence_weights"] = mode
    if not refine and conf["refinement"]["method"] == "bpnp":
        conf = {**conf, "refinement": {**conf["refinement"], "method": "none"}}
        res.info["refinement_deferred"] = True
    clustering = bool(conf["covisibility_clustering"]) and len(names) > 1
    corr = gather_2d3d(matches0, scores0, [lookup.kp_to_point[n] for n in names], with_frames=clustering)
    res.timings["correspondences"] = time.perf_counter() - t
    if len(corr) == 0:
        return res.fail(R.NO_2D3D)
    if mode in ("uncertainty", "track"):  # the candidates' weights become their inverse variances
        pe, pn = getattr(lookup, "point_errors", None), conf["refinement"]["point_noise"]
        w = uncertainty_weights(sigmas, corr, pe, camera, pn) if mode == "uncertainty" \
            else track_weights(corr, pe, camera, pn, res.name)
        corr = Correspondences(corr.query_idx, corr.point_idx, w, corr.frames)
    t = time.perf_counter()
    kp_sqrt_info = None
    if KN.enabled(conf):
        # per query keypoint with a 2D-3D candidate (a keypoint's noise does not depend on the match)
        used = np.unique(corr.query_idx)
        kp_sqrt_info = torch.zeros(len(kpts), 2, 2, dtype=torch.float64)
        gray = None if image is None else query_gray_image(image, camera, res.name)
        kp_sqrt_info[torch.from_numpy(used)] = KN.keypoint_sqrt_info(gray, kpts[used], conf["refinement"][
            "keypoint_covariance"], res.name)
        res.timings["keypoint_covariance"] = time.perf_counter() - t
        t = time.perf_counter()
    candidates = [(None, corr)]
    if clustering:
        point_sets = [lookup.kp_to_point[n][lookup.kp_to_point[n] >= 0] for n in names]
        candidates = []
        for cl in covisibility_clusters(point_sets):
            sub = corr.select(corr.from_keyframes(cl))
            if len(sub):
                candidates.append((cl, sub))
    best = best_corr = best_cluster = None
    for cl, c in candidates:
        est = estimate_pose(kpts[c.query_idx], lookup.points3D[c.point_idx], camera, conf, c.weight,
                            None if kp_sqrt_info is None else kp_sqrt_info[torch.from_numpy(c.query_idx)])
        if best is None or (est.success, est.num_inliers) > (best.success, best.num_inliers):
            best, best_corr, best_cluster = est, c, cl
    res.timings["pose"] = time.perf_counter() - t
    res.points2D = kpts[best_corr.query_idx]
    res.keypoint_ids = np.asarray(best_corr.query_idx, np.int64)
    res.point3D_ids = lookup.point3D_ids[best_corr.point_idx]
    res.weights = best_corr.weight
    res.inlier_mask = best.inlier_mask
    res.num_inliers = best.num_inliers
    res.info.update(best.info)
    if best_cluster is not None:
        res.info["cluster"] = [names[j] for j in best_cluster]
        res.info["num_clusters"] = len(candidates)
    if not best.success:
        return res.fail(best.failure_reason)
    res.success, res.failure_reason = True, None
    res.pose, res.covariance = best.pose, best.covariance
    if best.camera is not None:
        res.camera = best.camera
    return res
