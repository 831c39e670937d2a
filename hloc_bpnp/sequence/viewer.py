"""A SLAM-style viewer for sequence mode: logs a run to a Rerun recording (``.rrd``, opened
with ``rerun out.rrd``) or to a live Rerun viewer (the ``viewer`` extra: rerun-sdk).

What is logged (world frame = the map's, COLMAP axes: x right, y down, z forward):

==================================  =========================================================
``world/map/points``                map points (``Points3D``, their colours when the map has
                                    any), logged again when the map changes
``world/map/keyframes``             map images as camera frusta (``LineStrips3D``; blue: the
                                    map's own images, orange: keyframes added while tracking)
                                    and ``.../centers`` their centres (``Points3D``)
``world/trajectory/estimated``      camera centres of the localized frames so far
``world/trajectory/groundtruth``    ground-truth centres when known
``world/camera``                    the current frame's pose (``Transform3D``, parent from
                                    child = world from camera) with ``world/camera/image``:
                                    its ``Pinhole``, the ``Image`` (JPEG) and
                                    ``world/camera/image/inliers`` (``Points2D``, COLMAP pixels:
                                    the top-left corner at (0, 0), as Rerun's)
``world/inliers``                   the current frame's inlier map points (``Points3D``)
``status``                          one line per frame (``TextLog``)
``stats/inliers``, ``stats/ms``     inlier count and time per frame (``Scalars``)
==================================  =========================================================

Timelines: ``frame`` (index in the run) and ``time`` (the frame's timestamp, seconds).

Use with the tracker: ``SequenceLocalizer.run(frames, camera, on_frame=viewer.callback(frames, sl))``
or per frame with :meth:`SequenceViewer.log_frame`.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Union

import numpy as np

logger = logging.getLogger(__name__)

PathLike = Union[str, Path]

MAP_COLOR = (60, 120, 230)
NEW_KEYFRAME_COLOR = (245, 140, 30)
ESTIMATED_COLOR = (230, 40, 40)
GROUNDTRUTH_COLOR = (40, 190, 60)
INLIER_COLOR = (255, 230, 0)
STATUS_COLOR = {"tracked": (40, 190, 60), "relocalized": (245, 140, 30), "lost": (230, 40, 40)}
MAX_TRAJECTORY_LOGS = 1000
"""The growing trajectories are logged at most about this many times in a run (every frame
while the run is shorter), so a recording stays linear in the number of frames."""


def _require_rerun():
    try:
        import rerun as rr
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("the viewer needs rerun-sdk: pip install 'hloc_bpnp[viewer]'") from e
    return rr


def frustum_strips(R: np.ndarray, C: np.ndarray, K: np.ndarray, size: Sequence[float],
                   depth: float) -> List[np.ndarray]:
    """Line strips drawing camera frusta.

    Args:
        R: (N, 3, 3) ``cam_from_world`` rotations; C: (N, 3) camera centres (world).
        K: (N, 3, 3) calibration matrices (COLMAP pixels); size: (N, 2) image (W, H).
        depth: distance of the drawn image plane from the centre (world units).
    Returns:
        5 N strips: per camera the image rectangle (5 points, closed) and 4 rays (2 points)
        from the centre to its corners.
    """
    R, C, K = np.asarray(R, np.float64), np.asarray(C, np.float64), np.asarray(K, np.float64)
    size = np.asarray(size, np.float64).reshape(-1, 2)
    out: List[np.ndarray] = []
    for Ri, Ci, Ki, (w, h) in zip(R, C, K, size):
        px = np.array([[0, 0, 1], [w, 0, 1], [w, h, 1], [0, h, 1]], np.float64)
        rays = px @ np.linalg.inv(Ki).T  # z = 1 in the camera
        corners = Ci + depth * rays @ Ri  # R^T applied to each row
        out.append(np.vstack([corners, corners[:1]]))
        out.extend(np.stack([Ci, c]) for c in corners)
    return out


class SequenceViewer:
    """Log a sequence run to Rerun.

    Args:
        path: ``.rrd`` file to write (atomically enough: Rerun streams into it and finishes it
            on :meth:`close`); None with ``spawn`` for a live viewer only.
        spawn: also (or only) send to a live viewer (spawns ``rerun`` when none is running).
        image_max_size: the logged frame image is downscaled so that its longer side is at
            most this (0: full size); inlier pixels are scaled with it.
        jpeg_quality: JPEG quality of the logged images (files already in JPEG are logged as
            they are).
        application_id: Rerun application id (groups recordings in the viewer).
        expected_frames: frames the run will have, when known (long runs log their growing
            trajectories less often, see :data:`MAX_TRAJECTORY_LOGS`).
    """

    def __init__(self, path: Optional[PathLike] = None, spawn: bool = False, image_max_size: int = 640,
                 jpeg_quality: int = 80, application_id: str = "hloc_bpnp_track",
                 expected_frames: Optional[int] = None):
        rr = _require_rerun()
        if path is None and not spawn:
            raise ValueError("SequenceViewer: give a .rrd path, spawn=True, or both")
        self.rr = rr
        self.path = Path(path) if path is not None else None
        self.image_max_size = int(image_max_size)
        self.jpeg_quality = int(jpeg_quality)
        self.rec = rr.RecordingStream(application_id)
        sinks = []
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            sinks.append(rr.FileSink(str(self.path)))
        if spawn:
            self.rec.spawn(connect=False)
            sinks.append(rr.GrpcSink())
        self.rec.set_sinks(*sinks)
        self.rec.log("world", rr.ViewCoordinates.RIGHT_HAND_Y_DOWN, static=True)
        self._index = 0
        self._map_key = None
        self._initial_images: Optional[set] = None
        self._est: List[np.ndarray] = []
        self._gt: List[np.ndarray] = []
        self._frustum_depth: Optional[float] = None
        self.expected_frames = expected_frames

    # ------------------------------------------------------------------ map
    def log_map(self, map_, force: bool = False) -> bool:
        """Log the map's points and keyframes when they changed since the last call (number of
        images or points) or ``force``. Returns whether something was logged."""
        rr = self.rr
        names = list(map_.image_names)
        pts = np.asarray(map_.points3D, np.float64).reshape(-1, 3)
        key = (len(names), len(pts))
        if key == self._map_key and not force:
            return False
        self._map_key = key
        if self._initial_images is None:
            self._initial_images = set(names)
        colors = self._point_colors(map_)
        self.rec.log("world/map/points", rr.Points3D(pts, colors=colors, radii=rr.Radius.ui_points(1.5)))
        if names:
            poses = [map_.pose(n) for n in names]
            cams = [map_.camera(n) for n in names]
            R = np.stack([p.R.detach().cpu().numpy() for p in poses])
            C = np.stack([p.center.detach().cpu().numpy() for p in poses])
            K = np.stack([c.K.detach().cpu().numpy() for c in cams])
            size = np.array([[float(c.width), float(c.height)] for c in cams])
            if self._frustum_depth is None:
                self._frustum_depth = self._depth_scale(C, pts)
            strips = frustum_strips(R, C, K, size, self._frustum_depth)
            new = [n not in self._initial_images for n in names]
            col = [NEW_KEYFRAME_COLOR if f else MAP_COLOR for f in new for _ in range(5)]
            self.rec.log("world/map/keyframes", rr.LineStrips3D(strips, colors=col, radii=rr.Radius.ui_points(1.0)))
            self.rec.log("world/map/keyframes/centers",
                         rr.Points3D(C, colors=[NEW_KEYFRAME_COLOR if f else MAP_COLOR for f in new],
                                     radii=rr.Radius.ui_points(3.0)))
        return True

    @staticmethod
    def _point_colors(map_) -> Optional[np.ndarray]:
        """(P, 3) uint8 colours of the map points from the reconstruction, None when it has
        none (all black) or they cannot be read."""
        ids = getattr(map_, "point3D_ids", None)
        rec = getattr(map_, "reconstruction", None)
        if ids is None or rec is None or len(ids) == 0:
            return None
        try:
            pts = rec.points3D
            col = np.stack([np.asarray(pts[int(i)].color, np.uint8) for i in ids])
        except (KeyError, AttributeError, TypeError, IndexError):
            return None
        return col if col.any() else None

    @staticmethod
    def _depth_scale(C: np.ndarray, pts: np.ndarray) -> float:
        """Frustum depth: the larger of half the median distance between neighbouring map
        cameras and a tenth of the cameras' median distance to their median; else a
        twentieth of the median camera-to-point distance; else 1."""
        if len(C) >= 2:
            sub = C[:: max(1, len(C) // 500)]
            d = np.linalg.norm(sub[:, None] - sub[None], axis=-1)
            d[np.diag_indices_from(d)] = np.inf
            depth = max(0.5 * float(np.median(d.min(1))),
                        0.1 * float(np.median(np.linalg.norm(sub - np.median(sub, 0), axis=1))))
            if np.isfinite(depth) and depth > 0:
                return depth
        if len(C) and len(pts):
            d = float(np.median(np.linalg.norm(pts[:, None] - C[None], axis=-1)))
            if np.isfinite(d) and d > 0:
                return d / 20
        return 1.0

    # ------------------------------------------------------------------ frames
    def _image(self, image):
        """A loggable image archetype (JPEG) and the scale applied, or (None, 1)."""
        rr = self.rr
        if image is None:
            return None, 1.0
        if isinstance(image, (str, Path)):
            p = Path(image)
            if p.suffix.lower() in (".jpg", ".jpeg") and self.image_max_size == 0:
                return rr.EncodedImage(path=p), 1.0
            from ..io.image import read_image

            image = read_image(p)
        image = np.asarray(image)
        h, w = image.shape[:2]
        s = 1.0
        if self.image_max_size and max(h, w) > self.image_max_size:
            from PIL import Image

            s = self.image_max_size / max(h, w)
            size = (max(1, round(w * s)), max(1, round(h * s)))
            image = np.asarray(Image.fromarray(image).resize(size, Image.BILINEAR))
            s = size[0] / w
        return rr.Image(image).compress(jpeg_quality=self.jpeg_quality), s

    def log_frame(self, fr, image=None, map_=None, gt_pose=None) -> None:
        """Log one tracked frame.

        Args:
            fr: a :class:`~hloc_bpnp.sequence.tracker.FrameResult`. Its
                ``inlier_points2d`` ((N, 2) COLMAP pixels) and ``inlier_points3d`` ((N, 3)
                world) are logged when present; else the 2D inliers of ``fr.result``.
            image: the frame: (H, W[, 3]) uint8 array or an image file (None: not logged).
            map_: the current map (logged again when it changed).
            gt_pose: the frame's ground-truth ``cam_from_world`` (None: unknown).
        """
        rr, rec = self.rr, self.rec
        rec.set_time("frame", sequence=self._index)
        rec.set_time("time", duration=float(fr.timestamp))
        if map_ is not None:
            self.log_map(map_)
        pose = fr.pose
        res = fr.result
        cam = res.camera
        if pose is not None:
            self._est.append(pose.center.detach().cpu().numpy().astype(np.float64))
            rec.log("world/camera", rr.Transform3D(translation=self._est[-1],
                                                   mat3x3=pose.R.detach().cpu().numpy().T,
                                                   relation=rr.TransformRelation.ParentFromChild))
        if gt_pose is not None:
            self._gt.append(gt_pose.center.detach().cpu().numpy().astype(np.float64))
        every = max(1, (self.expected_frames or 0) // MAX_TRAJECTORY_LOGS)
        if self._index % every == 0 or fr.status == "lost":
            if self._est:
                rec.log("world/trajectory/estimated",
                        rr.LineStrips3D([np.stack(self._est)], colors=[ESTIMATED_COLOR], radii=rr.Radius.ui_points(2)))
            if self._gt:
                rec.log("world/trajectory/groundtruth",
                        rr.LineStrips3D([np.stack(self._gt)], colors=[GROUNDTRUTH_COLOR],
                                        radii=rr.Radius.ui_points(2)))
        archetype, s = self._image(image)
        if cam is not None:
            K = cam.K.detach().cpu().numpy().astype(np.float64)
            w, h = float(cam.width), float(cam.height)
            if archetype is not None and s != 1.0:
                K = np.diag([s, s, 1.0]) @ K
                w, h = round(w * s), round(h * s)
            rec.log("world/camera/image", rr.Pinhole(image_from_camera=K, resolution=[w, h],
                                                     image_plane_distance=self._frustum_depth or 1.0))
        if archetype is not None:
            rec.log("world/camera/image", archetype)
        x2 = getattr(fr, "inlier_points2d", None)
        if x2 is None and res.points2D is not None and res.inlier_mask is not None and fr.status != "lost":
            x2 = np.asarray(res.points2D)[np.asarray(res.inlier_mask, bool)]
        x3 = getattr(fr, "inlier_points3d", None)
        if x2 is not None:
            rec.log("world/camera/image/inliers",
                    rr.Points2D(np.asarray(x2, np.float64).reshape(-1, 2) * s, colors=[INLIER_COLOR],
                                radii=rr.Radius.ui_points(2.5)))
        else:
            rec.log("world/camera/image/inliers", rr.Clear(recursive=False))
        if x3 is not None:
            rec.log("world/inliers", rr.Points3D(np.asarray(x3, np.float64).reshape(-1, 3), colors=[INLIER_COLOR],
                                                 radii=rr.Radius.ui_points(2.5)))
        else:
            rec.log("world/inliers", rr.Clear(recursive=False))
        n_inl = int(res.num_inliers) if fr.status != "lost" else 0
        text = f"{fr.name}: {fr.status}" + (f" ({fr.reason})" if fr.reason else "") + \
               f", {n_inl} inliers" + (", keyframe" if fr.keyframe else "")
        rec.log("status", rr.TextLog(text, level="WARN" if fr.status == "lost" else "INFO",
                                     color=STATUS_COLOR.get(fr.status)))
        rec.log("stats/inliers", rr.Scalars(float(n_inl)))
        rec.log("stats/ms", rr.Scalars(1000.0 * float(fr.seconds)))
        self._index += 1

    def callback(self, frames: Sequence, tracker=None, image_of: Optional[Callable] = None) -> Callable:
        """An ``on_frame`` callback for :meth:`SequenceLocalizer.run` over ``frames``.

        Args:
            frames: the frames given to ``run`` (:class:`~hloc_bpnp.sequence.frames.Frame`
                objects: their ``image`` or ``path`` is logged, and their ``gt_pose``).
            tracker: the :class:`SequenceLocalizer` (its current ``map`` is logged as it grows).
            image_of: ``frame -> image or path`` instead of ``frame.image`` / ``frame.path``.
        """
        by_name: Dict[str, object] = {f.name: f for f in frames}
        if self.expected_frames is None:
            self.expected_frames = len(by_name)

        def on_frame(fr) -> None:
            f = by_name.get(fr.name)
            img = None
            if f is not None:
                img = image_of(f) if image_of is not None else (f.image if f.image is not None else f.path)
            try:
                self.log_frame(fr, img, tracker.map if tracker is not None else None,
                               getattr(f, "gt_pose", None))
            except (OSError, ValueError) as e:  # the viewer never stops a run
                logger.warning("Viewer: frame %s not logged: %s", fr.name, e)

        return on_frame

    def close(self) -> None:
        """Flush and finish the recording."""
        self.rec.flush()
        self.rec.disconnect()
        if self.path is not None:
            logger.info("Rerun recording written to %s (open it with: rerun %s)", self.path, self.path)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False


def read_recording(path: PathLike) -> Dict[str, List]:
    """The chunks of a ``.rrd`` file as {entity path: [pyarrow RecordBatch, ...]} (tests,
    inspection)."""
    _require_rerun()
    from rerun.chunk import RrdReader

    out: Dict[str, List] = {}
    for ch in RrdReader(str(path)).stream():
        out.setdefault(ch.entity_path, []).append(ch.to_record_batch())
    return out


__all__ = ["SequenceViewer", "frustum_strips", "read_recording"]
