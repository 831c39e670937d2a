"""``SequenceLocalizer``: frame-to-map tracking with a motion prior, relocalization, map growth.

Per frame (poses are ``cam_from_world``, pixels COLMAP's)::

    features ─► previous frame tracked? ──no──► full Localizer (retrieval, matching, RANSAC,
                    │ yes                        BPnP): "relocalized", or "lost" with the reasons
                    ▼
    predict the pose (constant velocity, covariance from past prediction errors)
    keyframes by covisibility with the previous frame's inlier 3D points (no retrieval)
    guided matching: only map keypoints whose 3D point projects into the frame at the
        predicted pose are matched; 2D-3D pairs far (> gate_px) from the prediction are gated out
    prior check: enough gated pairs ─► BPnP from the predicted pose (robust loss + the motion
        prior as a weighted prior term in the solve); otherwise (or when that is rejected)
        pycolmap LO-RANSAC on all pairs, then BPnP ─► "tracked" (``info["ransac"]`` says which)
    tracking failed ─► full Localizer as above
    a tracked frame that sees new area (see ``growth.image_novelty``) becomes a keyframe.

No frame is ever given the previous (or predicted) pose as its result: a frame is either
localized by a pose estimate that passed the acceptance test, or lost with a reason.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Union

import numpy as np
import torch
from tqdm import tqdm

from ..config import merge
from ..geometry import Camera, Pose
from ..localization import results as R
from ..localization.correspondences import gather_2d3d
from ..localization.localizer import Localizer, _as_torch, _np, _to_keyframe_indices
from ..localization.pose_estimation import estimate_pose
from ..localization.results import LocalizationResult
from . import growth as G
from .motion import MotionModel, pose_log

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
        "num_keyframes": 3,        # covisible keyframes matched per frame
        "guided": True,            # match only map points projecting into the predicted view
        "guided_margin_px": 80.0,  # ... within this margin around the image
        "gate_px": 40.0,           # prior check: pairs within this distance of the prediction
        "max_error_px": 4.0,       # inlier threshold of the tracked pose
        "min_inliers": 30,
        "min_inlier_ratio": 0.1,   # inliers / 2D-3D pairs
        "refine_rounds": 3,        # BPnP rounds, re-selecting inliers between them
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


@dataclass
class FrameResult:
    """One frame of a sequence.

    Attributes:
        name: image name; timestamp: seconds (or the frame index).
        status: ``tracked`` | ``relocalized`` | ``lost``.
        reason: why a frame is lost (or why tracking failed before a relocalization), else "".
        result: the :class:`LocalizationResult` (pose, camera, inliers, timings, info).
        keyframe: the frame was added to the map as a keyframe.
        info: tracking diagnostics (keyframes used, gated pairs, ransac used, growth stats).
    """

    name: str
    timestamp: float
    status: str
    reason: str
    result: LocalizationResult
    keyframe: bool = False
    info: Dict = field(default_factory=dict)

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
    feats = extractor.extract(image)
    return {k: (v.detach().cpu().numpy() if hasattr(v, "detach") else np.asarray(v)) for k, v in feats.items()}


def _keyframe_spacing(map_) -> float:
    """Median distance from each map image's centre to its nearest other map image."""
    if len(map_.image_names) < 2:
        return 1.0
    C = np.stack([map_.pose(n).center.numpy() for n in map_.image_names])
    d = np.linalg.norm(C[:, None] - C[None], axis=-1)
    np.fill_diagonal(d, np.inf)
    s = float(np.median(d.min(1)))
    return s if np.isfinite(s) and s > 0 else 1.0


class SequenceLocalizer:
    """Track the frames of a sequence against a map, one frame at a time.

    Args:
        localizer: a :class:`~hloc_bpnp.localization.Localizer` on the map (its extractor,
            matcher and conf are used; its map is replaced when the map grows).
        conf: overrides of :data:`default_conf`.

    Use :meth:`track` per frame (in order) or :meth:`run` over a list of frames.
    """

    def __init__(self, localizer: Localizer, conf: Optional[Dict] = None):
        self.localizer = localizer
        self.conf = merge(default_conf, conf or {})
        self.spacing = _keyframe_spacing(localizer.map)
        mp = self.conf["motion_prior"]
        self.motion = MotionModel(np.deg2rad(mp["sigma_rot_deg"]), mp["sigma_pos_rel"] * self.spacing)
        self._last_rows: Optional[np.ndarray] = None  # inlier point rows of the last localized frame
        self._frames_since_keyframe = 0
        self._recent_keyframes: List[str] = []
        self._vectors = G.GlobalVectors(localizer.map.global_model)
        self.keyframes: List[str] = []
        self._counter = 0  # frames seen (the timestamp of frames given without one)
        self._pending_cov: Optional[np.ndarray] = None  # covariance of the last refined pose
        self._track_pairs = (np.zeros(0, np.int64), np.zeros(0, np.int64))  # last tracked 2D-3D pairs
        self.track_extractor = localizer.extractor
        overrides = self.conf["tracking"]["features"]
        if overrides:
            from ..config import load_config
            from ..features import build_extractor

            fconf = localizer.conf["features"] or localizer.map.conf.get("features")
            fconf = merge(load_config("features", fconf), localizer.conf["query_features"] or {})
            if overrides == "auto":
                overrides = {"resize_max": 800} if fconf.get("model") == "sift" else {}
            if not isinstance(overrides, dict):
                raise ValueError(f"tracking.features must be 'auto' or a dict of extractor overrides, "
                                 f"got {overrides!r}")
            tconf = merge(fconf, overrides)
            if fconf.get("resize_max") and tconf.get("resize_max"):  # never larger than the full one
                tconf["resize_max"] = min(int(tconf["resize_max"]), int(fconf["resize_max"]))
            if tconf != fconf:
                self.track_extractor = build_extractor(tconf)

    @property
    def map(self):
        return self.localizer.map

    # ------------------------------------------------------------------ one frame
    def track(self, image: Optional[np.ndarray], camera: Camera, name: str, timestamp: Optional[float] = None,
              image_error: Optional[str] = None) -> FrameResult:
        """Localize the next frame of the sequence.

        Args:
            image: (H, W[, 3]) uint8, or None with ``image_error`` for an unreadable frame
                (recorded as lost; the motion model keeps its state for the next frame).
            camera: the frame's Camera.
            name: image name; timestamp: seconds (None: the frame counter).
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
        feats = _extract(self.track_extractor if lighter else full, image)
        res.timings["features"] = time.perf_counter() - t0
        out = self.track_features(feats, camera, name, ts, res,
                                  relocalization_features=(lambda: _extract(full, image)) if lighter else None)
        out.result.timings["total"] = time.perf_counter() - t0
        return out

    @property
    def can_track(self) -> bool:
        """Whether the next frame is tracked from the previous one (else: relocalization)."""
        return self._last_rows is not None and self.motion.ready

    def track_features(self, feats: Dict[str, np.ndarray], camera: Camera, name: str, timestamp: float,
                       res: Optional[LocalizationResult] = None,
                       relocalization_features: Optional[Callable[[], Dict[str, np.ndarray]]] = None) -> FrameResult:
        """:meth:`track` from already extracted features (numpy dict, hloc keys).

        ``relocalization_features``: returns the features for the full localizer when tracking
        fails (when ``feats`` came from the lighter tracking extractor); None: ``feats``."""
        res = res or LocalizationResult(name=name, camera=camera)
        info: Dict = {}
        track_reason = NO_PREVIOUS
        frame = None
        if self.can_track:
            t = time.perf_counter()
            pred, cov = self.motion.predict(timestamp)
            ok, track_reason = self._track(feats, camera, pred, cov, res, info)
            res.timings["tracking"] = time.perf_counter() - t
            if ok:
                self.motion.update(res.pose, timestamp, predicted=pred)
                frame = FrameResult(name, timestamp, TRACKED, "", res, info=info)
        if frame is None:
            relo = self._relocalize(feats, camera, name, res)
            if not relo.success and relocalization_features is not None:
                # the lighter tracking features did not do: the full extractor's
                t = time.perf_counter()
                feats = relocalization_features()
                res.timings["features_full"] = time.perf_counter() - t
                first = relo.failure_reason
                relo = self._relocalize(feats, camera, name, res)
                relo.info["light_features_failure"] = first
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
        rows = self._inlier_rows(frame.result)
        self._last_rows = rows
        self._frames_since_keyframe += 1
        if frame.status == TRACKED:
            self._maybe_grow(frame, feats, camera)
        return frame

    def _relocalize(self, feats, camera: Camera, name: str, res: LocalizationResult) -> LocalizationResult:
        """The full Localizer on ``feats``; the timings of ``res`` so far are carried over."""
        t = time.perf_counter()
        relo = LocalizationResult(name=name, camera=camera)
        relo = self.localizer.localize_features(feats, camera, relo)
        relo.timings.pop("total", None)
        relo.timings.update(res.timings)
        relo.timings["relocalization"] = time.perf_counter() - t
        return relo

    def _inlier_rows(self, res: LocalizationResult) -> np.ndarray:
        """points3D rows of a localized frame's inliers (from its COLMAP point ids)."""
        if res.point3D_ids is None or res.inlier_mask is None:
            return np.zeros(0, np.int64)
        ids = np.asarray(res.point3D_ids)[np.asarray(res.inlier_mask, bool)]
        pos = np.searchsorted(self.map.point3D_ids, ids)
        pos = np.clip(pos, 0, max(len(self.map.point3D_ids) - 1, 0))
        ok = self.map.point3D_ids[pos] == ids
        return pos[ok]

    # ------------------------------------------------------------------ tracking
    def _references(self, names: Sequence[str], camera: Camera, pred: Pose):
        """Per keyframe: (torch features of the keypoints to match, rows -> keypoint index)."""
        tc = self.conf["tracking"]
        out = []
        for n in names:
            feats_t, keep = self.localizer._reference(n)
            if not tc["guided"]:
                out.append((feats_t, keep))
                continue
            kp_idx = keep if keep is not None else np.arange(len(self.map.kp_to_point[n]))
            rows = self.map.kp_to_point[n][kp_idx]
            vis = np.zeros(len(kp_idx), bool)
            has = rows >= 0
            if has.any():
                uv, z = G._project(camera, pred, self.map.points3D[rows[has]])
                m = tc["guided_margin_px"]
                vis[has] = ((z > 0) & (uv[:, 0] > -m) & (uv[:, 0] < camera.width + m)
                            & (uv[:, 1] > -m) & (uv[:, 1] < camera.height + m))
            sel = np.flatnonzero(vis)
            nk = len(kp_idx)
            sub = {k: (v[torch.as_tensor(sel)] if isinstance(v, torch.Tensor) and v.dim() >= 1 and len(v) == nk
                       and k != "image_size" else v) for k, v in feats_t.items()}
            out.append((sub, kp_idx[sel]))
        return out

    def _track(self, feats, camera: Camera, pred: Pose, cov: np.ndarray, res: LocalizationResult, info: Dict):
        tc = self.conf["tracking"]
        kpts = np.asarray(feats["keypoints"], np.float64)
        res.num_keypoints = len(kpts)
        if len(kpts) == 0:
            return False, R.NO_FEATURES
        cands = self.map.images_observing(self._last_rows)
        names = [n for n, _ in cands[: int(tc["num_keyframes"])]]
        info["keyframes"] = names
        if not names:
            return False, NO_COVISIBLE
        refs = self._references(names, camera, pred)
        keep_names = [(n, r) for n, r in zip(names, refs) if len(r[1])]
        if not keep_names:
            return False, NO_COVISIBLE
        names, refs = [n for n, _ in keep_names], [r for _, r in keep_names]
        matches = self.localizer.matcher.match_many(_as_torch(feats), [r[0] for r in refs])
        m0 = [_to_keyframe_indices(np.asarray(_np(m["matches0"])), keep) for m, (_, keep) in zip(matches, refs)]
        s0 = [np.asarray(_np(m["matching_scores0"]), dtype=np.float64) for m in matches]
        res.num_matches = int(sum((m >= 0).sum() for m in m0))
        corr = gather_2d3d(m0, s0, [self.map.kp_to_point[n] for n in names])
        info["num_correspondences"] = len(corr)
        if len(corr) < tc["min_inliers"]:
            return False, R.TOO_FEW_CORRESPONDENCES
        x = kpts[corr.query_idx]
        X = self.map.points3D[corr.point_idx]
        err = self._errors(x, X, camera, pred)
        gated = err <= tc["gate_px"]
        info["num_gated"] = int(gated.sum())
        prior = None
        if self.conf["motion_prior"]["enabled"]:
            w = float(self.conf["motion_prior"]["weight"]) * float(tc["loss_scale_px"]) ** 2
            prior = (pose_log(pred), torch.as_tensor(w * np.linalg.inv(cov)))
        pose = None
        if gated.sum() >= tc["min_inliers"]:
            pose, inl = self._refine(x, X, camera, pred, gated, prior)
            info["ransac"] = False
        if pose is None or not self._accept(inl, len(corr)):
            est = estimate_pose(x, X, camera, self.localizer.conf, corr.weight)
            info["ransac"] = True
            if not est.success:
                return False, f"{TRACK_REJECTED} (ransac: {est.failure_reason})"
            pose, inl = self._refine(x, X, camera, est.pose, est.inlier_mask, prior)
            if pose is None or not self._accept(inl, len(corr)):
                return False, TRACK_REJECTED
        res.success, res.failure_reason = True, None
        res.pose = pose
        res.camera = camera
        res.points2D = x
        res.point3D_ids = self.map.point3D_ids[corr.point_idx]
        res.weights = corr.weight
        res.inlier_mask = inl
        res.num_inliers = int(inl.sum())
        res.retrieved = names
        res.covariance = self._pending_cov
        self._track_pairs = (corr.query_idx, corr.point_idx)
        return True, ""

    def _accept(self, inl: Optional[np.ndarray], n_corr: int) -> bool:
        tc = self.conf["tracking"]
        if inl is None:
            return False
        n = int(inl.sum())
        return n >= tc["min_inliers"] and n >= tc["min_inlier_ratio"] * n_corr

    @staticmethod
    def _errors(x: np.ndarray, X: np.ndarray, camera: Camera, pose: Pose) -> np.ndarray:
        uv, z = G._project(camera, pose, X)
        e = np.linalg.norm(uv - x, axis=1)
        e[~(z > 0) | ~np.isfinite(e)] = np.inf
        return e

    def _refine(self, x, X, camera: Camera, pose0: Pose, sel: np.ndarray, prior):
        """BPnP rounds from ``pose0`` on ``sel``, re-selecting inliers (max_error_px) between
        rounds; returns (pose, inlier mask at it) or (None, None) when a solve is invalid."""
        from ..bpnp import solve_pnp

        tc = self.conf["tracking"]
        pose = pose0
        sel = np.asarray(sel, bool)
        cov = None
        for _ in range(int(tc["refine_rounds"])):
            if sel.sum() < max(4, tc["min_inliers"]):
                return None, None
            with torch.no_grad():
                out = solve_pnp(torch.as_tensor(x[sel]), torch.as_tensor(X[sel]), camera.to(torch.float64),
                                pose_init=pose.aa_t().to(torch.float64), loss=tc["loss"],
                                loss_scale=float(tc["loss_scale_px"]), pose_prior=prior)
            if not bool(out.valid):
                return None, None
            pose = Pose.from_aa(out.pose.to(torch.float64))
            cov = out.covariance.numpy()
            sel = self._errors(x, X, camera, pose) <= tc["max_error_px"]
        self._pending_cov = cov if cov is not None and np.all(np.isfinite(cov)) else None
        return pose, sel

    # ------------------------------------------------------------------ growth
    def _maybe_grow(self, frame: FrameResult, feats, camera: Camera) -> None:
        gc = self.conf["growth"]
        if not gc["enabled"] or frame.name in self.map.features:
            return
        res = frame.result
        kpts = np.asarray(feats["keypoints"], np.float64)
        q_idx, p_idx = self._track_pairs
        inl = np.asarray(res.inlier_mask, bool)
        tracked = np.zeros(len(kpts), bool)
        tracked[q_idx[inl]] = True
        size = feats.get("image_size")
        W, H = (int(size[0]), int(size[1])) if size is not None else (camera.width, camera.height)
        novelty = G.image_novelty(kpts, tracked, (W, H))
        frame.info["novelty"] = novelty
        if novelty < gc["min_novelty"] or self._frames_since_keyframe < gc["min_frames_between"]:
            return
        t = time.perf_counter()
        rows, kp_inl = p_idx[inl], q_idx[inl]
        covis = [n for n, _ in self.map.images_observing(rows)]
        recent = [n for n in reversed(self._recent_keyframes) if n in self.map.features][: gc["num_recent"]]
        neighbours = list(dict.fromkeys(recent + covis))[: gc["num_neighbours"]]
        new_map, ginfo = G.insert_keyframe(self.map, frame.name, camera, res.pose, feats, kp_inl, rows,
                                           neighbours, self.localizer.matcher, gc, self._vectors)
        self._set_map(new_map)
        self._recent_keyframes.append(frame.name)
        self.keyframes.append(frame.name)
        self._frames_since_keyframe = 0
        frame.keyframe = True
        ginfo["seconds"] = time.perf_counter() - t
        frame.info["growth"] = ginfo
        res.timings["growth"] = ginfo["seconds"]
        # the inlier rows refer to the old map's rows: recompute them in the new map
        self._last_rows = self._inlier_rows(res)
        logger.info("Keyframe %s: %d new points, %d observations (novelty %.2f)", frame.name,
                    ginfo["num_new_points"], ginfo["num_observations"] + ginfo["num_extra_observations"], novelty)

    def _set_map(self, new_map) -> None:
        self.localizer.map = new_map
        self.localizer._ref_cache.clear()

    # ------------------------------------------------------------------ sequences
    def run(self, frames: Iterable, cameras: Union[Camera, Dict[str, Camera]], progress: bool = True,
            on_frame: Optional[Callable[[FrameResult], None]] = None) -> List[FrameResult]:
        """Track ``frames`` in order: :class:`~hloc_bpnp.sequence.frames.Frame` objects or
        (name, image array or path, timestamp) triples. An unreadable image is a lost frame
        naming the file; the sequence goes on. Each frame's ``timings["total"]`` includes
        reading its image. ``on_frame(frame_result)`` is called after each frame (a viewer)."""
        out: List[FrameResult] = []
        frames = list(frames)
        bar = tqdm(frames, desc="track", disable=not progress)
        for fr in bar:
            name, img, ts = fr if isinstance(fr, tuple) else (fr.name, fr.path, fr.timestamp)
            cam = cameras[name] if isinstance(cameras, dict) else cameras
            t0 = time.perf_counter()
            image, err = read_frame(img)
            if err:
                logger.warning("Frame %s: cannot read %s", name, err)
            out.append(self.track(image, cam, name, ts, image_error=err))
            out[-1].result.timings["total"] = time.perf_counter() - t0
            if on_frame is not None:
                on_frame(out[-1])
            bar.set_postfix_str(f"{out[-1].status}")
        counts = {s: sum(f.status == s for f in out) for s in (TRACKED, RELOCALIZED, LOST)}
        logger.info("Sequence: %s, %d keyframes added", counts, len(self.keyframes))
        return out
