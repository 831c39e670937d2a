"""``SequenceLocalizer``: real-time frame-to-map tracking (ORB-SLAM's split), relocalization,
map growth on a background thread.

Per frame (poses are ``cam_from_world``, pixels COLMAP's)::

    light features (the tracking extractor) ─► previous frame localized? ──no──► relocalization
        │ yes
        ▼
    predict the pose (constant velocity, covariance from past prediction errors)
    local map: points of the keyframes observing the previous frame's inliers + the newest
        keyframes (``local_map.LocalMapBuilder``, cached per keyframe)
    search by projection: each local point projected at the prediction is matched only to the
        frame keypoints within a radius (KD-tree, vectorised; a wider radius when too few)
    BPnP from the prediction with the motion prior as a prior term, re-selecting inliers; then
        a second search at the refined pose (small radius) and a final BPnP, repeated while
        each round finds more inliers (``search_final_rounds``) ─► "tracked"
    fallback when that fails: the covisible keyframes are matched by the map's matcher
        (public ``Localizer.match_2d3d``), gated BPnP or pycolmap LO-RANSAC + BPnP
    tracking failed ─► relocalization (the full ``Localizer``: retrieval, matching, RANSAC,
        BPnP), first with the tracking features, then with the full extractor's
    a tracked frame that sees new area (``growth.image_novelty``), when the mapping thread is
    not saturated, becomes a keyframe: queued to ``MappingThread`` (the tracker waits only
    when the camera outruns the map; the thread then inserts it with the tracker's cores).
    Keyframes tracked with lighter features are re-extracted with the map's extractor
    (``growth.reextract``; the ``default`` preset keeps the tracking features: mixed
    resolutions localize as well) unless both extractors see the frame alike
    (``mapping_thread.same_extraction``).

No frame is ever given the previous (or predicted) pose as its result: a frame is either
localized by a pose estimate that passed the acceptance test, or lost with a reason.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Union

import numpy as np
import torch
from tqdm import tqdm

from ..config import load_preset, merge
from ..geometry import Camera, Pose
from ..localization import keypoint_noise
from ..localization import results as R
from ..features.feature_dict import to_numpy
from ..localization.localizer import Localizer
from ..localization.pose_estimation import estimate_pose
from ..localization.results import LocalizationResult
from . import growth as G
from .fast_pose import PINHOLE_MODELS, refine_pose
from .local_map import LocalMapBuilder, project, search_by_projection
from .mapping_thread import KeyframeJob, MappingThread, same_extraction
from .motion import MotionModel, pose_log
from .prefetch import Prefetcher

logger = logging.getLogger(__name__)

TRACKED, RELOCALIZED, LOST = "tracked", "relocalized", "lost"

# tracking failure reasons (stable strings)
NO_PREVIOUS = "no_tracked_previous_frame"
NO_COVISIBLE = "no_covisible_keyframes"
FEW_GATED = "too_few_correspondences_near_prediction"
TRACK_REJECTED = "tracking_pose_rejected"

default_conf = {
    "tracking": {
        # overrides of the localizer's extractor for sequence frames (tracking, and a first
        # relocalization attempt; the full extractor only when that fails), capped at the full
        # extractor's resolution; "auto": {resize_max: 800} for SIFT, none for learned
        # features (XFeat lost 3x in accuracy with 800-px queries on a 1600-px map, issue 10).
        # Measured (README, Strecha, map from every 2nd image): tracked at 800 px, the ATE is
        # within 1.05x of per-frame localization at 1600 px, at about half the extraction time.
        "features": "auto",
        # decode and extract frame k+1 on a worker thread while frame k is tracked (run()),
        # the worker's torch running on prefetch_threads intra-op threads; prefetch_workers > 1:
        # as many frames extracted at once, one per worker; "auto": 2 when the tracking
        # extractor shrinks the frames by AUTO_PREFETCH_SHRINK or more (photos far above the
        # tracking resolution: 3072-px Strecha JPEGs under SIFT at 800 px), else 1 (video)
        "prefetch": True,
        "prefetch_threads": 1,
        "prefetch_workers": 1,
        "num_keyframes": 5,        # local map: keyframes observing the previous frame's inliers
        "num_recent": 2,           # ... plus the most recently inserted keyframes
        "num_nearest_prebuilt": 3,  # ... plus the prebuilt map images nearest to the prediction
        "anchor_min_inliers": 0,   # > 0: with this many inliers on prebuilt points, the pose from them only
        # search by projection; radii as a fraction of the longer image side (0.025 = 16 px at 640)
        "projection": True,
        "search_radius": 0.025,
        "search_radius_wide": 0.08,   # retried with this when the first search finds too few
        "search_radius_final": 0.01,  # second search at the refined pose
        # the search at the refined pose is repeated (at most this many searches) while each
        # round adds at least search_final_min_gain of the inliers: a poor prediction (larger
        # or jittery motion) finds only the part of the view near it, and each refined pose
        # finds more of the rest (synthetic frame 10: 437 -> 873 -> ~2,900 pairs)
        "search_final_rounds": 1,
        "search_final_min_gain": 0.1,
        "max_descriptor_distance": 0.7,  # L2, unit descriptors (XFeat: 99% of random pairs above)
        "descriptor_ratio": 0.9,
        # a pose from a search by projection needs inliers / matches >= 0.5, or >= 0.3 with at
        # least 100 inliers (a wrong consensus that large is rare; real maps from sensor poses
        # have reprojection errors of a few pixels, which lowers the ratio of right poses)
        "min_inlier_ratio_projection": 0.5,
        "min_inlier_ratio_projection_many": 0.3,
        "many_inliers": 100,
        # when the search by projection fails while keyframes wait on the mapping thread, wait
        # for them and search again (the only wait of the tracker; counted in the frame info)
        "wait_for_mapping_on_failure": True,
        # fallback: whole covisible keyframes matched by the map's matcher
        "num_fallback_keyframes": 3,
        "guided_margin_px": 80.0,  # ... only map points projecting within this margin
        "gate_px": 40.0,           # prior check: pairs within this distance of the prediction
        "max_error_px": 4.0,       # inlier threshold of the tracked pose
        "min_inliers": 30,
        "min_inlier_ratio": 0.1,   # inliers / 2D-3D pairs
        "refine_rounds": 2,        # BPnP rounds, re-selecting inliers between them
        # the numpy solver stops when a step changes the robust cost by less than this
        # fraction, or when no step entry (rad / scene units) exceeds refine_step_tol
        "refine_tol": 1e-8,
        "refine_step_tol": 1e-8,
        "loss": "cauchy",
        "loss_scale_px": 1.0,
    },
    "motion_prior": {
        "enabled": True,
        "weight": 1.0,             # scales the prior's information matrix
        "sigma_rot_deg": 2.0,      # floor of the prediction std
        "sigma_pos_rel": 0.25,     # floor of the position std, x the map's keyframe spacing
    },
    "growth": dict(G.default_conf),
}


AUTO_PREFETCH_SHRINK = 2.0
"""``tracking.prefetch_workers: auto`` extracts two frames at once when the tracking extractor
shrinks a frame's longer side by this factor or more: there the frame's decoding and extraction
take 2-3x its tracking (Herz-Jesu / fountain-P11: ~1.2 s against ~0.4 s per frame) and a second
worker uses the core the waiting tracker leaves idle; at video sizes the tracker, the mapping
thread and one worker already share both cores (the synthetic 640x480 sequence with 2 workers:
1.22 s per frame against 1.04 s; README, sequence mode)."""

DEFAULT_PRESET = "default"
"""The shipped sequence preset (``configs/sequence/default.yaml``) that ``hloc-bpnp track`` and
``pipelines/sequence.py`` use unless told otherwise; :data:`default_conf` holds the library's
defaults it overrides."""


def sequence_config(preset: Union[str, Path, Dict, None] = DEFAULT_PRESET, overrides: Optional[Dict] = None) -> Dict:
    """The full sequence-mode conf: ``preset`` (a name in ``configs/sequence/``, a YAML path or a
    dict; None: the library defaults alone) merged over :data:`default_conf`, then
    ``overrides``. The one place the command line and the pipelines load a sequence preset.
    An unknown key -- a typo, or a preset of another kind (a localization preset) -- raises
    :class:`~hloc_bpnp.config.UnknownConfigKeyError` naming the file and every offending key."""
    conf = load_preset("sequence", preset, default_conf) if preset is not None else merge(default_conf, {})
    return merge(conf, overrides, strict=True, section="sequence")


@dataclass
class FrameResult:
    """One frame of a sequence.

    Attributes:
        name: image name; timestamp: seconds (or the frame index).
        status: ``tracked`` | ``relocalized`` | ``lost``.
        reason: why a frame is lost (or why tracking failed before a relocalization), else "".
        result: the :class:`LocalizationResult` (pose, camera, inliers, timings, info).
        keyframe: the frame was handed to the mapping thread as a keyframe.
        info: tracking diagnostics (keyframes used, matches, ransac used, novelty).
        inlier_points2d: (N, 2) COLMAP pixels of the final inliers, or None (lost).
        inlier_points3d: (N, 3) their world points, or None.
    """

    name: str
    timestamp: float
    status: str
    reason: str
    result: LocalizationResult
    keyframe: bool = False
    info: Dict = field(default_factory=dict)
    inlier_points2d: Optional[np.ndarray] = None
    inlier_points3d: Optional[np.ndarray] = None

    @property
    def pose(self) -> Optional[Pose]:
        return self.result.pose if self.status != LOST else None

    @property
    def seconds(self) -> float:
        return float(self.result.timings.get("total", 0.0))

    def to_dict(self) -> Dict:
        d = {"name": self.name, "timestamp": float(self.timestamp), "status": self.status,
             "reason": self.reason, "keyframe": self.keyframe, "seconds": self.seconds,
             "num_inliers": int(self.result.num_inliers), "info": R._jsonable(self.info)}
        if self.pose is not None:
            d["qvec"] = self.pose.qvec().double().tolist()
            d["tvec"] = self.pose.t.double().tolist()
        return d


def read_frame(img) -> "tuple[Optional[np.ndarray], Optional[str]]":
    """(image, None) for an array or a readable file; (None, "path: reason") otherwise."""
    from ..io.image import read_image

    if isinstance(img, np.ndarray):
        return img, None
    try:
        return read_image(img), None
    except (OSError, ValueError) as e:
        return None, f"{img}: {e}"


def _extract(extractor, image: np.ndarray) -> Dict[str, np.ndarray]:
    return to_numpy(extractor.extract(image))


def _keyframe_spacing(map_) -> float:
    """Median distance from each map image's centre to its nearest other map image (KD-tree)."""
    from scipy.spatial import cKDTree

    if len(map_.image_names) < 2:
        return 1.0
    C = np.stack([map_.pose(n).center.cpu().numpy() for n in map_.image_names])
    d, _ = cKDTree(C).query(C, k=2)
    s = float(np.median(d[:, 1]))
    return s if np.isfinite(s) and s > 0 else 1.0


class SequenceLocalizer:
    """Track the frames of a sequence against a map, one frame at a time.

    Args:
        localizer: a :class:`~hloc_bpnp.localization.Localizer` on the map (its extractor,
            matcher and conf are used for relocalization; the map grows in place).
        conf: overrides of :data:`default_conf` (a dict), or a preset name / YAML path of
            ``configs/sequence/`` (:func:`sequence_config`; the command line and pipelines use
            the ``default`` preset, not the bare :data:`default_conf`).

    Use :meth:`track` per frame (in order) or :meth:`run` over a list of frames; :meth:`close`
    (or ``with SequenceLocalizer(...) as sl:``) drains and stops the mapping thread.
    """

    def __init__(self, localizer: Localizer, conf: Union[Dict, str, Path, None] = None):
        self.localizer = localizer
        if isinstance(conf, (str, Path)):
            conf = sequence_config(conf)
        self.conf = merge(default_conf, conf or {}, strict=True, section="sequence")  # a misspelt key is an error
        if keypoint_noise.enabled(localizer.conf):
            logger.info("sequence: refinement.keypoint_covariance %r applies to relocalization only; frame-to-map "
                        "tracking keeps its isotropic real-time solver",
                        localizer.conf["refinement"]["keypoint_covariance"]["method"])
        self.spacing = _keyframe_spacing(localizer.map)
        mp = self.conf["motion_prior"]
        self.motion = MotionModel(np.deg2rad(mp["sigma_rot_deg"]), mp["sigma_pos_rel"] * self.spacing)
        self._last_rows: Optional[np.ndarray] = None  # inlier point rows of the last localized frame
        self._frames_since_keyframe = 0
        self.keyframes: List[str] = []  # frames handed to the mapping thread, in order
        self._counter = 0  # frames seen (the timestamp of frames given without one)
        self._pending_cov: Optional[np.ndarray] = None  # covariance of the last refined pose
        self._local = LocalMapBuilder()
        # the prebuilt map (never moved by growth): its camera centres for the local map, and
        # its point rows (grown points are appended after them)
        from scipy.spatial import cKDTree

        self._prebuilt_names = list(localizer.map.image_names)
        self._prebuilt_tree = cKDTree(np.stack([localizer.map.pose(n).center.double().cpu().numpy()
                                                for n in self._prebuilt_names]))
        self._n_prebuilt_points = len(localizer.map.points3D)
        self._tracked_kp: Optional[np.ndarray] = None
        gc = self.conf["growth"]
        self.track_extractor = localizer.extractor
        overrides = self.conf["tracking"]["features"]
        from ..config import load_config
        from ..features import build_extractor

        fconf = localizer.conf["features"] or localizer.map.conf.get("features")
        fconf = merge(load_config("features", fconf), localizer.conf["query_features"] or {})
        if overrides:
            if overrides == "auto":
                overrides = {"resize_max": 800} if fconf.get("model") in ("sift", "sift_pycolmap") else {}
            if not isinstance(overrides, dict):
                raise ValueError(f"tracking.features must be 'auto' or a dict of extractor overrides, "
                                 f"got {overrides!r}")
            tconf = merge(fconf, overrides)
            if fconf.get("resize_max") and tconf.get("resize_max"):  # never larger than the full one
                tconf["resize_max"] = min(int(tconf["resize_max"]), int(fconf["resize_max"]))
            if tconf != fconf:
                self.track_extractor = build_extractor(tconf)
        # keyframes tracked with lighter features are re-extracted at the map's settings on the
        # mapping thread (its own extractor instance), so the map keeps one kind of features
        self._reextract = bool(gc["reextract"]) and self.track_extractor is not localizer.extractor
        self.mapper: Optional[MappingThread] = None
        if gc["enabled"]:
            extractor = build_extractor(fconf) if self._reextract else None
            self.mapper = MappingThread(localizer.map, localizer.matcher, gc, extractor=extractor)

    @property
    def map(self):
        """The current :class:`~hloc_bpnp.mapping.Map` (grown in place by the mapping thread;
        hold ``map.lock`` for a consistent view across several reads)."""
        return self.localizer.map

    def close(self) -> None:
        """Insert the queued keyframes, then stop the mapping thread."""
        if self.mapper is not None:
            self.mapper.close()

    def __enter__(self) -> "SequenceLocalizer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------------ one frame
    def track(self, image: Optional[np.ndarray], camera: Camera, name: str, timestamp: Optional[float] = None,
              image_error: Optional[str] = None, features: Optional[Dict[str, np.ndarray]] = None) -> FrameResult:
        """Localize the next frame of the sequence.

        Args:
            image: (H, W[, 3]) uint8, or None with ``image_error`` for an unreadable frame
                (recorded as lost; the motion model keeps its state for the next frame).
            camera: the frame's Camera.
            name: image name; timestamp: seconds (None: the frame counter).
            features: the frame's features from :meth:`tracking_features` when already
                extracted (e.g. on a prefetch thread), else None (extracted here).
        """
        ts = float(timestamp) if timestamp is not None else float(self._counter)
        self._counter += 1
        res = LocalizationResult(name=name, camera=camera)
        if image is None:
            res.fail(R.IMAGE_ERROR, image_error or "no image")
            res.timings["total"] = 0.0
            return FrameResult(name, ts, LOST, f"{R.IMAGE_ERROR}: {image_error or 'no image'}", res)
        t0 = time.perf_counter()
        full = self.localizer.extractor
        lighter = self.track_extractor is not full
        if features is None:
            feats = self.tracking_features(image)
            res.timings["features"] = time.perf_counter() - t0
        else:
            feats = features
        out = self.track_features(feats, camera, name, ts, res,
                                  relocalization_features=(lambda: _extract(full, image)) if lighter else None,
                                  image=image)
        out.result.timings["total"] = time.perf_counter() - t0
        return out

    def tracking_features(self, image: np.ndarray) -> Dict[str, np.ndarray]:
        """The tracking extractor's features of ``image`` (numpy, hloc keys); safe to call on
        another thread while a frame is tracked."""
        return _extract(self.track_extractor, image)

    @property
    def can_track(self) -> bool:
        """Whether the next frame is tracked from the previous one (else: relocalization)."""
        return self._last_rows is not None and self.motion.ready

    def track_features(self, feats: Dict[str, np.ndarray], camera: Camera, name: str, timestamp: float,
                       res: Optional[LocalizationResult] = None,
                       relocalization_features: Optional[Callable[[], Dict[str, np.ndarray]]] = None,
                       image: Optional[np.ndarray] = None) -> FrameResult:
        """:meth:`track` from already extracted features (numpy dict, hloc keys).

        ``relocalization_features``: returns the features for the full localizer when tracking
        fails (when ``feats`` came from the lighter tracking extractor); None: ``feats``.
        ``image``: the frame, for keyframes re-extracted at the map's settings."""
        res = res or LocalizationResult(name=name, camera=camera)
        info: Dict = {}
        self._tracked_kp = None  # keypoint index of each 2D-3D pair of a tracked frame
        track_reason = NO_PREVIOUS
        frame = None
        if self.can_track:
            pred, cov = self.motion.predict(timestamp)
            ok, track_reason = self._track(feats, camera, pred, cov, res, info)
            if ok:
                self.motion.update(res.pose, timestamp, predicted=pred)
                frame = FrameResult(name, timestamp, TRACKED, "", res, info=info)
        if frame is None:
            t = time.perf_counter()
            relo = self._relocalize(feats, camera, name, res, image)
            if not relo.success and relocalization_features is not None:
                # the lighter tracking features did not do: the full extractor's
                tf = time.perf_counter()
                feats = relocalization_features()
                res.timings["features_full"] = time.perf_counter() - tf
                first = relo.failure_reason
                relo = self._relocalize(feats, camera, name, res, image)
                relo.info["light_features_failure"] = first
            relo.timings["relocalization"] = time.perf_counter() - t - res.timings.get("features_full", 0.0)
            info["tracking_failure"] = track_reason
            res = relo
            self.motion.reset()
            if res.success:
                self.motion.update(res.pose, timestamp)
                frame = FrameResult(name, timestamp, RELOCALIZED,
                                    "" if track_reason == NO_PREVIOUS else f"tracking: {track_reason}", res, info=info)
            else:
                reason = f"relocalization: {res.failure_reason}"
                if track_reason != NO_PREVIOUS:
                    reason = f"tracking: {track_reason}; {reason}"
                self._last_rows = None
                return FrameResult(name, timestamp, LOST, reason, res, info=info)
        rows, kp = self._inliers(frame.result)
        self._last_rows = rows
        if len(rows):
            frame.inlier_points2d = np.asarray(frame.result.points2D)[np.asarray(frame.result.inlier_mask, bool)]
            frame.inlier_points3d = self.map.points3D[rows] if len(rows) == len(frame.inlier_points2d) else \
                self._points_of(frame.result)
        self._frames_since_keyframe += 1
        if frame.status == TRACKED:
            self._maybe_keyframe(frame, feats, camera, rows, kp, image)
        return frame

    def _relocalize(self, feats, camera: Camera, name: str, res: LocalizationResult,
                    image: Optional[np.ndarray] = None) -> LocalizationResult:
        """The full Localizer on ``feats`` (and the frame ``image``, which the localization
        preset's patch alignment or keypoint covariance needs); the timings of ``res`` so far are
        carried over."""
        relo = LocalizationResult(name=name, camera=camera)
        with self.map.lock:  # a consistent map while the mapping thread may write
            relo = self.localizer.localize_features(feats, camera, relo, image=image)
        relo.timings.pop("total", None)
        relo.timings.update(res.timings)
        return relo

    def _points_of(self, res: LocalizationResult) -> np.ndarray:
        """(N, 3) world points of a localized frame's inliers, from their COLMAP ids."""
        ids = np.asarray(res.point3D_ids)[np.asarray(res.inlier_mask, bool)]
        with self.map.lock:
            rows = self.map.rows_of(ids)
            if np.any(rows < 0):
                raise ValueError(f"frame {res.name!r}: inlier 3D point ids not in the map: {ids[rows < 0][:5].tolist()}")
            return self.map.points3D[rows]

    def _inliers(self, res: LocalizationResult):
        """(points3D rows, keypoint indices) of a localized frame's inliers (rows from the
        COLMAP point ids; keypoints from ``info['query_idx']`` when known)."""
        if res.point3D_ids is None or res.inlier_mask is None:
            return np.zeros(0, np.int64), np.zeros(0, np.int64)
        inl = np.asarray(res.inlier_mask, bool)
        ids = np.asarray(res.point3D_ids)[inl]
        rows = self.map.rows_of(ids)
        ok = rows >= 0
        q = self._tracked_kp
        kp = np.asarray(q)[inl][ok] if q is not None and len(q) == len(inl) else np.zeros(0, np.int64)
        return rows[ok], kp

    # ------------------------------------------------------------------ tracking
    def _local_keyframes(self, pred: Optional[Pose] = None) -> List[str]:
        tc = self.conf["tracking"]
        with self.map.lock:
            cands = [n for n, _ in self.map.images_observing(self._last_rows)][: int(tc["num_keyframes"])]
            recent = [n for n in reversed(self.keyframes) if n in self.map.features][: int(tc["num_recent"])]
        near = []
        k = min(int(tc["num_nearest_prebuilt"]), len(self._prebuilt_names))
        if pred is not None and k > 0:  # the prebuilt map around the predicted camera: an anchor
            _, idx = self._prebuilt_tree.query(pred.center.double().cpu().numpy(), k=k)
            near = [self._prebuilt_names[i] for i in np.atleast_1d(idx)]
        return list(dict.fromkeys(cands + recent + near))

    def _track(self, feats, camera: Camera, pred: Pose, cov: np.ndarray, res: LocalizationResult, info: Dict):
        tc = self.conf["tracking"]
        kpts = np.asarray(feats["keypoints"], np.float64)
        res.num_keypoints = len(kpts)
        if len(kpts) == 0:
            return False, R.NO_FEATURES
        prior = None
        if self.conf["motion_prior"]["enabled"]:
            w = float(self.conf["motion_prior"]["weight"]) * float(tc["loss_scale_px"]) ** 2
            prior = (pred, w * np.linalg.inv(cov))  # (pose, (6, 6) information)
        names = self._local_keyframes(pred)
        info["keyframes"] = names
        if not names:
            return False, NO_COVISIBLE
        reason = ""
        out = None
        if tc["projection"]:
            out, reason = self._track_by_projection(feats, kpts, camera, pred, prior, names, res, info)
            if out is None and tc["wait_for_mapping_on_failure"] and self.mapper is not None \
                    and self.mapper.pending:
                # the keyframes still queued may hold the points this view needs: the one case
                # where the tracker waits for the mapping thread (cheaper than relocalizing)
                t = time.perf_counter()
                self.mapper.drain()
                res.timings["mapping_wait"] = time.perf_counter() - t
                info["waited_for_mapping"] = True
                names = self._local_keyframes(pred)
                info["keyframes"] = names
                out, reason = self._track_by_projection(feats, kpts, camera, pred, prior, names, res, info)
        if out is None:
            t = time.perf_counter()
            out, reason2 = self._track_by_keyframes(kpts, feats, camera, pred, prior, names, info)
            res.timings["tracking_fallback"] = time.perf_counter() - t
            reason = f"{reason}; {reason2}" if reason else reason2
            info["fallback"] = True
        if out is None:
            return False, reason
        pose, q_idx, rows, inl = out
        ids = self.map.point3D_ids[rows]
        res.success, res.failure_reason = True, None
        res.pose = pose
        res.camera = camera
        res.points2D = kpts[q_idx]
        res.keypoint_ids = np.asarray(q_idx, np.int64)
        res.point3D_ids = ids
        res.inlier_mask = inl
        res.num_inliers = int(inl.sum())
        res.num_matches = len(q_idx)
        res.retrieved = names
        res.covariance = self._pending_cov
        self._tracked_kp = q_idx
        return True, ""

    def _track_by_projection(self, feats, kpts, camera: Camera, pred: Pose, prior, names, res, info):
        """Search by projection at the prediction, BPnP with the prior from it; if too few
        matches or inliers, again with the wide radius, with LO-RANSAC on those matches as
        the last resort; then a second search at the refined pose (small radius) and a final
        BPnP, repeated (at most ``search_final_rounds`` searches) while a round adds at least
        ``search_final_min_gain`` of the inliers.
        Returns ((pose, query_idx, rows, inlier mask), "") or (None, reason)."""
        from scipy.spatial import cKDTree

        tc = self.conf["tracking"]
        t = time.perf_counter()
        local = self._local.build(self.map, names)
        info["local_map_points"] = len(local)
        if len(local) == 0:
            return None, NO_COVISIBLE
        desc = np.asarray(feats["descriptors"], np.float32)
        tree = cKDTree(kpts)
        size = (camera.width, camera.height)
        side = float(max(size))
        points3D = self.map.points3D  # rows are stable and their points never move while tracking
        res.timings["projection"] = time.perf_counter() - t
        res.timings["track_pose"] = 0.0

        def search(pose, radius):
            t = time.perf_counter()
            uv, z = project(camera, pose, local.xyz)
            q, rows, _ = search_by_projection(kpts, desc, tree, local, uv, z, size, radius * side,
                                              float(tc["max_descriptor_distance"]), float(tc["descriptor_ratio"]))
            res.timings["projection"] += time.perf_counter() - t
            return q, rows

        def refine(q, rows, pose0, sel, rounds=None):
            t = time.perf_counter()
            out = self._refine(kpts[q], points3D[rows], camera, pose0, sel, prior, rounds)
            res.timings["track_pose"] += time.perf_counter() - t
            return out

        def good(inl, n):
            if not self._accept(inl, n):
                return False
            k = int(inl.sum())
            return k >= float(tc["min_inlier_ratio_projection"]) * n or (
                k >= int(tc["many_inliers"]) and k >= float(tc["min_inlier_ratio_projection_many"]) * n)

        found = None
        for radius in (tc["search_radius"], tc["search_radius_wide"]):
            q, rows = search(pred, radius)
            info["num_projection_matches"] = len(q)
            if len(q) < tc["min_inliers"]:
                info["wide_search"] = True
                continue
            pose, inl = refine(q, rows, pred, np.ones(len(q), bool))
            info["projection_inliers"] = 0 if inl is None else int(inl.sum())
            if pose is not None and good(inl, len(q)):
                found = (pose, q, rows, inl)
                break
            info["wide_search"] = True
        if found is None and len(q) >= tc["min_inliers"]:  # LO-RANSAC on the wide search's matches
            t = time.perf_counter()
            est = estimate_pose(kpts[q], points3D[rows], camera, self._ransac_conf())
            res.timings["track_pose"] += time.perf_counter() - t
            info["ransac"] = True
            if est.success:
                pose, inl = refine(q, rows, est.pose, est.inlier_mask)
                if pose is not None and good(inl, len(q)):
                    found = (pose, q, rows, inl)
        if found is None:
            return None, FEW_GATED if len(q) < tc["min_inliers"] else TRACK_REJECTED
        pose, q, rows, inl = found
        info["final_searches"] = 0
        for _ in range(int(tc["search_final_rounds"]) if tc["search_radius_final"] else 0):
            q2, rows2 = search(pose, tc["search_radius_final"])
            info["final_searches"] += 1
            if len(q2) < len(q):
                break
            sel = self._errors(kpts[q2], points3D[rows2], camera, pose) <= tc["max_error_px"]
            pose2, inl2 = refine(q2, rows2, pose, sel, rounds=1)
            if pose2 is None or not self._accept(inl2, len(q2)) or inl2.sum() < inl.sum():
                break
            gain = inl2.sum() / max(int(inl.sum()), 1) - 1.0
            pose, q, rows, inl = pose2, q2, rows2, inl2
            if gain < float(tc["search_final_min_gain"]):
                break
        # anchor: with enough inliers on the prebuilt map's points, the pose is theirs (points
        # triangulated from tracked poses carry the tracking's errors: drift)
        pre = inl & (rows < self._n_prebuilt_points)
        info["prebuilt_inliers"] = int(pre.sum())
        if tc["anchor_min_inliers"] and pre.sum() >= int(tc["anchor_min_inliers"]) and pre.sum() < inl.sum():
            pose3, inl3 = refine(q, rows, pose, pre, rounds=1)
            if pose3 is not None:
                inl3 = inl3 & (rows < self._n_prebuilt_points)
                if inl3.sum() >= int(tc["anchor_min_inliers"]):
                    pose = pose3
                    inl = self._errors(kpts[q], points3D[rows], camera, pose) <= tc["max_error_px"]
                    info["anchored"] = True
        info["num_correspondences"] = len(q)
        info.setdefault("ransac", False)
        return (pose, q, rows, inl), ""

    def _ransac_conf(self) -> Dict:
        """The localizer's RANSAC settings with BPnP refinement off (the tracker refines)."""
        conf = dict(self.localizer.conf)
        conf["refinement"] = {**conf["refinement"], "method": "none", "refine_intrinsics": False}
        return conf

    def _track_by_keyframes(self, kpts, feats, camera: Camera, pred: Pose, prior, names, info):
        """Fallback: match the covisible keyframes (only their points projecting near the
        predicted view) with the map's matcher; gated BPnP, else LO-RANSAC + BPnP."""
        tc = self.conf["tracking"]
        names = names[: int(tc["num_fallback_keyframes"])]
        subsets = []
        with self.map.lock:
            for n in names:
                rows = self.map.kp_to_point[n]
                kp = np.flatnonzero(rows >= 0)
                uv, z = project(camera, pred, self.map.points3D[rows[kp]])
                m = tc["guided_margin_px"]
                vis = ((z > 0) & (uv[:, 0] > -m) & (uv[:, 0] < camera.width + m)
                       & (uv[:, 1] > -m) & (uv[:, 1] < camera.height + m))
                subsets.append(kp[vis])
            keep = [j for j, sub in enumerate(subsets) if len(sub)]
            if not keep:
                return None, NO_COVISIBLE
            names, subsets = [names[j] for j in keep], [subsets[j] for j in keep]
            corr = self.localizer.match_2d3d(feats, names, subsets)
            X = self.map.points3D[corr.point_idx]
        info["num_correspondences"] = len(corr)
        if len(corr) < tc["min_inliers"]:
            return None, R.TOO_FEW_CORRESPONDENCES
        x = kpts[corr.query_idx]
        gated = self._errors(x, X, camera, pred) <= tc["gate_px"]
        info["num_gated"] = int(gated.sum())
        pose = inl = None
        if gated.sum() >= tc["min_inliers"]:
            pose, inl = self._refine(x, X, camera, pred, gated, prior)
            info["ransac"] = False
        gated_ok = pose is not None and self._accept(inl, len(corr))
        # a gated pose that explains less than min_inlier_ratio_projection of the matches may
        # be a local optimum near a poor prediction (large motion): LO-RANSAC decides
        if not gated_ok or inl.sum() < float(tc["min_inlier_ratio_projection"]) * len(corr):
            # RANSAC only: the tracker refines its pose below, with the motion prior (and the
            # localizer's unresolved `use_weights: auto` is not a refinement BPnP could take)
            est = estimate_pose(x, X, camera, self._ransac_conf(), corr.weight)
            info["ransac"] = True
            if not est.success:
                if gated_ok:
                    return (pose, corr.query_idx, corr.point_idx, inl), ""
                return None, f"{TRACK_REJECTED} (ransac: {est.failure_reason})"
            cov_gated = self._pending_cov
            pose_r, inl_r = self._refine(x, X, camera, est.pose, est.inlier_mask, prior)
            if pose_r is not None and self._accept(inl_r, len(corr)) and (not gated_ok or inl_r.sum() > inl.sum()):
                pose, inl = pose_r, inl_r
                info["ransac_over_gated"] = gated_ok
            elif gated_ok:
                self._pending_cov = cov_gated  # the gated pose stays, with its covariance
            else:
                return None, TRACK_REJECTED
        return (pose, corr.query_idx, corr.point_idx, inl), ""

    def _accept(self, inl: Optional[np.ndarray], n_corr: int) -> bool:
        tc = self.conf["tracking"]
        if inl is None:
            return False
        n = int(inl.sum())
        return n >= tc["min_inliers"] and n >= tc["min_inlier_ratio"] * n_corr

    @staticmethod
    def _errors(x: np.ndarray, X: np.ndarray, camera: Camera, pose: Pose) -> np.ndarray:
        uv, z = project(camera, pose, X)
        e = np.linalg.norm(uv - x, axis=1)
        e[~(z > 0) | ~np.isfinite(e)] = np.inf
        return e

    def _refine(self, x, X, camera: Camera, pose0: Pose, sel: np.ndarray, prior, rounds: Optional[int] = None):
        """BPnP rounds from ``pose0`` on ``sel``, re-selecting inliers (max_error_px) between
        rounds; returns (pose, inlier mask at it) or (None, None) when a solve is invalid.

        ``prior``: None or (predicted Pose, (6, 6) information). Pinhole cameras use the numpy
        solver of the same objective (:func:`~hloc_bpnp.sequence.fast_pose.refine_pose`),
        the others :func:`~hloc_bpnp.bpnp.solve_pnp`."""
        from ..bpnp import solve_pnp

        tc = self.conf["tracking"]
        pose = pose0
        sel = np.asarray(sel, bool)
        cov = None
        fast = camera.model in PINHOLE_MODELS
        if fast:
            p = camera.params.double().cpu().numpy()
            fx, fy, cx, cy = (p[0], p[0], p[1], p[2]) if camera.model == "SIMPLE_PINHOLE" else tuple(p[:4])
            fprior = None
            if prior is not None:
                fprior = (prior[0].R.double().cpu().numpy(), prior[0].t.double().cpu().numpy(), np.asarray(prior[1], np.float64))
        else:
            tprior = None if prior is None else (pose_log(prior[0]), torch.as_tensor(prior[1]))
            cam = camera.to(torch.float64)
        for _ in range(int(tc["refine_rounds"] if rounds is None else rounds)):
            if sel.sum() < max(4, tc["min_inliers"]):
                return None, None
            if fast:
                R, t, cov, valid = refine_pose(x[sel], X[sel], fx, fy, cx, cy, pose.R.double().cpu().numpy(),
                                               pose.t.double().cpu().numpy(), tc["loss"], float(tc["loss_scale_px"]),
                                               fprior, tol=float(tc["refine_tol"]),
                                               step_tol=float(tc["refine_step_tol"]))
                if not valid:
                    return None, None
                pose = Pose(torch.from_numpy(R), torch.from_numpy(t))
            else:
                with torch.no_grad():
                    out = solve_pnp(torch.as_tensor(x[sel]), torch.as_tensor(X[sel]), cam,
                                    pose_init=pose.aa_t().to(torch.float64), loss=tc["loss"],
                                    loss_scale=float(tc["loss_scale_px"]), pose_prior=tprior)
                if not bool(out.valid):
                    return None, None
                pose = Pose.from_aa(out.pose.to(torch.float64))
                cov = out.covariance.cpu().numpy()
            sel = self._errors(x, X, camera, pose) <= tc["max_error_px"]
        self._pending_cov = cov if cov is not None and np.all(np.isfinite(cov)) else None
        return pose, sel

    # ------------------------------------------------------------------ growth
    def _maybe_keyframe(self, frame: FrameResult, feats, camera: Camera, rows: np.ndarray, kp: np.ndarray,
                        image: Optional[np.ndarray] = None) -> None:
        """Hand a tracked frame that sees new area to the mapping thread; wait for it only when
        the camera outruns the map (``growth.wait_novelty`` / ``growth.wait_flow``)."""
        gc = self.conf["growth"]
        if self.mapper is None or frame.name in self.map.features or len(kp) != len(rows):
            return
        kpts = np.asarray(feats["keypoints"], np.float64)
        tracked = np.zeros(len(kpts), bool)
        tracked[kp] = True
        size = feats.get("image_size")
        W, H = (int(size[0]), int(size[1])) if size is not None else (camera.width, camera.height)
        novelty = G.image_novelty(kpts, tracked, (W, H))
        frame.info["novelty"] = novelty
        if novelty < gc["min_novelty"] or self._frames_since_keyframe < gc["min_frames_between"]:
            return
        if self.mapper.busy():
            frame.info["mapping_busy"] = True
            return
        # re-extract with the map's extractor only where that gives other features (not for
        # frames the tracking extractor already sees at the map's size and settings)
        reextract = self._reextract and image is not None and not same_extraction(
            self.track_extractor, self.mapper.extractor, (W, H))
        frame.info["reextract"] = reextract
        rot = self.motion.last_rotation_rad()
        flow = None if rot is None else rot * float(camera.f.mean()) / max(W, H)
        frame.info["flow"] = flow
        # the camera outruns the map (half of this view is new, or the image turned by more
        # than wait_flow of its side since the last frame): the next frame needs this
        # keyframe's points, so the tracker waits for it (its only wait besides a failed
        # search): an ``urgent`` job, inserted on this thread with its cores
        wait = novelty >= float(gc["wait_novelty"]) or (flow is not None and flow >= float(gc["wait_flow"]))
        t = time.perf_counter()
        self.mapper.submit(KeyframeJob(frame.name, camera, frame.result.pose, feats, kp, rows,
                                       list(self.keyframes[-int(gc["num_recent"]):]),
                                       image=image if reextract else None, urgent=wait))
        self.keyframes.append(frame.name)
        self._frames_since_keyframe = 0
        frame.keyframe = True
        if wait:
            frame.result.timings["mapping_wait"] = (frame.result.timings.get("mapping_wait", 0.0)
                                                    + time.perf_counter() - t)
            frame.info["waited_for_mapping"] = True

    # ------------------------------------------------------------------ sequences
    def _load(self, fr, extract: bool):
        """(name, timestamp, image, error, timings, tracking features or None) of a frame
        given to :meth:`run`; ``extract``: also the tracking features (prefetch worker)."""
        decoded, err0, t_dec = None, None, 0.0
        if isinstance(fr, tuple):
            name, img, ts = fr
        else:  # a Frame: decoded in memory (video) or a file
            name, img, ts = fr.name, fr.path, fr.timestamp
            decoded, err0, t_dec = fr.image, fr.error, float(getattr(fr, "read_seconds", 0.0) or 0.0)
        t0 = time.perf_counter()
        if err0 is not None:  # a video frame that failed to decode: a lost frame with its reason
            image, err = None, err0
        elif decoded is not None:
            image, err = decoded, None
        else:
            image, err = read_frame(img)
        timings = {"read": time.perf_counter() - t0 + t_dec}
        feats = None
        if extract and image is not None:
            t1 = time.perf_counter()
            feats = self.tracking_features(image)
            timings["features"] = time.perf_counter() - t1
        return name, ts, image, err, timings, feats

    def prefetch_workers(self, frames: Sequence, cameras: Union[Camera, Dict[str, Camera]]) -> int:
        """How many prefetch workers :meth:`run` uses for ``frames`` (``tracking.prefetch_workers``;
        ``auto``: 2 when the tracking extractor shrinks the first frame's camera image by
        :data:`AUTO_PREFETCH_SHRINK` or more, else 1)."""
        n = self.conf["tracking"]["prefetch_workers"]
        if n != "auto":
            if isinstance(n, bool) or not isinstance(n, int) or n < 1:
                raise ValueError(f"tracking.prefetch_workers must be 'auto' or an integer >= 1, got {n!r}")
            return n
        if not frames:
            return 1
        fr = frames[0]
        name = fr[0] if isinstance(fr, tuple) else fr.name
        cam = cameras.get(name) if isinstance(cameras, dict) else cameras
        if cam is None:
            return 1
        w, h = int(cam.width), int(cam.height)
        w2, h2 = self.track_extractor.resized_size(w, h)
        return 2 if max(w, h) >= AUTO_PREFETCH_SHRINK * max(w2, h2) else 1

    def run(self, frames: Iterable, cameras: Union[Camera, Dict[str, Camera]], progress: bool = True,
            on_frame: Optional[Callable[[FrameResult], None]] = None) -> List[FrameResult]:
        """Track ``frames`` in order: :class:`~hloc_bpnp.sequence.frames.Frame` objects or
        (name, image array or path, timestamp) triples. An unreadable image is a lost frame
        naming the file; the sequence goes on. Each frame's ``timings["total"]`` is its time on
        this (the tracking) thread since the previous frame's: reading its image
        (``timings["read"]``), or with ``tracking.prefetch`` waiting for the prefetch worker
        (``prefetch_wait``; the worker's own ``prefetch_read`` and ``prefetch_features`` overlap
        the previous frame's tracking), tracking, and ``on_frame(frame_result)``, called after
        each frame on this thread; the totals add up to the run's wall time. Before returning, the mapping thread's queue is
        drained, so :attr:`map` holds every keyframe (the thread keeps running for more
        :meth:`track` calls until :meth:`close`)."""
        out: List[FrameResult] = []
        frames = list(frames)
        tc = self.conf["tracking"]
        prefetch = bool(tc["prefetch"])
        if prefetch:  # reading and extraction of the next frame overlap this frame's tracking
            source = Prefetcher(frames, lambda fr: self._load(fr, extract=True),
                                torch_threads=int(tc["prefetch_threads"]) or None,
                                workers=self.prefetch_workers(frames, cameras))
        else:
            source = ((fr, None) for fr in frames)
        bar = tqdm(source, total=len(frames), desc="track", disable=not progress)
        try:
            t0 = time.perf_counter()
            for fr, loaded in bar:
                if loaded is None:
                    loaded = self._load(fr, extract=False)
                name, ts, image, err, timings, feats = loaded
                waited = time.perf_counter() - t0  # the prefetch wait, or the reading
                cam = cameras[name] if isinstance(cameras, dict) else cameras
                if err:
                    logger.warning("Frame %s: cannot read %s", name, err)
                out.append(self.track(image, cam, name, ts, image_error=err, features=feats))
                tm = out[-1].result.timings
                if prefetch:  # time spent on the worker (overlapped), and waiting for it here
                    tm["prefetch_read"], tm["prefetch_features"] = timings["read"], timings.get("features", 0.0)
                    tm["prefetch_wait"] = waited
                else:
                    tm["read"] = timings["read"]
                t1 = time.perf_counter()
                tm["total"] = t1 - t0  # this frame's time on the tracking thread, waits included
                if on_frame is not None:
                    on_frame(out[-1])
                bar.set_postfix_str(f"{out[-1].status}")
                t0 = t1
        finally:
            if prefetch:
                source.close()
        if self.mapper is not None:
            self.mapper.drain()
        counts = {s: sum(f.status == s for f in out) for s in (TRACKED, RELOCALIZED, LOST)}
        logger.info("Sequence: %s, %d keyframes added", counts, len(self.keyframes))
        return out
