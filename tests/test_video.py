"""Video input of sequence mode (PyAV): frames decoded in order with the stream's timestamps,
corrupt files and corrupt packets reported with the file's name."""
from fractions import Fraction

import numpy as np
import pytest

av = pytest.importorskip("av")

from hloc_bpnp.sequence.frames import is_video, iter_frames, load_frames  # noqa: E402
from hloc_bpnp.sequence.video import VideoError, iter_video, probe_video  # noqa: E402

W, H, N, FPS = 128, 96, 12, 10


def _images(n=N):
    """Frames that differ in a way a lossy codec keeps: a bright square moving right and an
    overall red level growing with the index."""
    out = []
    for i in range(n):
        im = np.full((H, W, 3), 40, np.uint8)
        im[:, :, 0] = 20 + 15 * i
        im[20:52, 8 + 6 * i:40 + 6 * i] = 255
        out.append(im)
    return out


def write_video(path, images, fps=FPS, codec="mpeg4"):
    with av.open(str(path), "w") as c:
        s = c.add_stream(codec, rate=Fraction(fps))
        s.width, s.height, s.pix_fmt = images[0].shape[1], images[0].shape[0], "yuv420p"
        s.bit_rate = 4_000_000
        for im in images:
            for p in s.encode(av.VideoFrame.from_ndarray(im, format="rgb24")):
                c.mux(p)
        for p in s.encode(None):
            c.mux(p)
    return path


def test_video_frames_order_timestamps_pixels(tmp_path):
    ims = _images()
    path = write_video(tmp_path / "walk.mp4", ims)
    info = probe_video(path)
    assert (info.width, info.height) == (W, H) and info.fps == pytest.approx(FPS) and info.num_frames == N
    frames = load_frames(path)
    assert [f.name for f in frames] == [f"walk/frame-{i:06d}" for i in range(N)]
    assert [f.timestamp for f in frames] == pytest.approx([i / FPS for i in range(N)])
    assert all(f.path == path and f.error is None and f.gt_pose is None and f.read_seconds > 0 for f in frames)
    for i, (f, im) in enumerate(zip(frames, ims)):
        assert f.image.shape == (H, W, 3) and f.image.dtype == np.uint8
        err = np.abs(f.image.astype(float) - im).mean()
        assert err < 6.0, (i, err)  # lossy codec: close to its own frame ...
        others = [np.abs(f.image.astype(float) - o).mean() for j, o in enumerate(ims) if j != i]
        assert err < min(others) / 2, i  # ... and farther from every other frame (order kept)
    # streaming, every 3rd frame, the first 3 of those
    sub = list(iter_video(path, step=3, max_frames=3))
    assert [f.name for f in sub] == ["walk/frame-000000", "walk/frame-000003", "walk/frame-000006"]
    assert [f.timestamp for f in sub] == pytest.approx([0.0, 0.3, 0.6])
    assert [f.name for f in iter_frames(path)] == [f.name for f in frames]
    assert is_video(path) and not is_video(tmp_path)


def test_video_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.mp4"):
        load_frames(tmp_path / "missing.mp4")
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"this is not a video " * 50)
    with pytest.raises(VideoError, match="junk.mp4.*cannot open"):
        load_frames(junk)
    with pytest.raises(ValueError, match="junk.mp4"):  # VideoError is a ValueError (the CLI's errors)
        probe_video(junk)
    # an audio-only file: no video stream
    audio = tmp_path / "tone.wav"
    with av.open(str(audio), "w") as c:
        s = c.add_stream("pcm_s16le", rate=8000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 800), np.int16), format="s16", layout="mono")
        frame.sample_rate = 8000
        for p in s.encode(frame):
            c.mux(p)
    with pytest.raises(VideoError, match="tone.wav: no video stream"):
        list(iter_video(audio))


def test_corrupt_packets_are_lost_frames_with_reasons(tmp_path):
    path = write_video(tmp_path / "v.mp4", _images())
    data = bytearray(path.read_bytes())
    # scramble the middle of the file (frame data; the header and index stay intact)
    lo, hi = len(data) // 3, len(data) // 2
    for k in range(lo, hi):
        data[k] = (data[k] * 7 + 13) % 256
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(bytes(data))
    frames = list(iter_video(bad))
    failed = [f for f in frames if f.error is not None]
    assert len(frames) == N  # every packet is a frame, decoded or not
    assert failed, "scrambling a third of the file should break some frames"
    for f in failed:
        index = int(f.name.split("frame-")[1])
        assert f.image is None and str(bad) in f.error and f"frame {index} " in f.error
        assert "cannot be decoded" in f.error
    assert frames[0].image is not None  # the frames before the damage decode
    assert [f.timestamp for f in frames] == pytest.approx([i / FPS for i in range(N)])
