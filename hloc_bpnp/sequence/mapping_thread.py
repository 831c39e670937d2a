"""Map growth off the tracking path: a background thread that inserts keyframes.

ORB-SLAM's split: the tracker hands a keyframe (:class:`KeyframeJob`) to :meth:`MappingThread.submit`,
which only puts it in a queue and returns; the worker thread matches it to its neighbouring
keyframes, triangulates new points and appends everything to the map in place
(:func:`~hloc_bpnp.sequence.growth.insert_keyframe`, at a cost independent of the map's
size). The map is shared: the worker writes under ``map.lock``, readers that need a
consistent view over several calls hold it too.

On a 2-core CPU the worker runs torch with one intra-op thread (``torch_threads``; the
setting is per thread), so it leaves the other core to the tracker. A keyframe the tracker
waits for (submitted ``urgent``) is inserted on the tracker's own thread, with its torch
threads, once the keyframes queued before it are in (a blocked tracker's cores would
otherwise idle: kornia SIFT at 1600 px took 2.3 s on a 1-thread worker, 1.9 s on a 2-thread
worker and 1.3-1.7 s on the 2-thread main thread, Herz-Jesu 0007.jpg); while a :meth:`drain`
waits, the worker runs with ``torch_threads_waited`` threads (0: as many as the thread that
created the :class:`MappingThread`), set at the start of a job and again between its
extraction and its insertion.

``threaded: false`` runs each insertion inline in :meth:`submit` (deterministic, for tests
and debugging). :meth:`drain` waits until the queue is empty; :meth:`close` drains, then
stops the worker. An exception in the worker is re-raised by the next
:meth:`drain` / :meth:`close` / :meth:`submit` (never lost).
"""
from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Mapping, Optional

import numpy as np

from ..geometry import Camera, Pose

logger = logging.getLogger(__name__)


@dataclass
class KeyframeJob:
    """A tracked frame to insert as a keyframe (pose held fixed).

    Attributes:
        name, camera, pose: the frame (``cam_from_world``).
        features: its features (numpy, hloc keys).
        inlier_kp, inlier_rows: (M,) tracking inliers: keypoint index and ``points3D`` row.
        recent: recently inserted keyframes, matched first for triangulation.
        image: the frame's image, when the keyframe is to be re-extracted at the map's
            resolution on the mapping thread (see :class:`MappingThread`), else None.
        urgent: the submitter waits for this keyframe: :meth:`MappingThread.submit` inserts it
            on the submitter's thread (after the keyframes queued before it) and returns then.
    """

    name: str
    camera: Camera
    pose: Pose
    features: Dict[str, np.ndarray]
    inlier_kp: np.ndarray
    inlier_rows: np.ndarray
    recent: List[str] = field(default_factory=list)
    image: Optional[np.ndarray] = None
    urgent: bool = False


class MappingThread:
    """Keyframe insertion into ``map_`` on a background thread (or inline).

    Args:
        map_: the :class:`~hloc_bpnp.mapping.Map` to grow (in place).
        matcher: the map's matcher (``match_many``).
        conf: :data:`hloc_bpnp.sequence.growth.default_conf`-like dict; ``threaded``,
            ``max_queue`` (keyframes waiting; :meth:`busy` says when it is reached) and
            ``torch_threads`` are read here.
        on_inserted: called ``on_inserted(job, info)`` on the worker after each insertion.
        extractor: the map's extractor: jobs that carry their image are re-extracted with it
            on the worker, so keyframes join the map with features of the map's kind and
            resolution even when frames are tracked with lighter ones; the tracking inliers are
            carried over to the nearest new keypoint within ``reextract_max_px``.
    """

    def __init__(self, map_, matcher, conf: Mapping, on_inserted: Optional[Callable] = None, extractor=None):
        self.map = map_
        self.matcher = matcher
        self.extractor = extractor
        self.conf = dict(conf)
        self.threaded = bool(self.conf.get("threaded", True))
        self.max_queue = int(self.conf.get("max_queue", 2))
        import torch

        self.torch_threads = max(1, int(self.conf.get("torch_threads", 1)))
        # while the submitter waits, its cores are free: its own thread count by default
        self.torch_threads_waited = int(self.conf.get("torch_threads_waited", 0) or 0) or torch.get_num_threads()
        self._waiting = 0  # drain() calls blocked now
        self.on_inserted = on_inserted
        self.inserted: List[str] = []
        self.infos: List[Dict] = []
        self.seconds: List[float] = []  # worker time per insertion
        self._queue: "queue.Queue[Optional[KeyframeJob]]" = queue.Queue()
        self._error: Optional[BaseException] = None
        self._pending = 0
        self._lock = threading.Lock()
        self._thread: Optional[threading.Thread] = None
        self._closed = False
        if self.threaded:
            self._thread = threading.Thread(target=self._worker, name="hloc_bpnp-mapping", daemon=True)
            self._thread.start()

    # ------------------------------------------------------------------ tracker side
    @property
    def pending(self) -> int:
        """Keyframes submitted and not inserted yet."""
        return self._pending

    def busy(self) -> bool:
        """Whether ``max_queue`` keyframes already wait (the tracker then inserts none)."""
        return self._pending >= self.max_queue

    def submit(self, job: KeyframeJob) -> None:
        """Queue a keyframe and return at once (inline mode, or an ``urgent`` job: insert it
        now on this thread, after the queued ones)."""
        self._raise_error()
        if self._closed:
            raise RuntimeError("MappingThread is closed")
        if self.threaded and job.urgent:
            self.drain()  # insertion order is submission order
        with self._lock:
            self._pending += 1
        if not self.threaded or job.urgent:
            self._insert(job)
            return
        self._queue.put(job)

    def drain(self) -> None:
        """Wait until every submitted keyframe is inserted."""
        if self.threaded and self._thread is not None and self._thread.is_alive():
            with self._lock:
                self._waiting += 1
            try:
                self._queue.join()
            finally:
                with self._lock:
                    self._waiting -= 1
        self._raise_error()

    def close(self) -> None:
        """Drain the queue, then stop the worker (idempotent)."""
        if self._closed:
            self._raise_error()
            return
        try:
            self.drain()
        finally:
            self._closed = True
            if self._thread is not None and self._thread.is_alive():
                self._queue.put(None)
                self._thread.join()

    def __enter__(self) -> "MappingThread":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def stats(self) -> Dict:
        """Insertions done, total / mean / max worker seconds."""
        s = np.asarray(self.seconds, float)
        return {"keyframes_inserted": len(self.inserted), "seconds_total": float(s.sum()),
                "seconds_mean": float(s.mean()) if len(s) else 0.0,
                "seconds_max": float(s.max()) if len(s) else 0.0}

    # ------------------------------------------------------------------ worker side
    def _raise_error(self) -> None:
        if self._error is not None:
            err, self._error = self._error, None
            raise RuntimeError(f"Keyframe insertion failed on the mapping thread: {err!r}") from err

    def _worker(self) -> None:
        import torch

        torch.set_num_threads(self.torch_threads)  # this thread only
        while True:
            job = self._queue.get()
            try:
                if job is None:
                    return
                if self._error is None:
                    self._insert(job, on_worker=True)
            except BaseException as e:  # re-raised on the tracker's side
                logger.exception("Keyframe %s: insertion failed", getattr(job, "name", "?"))
                self._error = e
                with self._lock:
                    self._pending -= 1
            finally:
                self._queue.task_done()

    def _set_threads(self) -> int:
        """On the worker: ``torch_threads_waited`` torch threads while a :meth:`drain` waits,
        else ``torch_threads`` (urgent jobs never reach the worker: see :meth:`submit`)."""
        import torch

        n = self.torch_threads_waited if self._waiting else self.torch_threads
        if torch.get_num_threads() != n:
            torch.set_num_threads(n)
        return n

    def _insert(self, job: KeyframeJob, on_worker: bool = False) -> None:
        from .growth import insert_keyframe

        t = time.perf_counter()
        used = [self._set_threads()] if on_worker else []  # torch threads at each stage's start
        feats, kp, rows = job.features, job.inlier_kp, job.inlier_rows
        if job.image is not None and self.extractor is not None:
            from ..features.feature_dict import to_numpy

            feats = to_numpy(self.extractor.extract(job.image))
            kp, rows = transfer_keypoints(np.asarray(job.features["keypoints"], np.float64)[kp], rows,
                                          np.asarray(feats["keypoints"], np.float64),
                                          float(self.conf.get("reextract_max_px", 2.0)))
        if on_worker:
            used.append(self._set_threads())
        with self.map.lock:
            covis = [n for n, _ in self.map.images_observing(job.inlier_rows)]
        n_nb, n_recent = int(self.conf["num_neighbours"]), int(self.conf["num_recent"])
        recent = [n for n in reversed(job.recent) if n in self.map.features][:n_recent]
        neighbours = list(dict.fromkeys(recent + covis))[:n_nb]
        info = insert_keyframe(self.map, job.name, job.camera, job.pose, feats, kp, rows, neighbours,
                               self.matcher, self.conf)
        info["reextracted"] = feats is not job.features
        info["torch_threads"] = used
        info["thread"] = threading.current_thread().name
        info["seconds"] = time.perf_counter() - t
        self.seconds.append(info["seconds"])
        self.inserted.append(job.name)
        self.infos.append({"name": job.name, **info})
        with self._lock:
            self._pending -= 1
        logger.debug("Keyframe %s inserted: %d new points (%.3f s)", job.name, info["num_new_points"],
                     info["seconds"])
        if self.on_inserted is not None:
            self.on_inserted(job, info)



def same_extraction(a, b, image_size) -> bool:
    """Whether extractors ``a`` and ``b`` give the same features for an image of
    ``image_size`` = (W, H): the same class and settings except the resizing, and the same
    resized size for this image (e.g. 640x480 frames under an 800-px tracking cap and a
    1600-px map cap: re-extracting such a keyframe with the map's extractor recomputes them)."""
    if type(a) is not type(b):
        return False
    skip = ("preset", "resize_max", "resize_force")
    ca = {k: v for k, v in a.conf.items() if k not in skip}
    cb = {k: v for k, v in b.conf.items() if k not in skip}
    W, H = int(image_size[0]), int(image_size[1])
    return ca == cb and tuple(a.resized_size(W, H)) == tuple(b.resized_size(W, H))


def transfer_keypoints(points: np.ndarray, rows: np.ndarray, keypoints: np.ndarray, max_px: float):
    """Carry point observations over to another extraction of the same image.

    Args:
        points: (M, 2) pixels of the observing keypoints; rows: (M,) their ``points3D`` rows.
        keypoints: (N, 2) the new keypoints (same pixel convention).
        max_px: largest distance to the nearest new keypoint.
    Returns:
        (new keypoint index (K,), rows (K,)): each new keypoint and each row at most once
        (the nearest pairs kept).
    """
    from scipy.spatial import cKDTree

    rows = np.asarray(rows, np.int64)
    if len(points) == 0 or len(keypoints) == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    d, nn = cKDTree(keypoints).query(points, k=1, distance_upper_bound=max_px)
    ok = np.isfinite(d)
    d, nn, rows = d[ok], nn[ok], rows[ok]
    o = np.argsort(d, kind="stable")
    nn, rows = nn[o], rows[o]
    _, first = np.unique(nn, return_index=True)
    nn, rows = nn[np.sort(first)], rows[np.sort(first)]
    _, first = np.unique(rows, return_index=True)
    return nn[np.sort(first)].astype(np.int64), rows[np.sort(first)]
