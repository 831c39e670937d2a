"""Video files as sequence frames, decoded with PyAV (FFmpeg; the ``sequence`` extra).

Frames are decoded one at a time in stream order (:func:`iter_video`), so a long video never
sits in memory whole. Each frame is a :class:`~hloc_bpnp.sequence.frames.Frame` named
``<video stem>/frame-NNNNNN`` (N: the index among the decoded frames, from 0) with its
timestamp from the stream (presentation time in seconds, ``pts x time_base``; index / frame
rate when the stream has no pts) and its RGB image in ``Frame.image``.

A file that cannot be opened as a video (missing, corrupt, no video stream, nothing
decodable) is a :class:`VideoError` naming the file. A packet that fails to decode in the
middle of a readable video is a frame with ``image=None`` and ``error`` saying why (the
tracker records it as lost and goes on); decoding continues with the next packet.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Iterator, Optional, Union

import numpy as np

from .frame import Frame

logger = logging.getLogger(__name__)

PathLike = Union[str, Path]


class VideoError(ValueError):
    """A video that cannot be read; the message starts with the file's path."""


@dataclass
class VideoInfo:
    """What the container says about its first video stream.

    Attributes:
        path: the file; width, height: frame size in pixels; codec: the codec's name.
        fps: average frame rate (None when unknown); num_frames: frames the container
            declares (0 when it does not say); duration: seconds (None when unknown).
    """

    path: Path
    width: int
    height: int
    codec: str
    fps: Optional[float]
    num_frames: int
    duration: Optional[float]


def _require_av():
    try:
        import av
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("video input needs PyAV: pip install 'hloc_bpnp[sequence]' (or pip install av)") from e
    return av


def _open(path: Path):
    av = _require_av()
    if not path.is_file():
        raise FileNotFoundError(2, "video file does not exist", str(path))
    try:
        container = av.open(str(path), mode="r")
    except (av.FFmpegError, OSError, ValueError) as e:
        raise VideoError(f"{path}: cannot open as a video: {e}") from None
    if not container.streams.video:
        container.close()
        raise VideoError(f"{path}: no video stream in the file")
    return container, container.streams.video[0]


def probe_video(path: PathLike) -> VideoInfo:
    """Read the header of a video file.

    Raises:
        FileNotFoundError: no such file.
        VideoError: the file is no readable video or has no video stream.
    """
    path = Path(path)
    container, stream = _open(path)
    try:
        rate = stream.average_rate or stream.guessed_rate
        dur = None
        if stream.duration is not None and stream.time_base is not None:
            dur = float(stream.duration * stream.time_base)
        elif container.duration is not None:
            dur = container.duration / 1e6
        return VideoInfo(path, int(stream.codec_context.width), int(stream.codec_context.height),
                         stream.codec_context.name, float(rate) if rate else None, int(stream.frames or 0), dur)
    finally:
        container.close()


def iter_video(path: PathLike, step: int = 1, max_frames: Optional[int] = None) -> Iterator[Frame]:
    """Decode a video's frames in order.

    Args:
        path: the video file (any container / codec FFmpeg reads: mp4, mkv, avi, mov, ...).
        step: keep every ``step``-th decoded frame (the index in the name counts all frames).
        max_frames: stop after this many kept frames (None: all).
    Yields:
        :class:`Frame` with ``path`` = the video, ``image`` (H, W, 3) uint8 RGB,
        ``timestamp`` in seconds from the stream, ``read_seconds`` = the time spent decoding
        it; or, for a packet that fails to decode, ``image=None`` and ``error`` naming the
        file, the frame and FFmpeg's reason.
    Raises:
        FileNotFoundError: no such file.
        VideoError: not a readable video, or not one frame could be decoded.
    """
    if step < 1:
        raise ValueError(f"step must be >= 1, got {step}")
    av = _require_av()
    path = Path(path)
    container, stream = _open(path)
    rate = stream.average_rate or stream.guessed_rate
    tb = stream.time_base
    stem = path.stem
    index = kept = failed = 0

    def stamp(pts) -> float:
        if pts is not None and tb is not None:
            return float(Fraction(pts) * tb)
        return index / float(rate) if rate else float(index)

    def keep() -> bool:
        return index % step == 0 and (max_frames is None or kept < max_frames)

    try:
        packets = container.demux(stream)
        while max_frames is None or kept < max_frames:
            t0 = time.perf_counter()
            try:
                packet = next(packets)
            except StopIteration:
                break
            except av.FFmpegError as e:  # the container itself is broken from here on
                if index == 0:
                    raise VideoError(f"{path}: cannot read the video stream: {e}") from None
                logger.warning("%s: demuxing stopped after %d frames: %s", path, index, e)
                break
            try:
                decoded = packet.decode()
            except (av.FFmpegError, ValueError) as e:
                if packet.size == 0:
                    continue
                name = f"{stem}/frame-{index:06d}"
                err = f"{path}: frame {index} (pts {packet.pts}) cannot be decoded: {e}"
                logger.warning("%s", err)
                failed += 1
                if keep():
                    kept += 1
                    yield Frame(name, path, stamp(packet.pts), error=err)
                index += 1
                continue
            for fr in decoded:
                if keep():
                    image = fr.to_ndarray(format="rgb24")
                    kept += 1
                    out = Frame(f"{stem}/frame-{index:06d}", path, stamp(fr.pts),
                                image=np.ascontiguousarray(image), read_seconds=time.perf_counter() - t0)
                    index += 1
                    yield out
                    t0 = time.perf_counter()
                else:
                    index += 1
    finally:
        container.close()
    if index == 0:
        raise VideoError(f"{path}: no frame could be decoded ({failed} packets failed)")
    logger.info("%s: %d frames (%d kept%s), %s", path, index, kept,
                f", {failed} failed to decode" if failed else "",
                f"{float(rate):.3g} frames/s" if rate else "frame rate unknown")


__all__ = ["VideoError", "VideoInfo", "probe_video", "iter_video"]
