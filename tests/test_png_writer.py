"""PNGs the library writes are valid whatever was imported first.

``import pycolmap`` before anything loaded libz.so.1 makes compression in this process
corrupt the heap (Pillow's PNG encoder, even ``zlib.compress``; see hloc_bpnp/io/png.py).
Each case runs in a fresh interpreter that imports pycolmap first.
"""
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from PIL import Image

from hloc_bpnp.io.png import _adler32, _crc32, _zlib_stored, encode_png, write_png


def _run(code: str, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    p = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=240)
    assert p.returncode == 0, f"rc={p.returncode}\n{p.stdout[-2000:]}\n{p.stderr[-4000:]}"
    return p


def _check_png(path, min_size=(100, 100)):
    assert path.is_file() and path.stat().st_size > 0
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(path) as im:
        im.load()  # decoding verifies every chunk CRC and the zlib stream
        assert im.size[0] >= min_size[0] and im.size[1] >= min_size[1]
    assert not list(path.parent.glob("*.tmp"))


def test_cli_evaluate_plot_after_import_pycolmap(tmp_path):
    _run("""
        import pycolmap  # first: libz.so.1 binds to pycolmap's embedded zlib
        import torch
        from hloc_bpnp.cli import main
        from hloc_bpnp.geometry import Pose
        from hloc_bpnp.io.hloc_text import write_results
        gt = {f"q{i}.jpg": Pose.from_aa(torch.tensor([0.1 * i, 0.2, 0.0, i, 0.0, 1.0], dtype=torch.float64))
              for i in range(4)}
        est = {n: Pose.from_aa(p.aa_t() + 1e-3) for n, p in gt.items()}
        write_results("gt.txt", gt)
        write_results("est.txt", est)
        rc = main(["evaluate", "--results", "est.txt", "--gt", "gt.txt", "--plot", "out/cum.png"])
        assert rc == 0, rc
        import hloc_bpnp.io.png as png
        assert not png.deflate_is_safe()
    """, tmp_path)
    _check_png(tmp_path / "out" / "cum.png")


def test_plot_and_synthetic_images_after_import_pycolmap(tmp_path):
    _run("""
        import pycolmap
        import numpy as np
        from hloc_bpnp.io.png import write_png
        img = (np.arange(900 * 700 * 3) % 251).astype(np.uint8).reshape(700, 900, 3)
        write_png("img.png", img)
        from hloc_bpnp.evaluation import evaluate, plot_cumulative
        from hloc_bpnp.geometry import Pose
        import torch
        gt = {"a": Pose.from_aa(torch.zeros(6, dtype=torch.float64))}
        plot_cumulative({"m": evaluate(gt, gt, [(0.01, 1.0)])}, "p.png")
        np.save("img.npy", img)
    """, tmp_path)
    _check_png(tmp_path / "p.png")
    with Image.open(tmp_path / "img.png") as im:
        assert (np.asarray(im) == np.load(tmp_path / "img.npy")).all()


def test_png_encoder_matches_pillow_and_zlib():
    import zlib

    rng = np.random.default_rng(0)
    for n in (0, 1, 255, 70000, 300001):
        d = rng.integers(0, 256, n, dtype=np.uint8).tobytes()
        assert _crc32(d) == zlib.crc32(d) and _adler32(d) == zlib.adler32(d)
        assert zlib.decompress(_zlib_stored(d)) == d
    for shape in [(37, 53, 3), (5, 7), (3, 4, 4)]:
        a = rng.integers(0, 256, shape, dtype=np.uint8)
        for compress in (True, False):
            import io

            with Image.open(io.BytesIO(encode_png(a, compress))) as im:
                assert (np.asarray(im) == a).all()


def test_write_png_errors(tmp_path):
    with pytest.raises(ValueError, match="uint8"):
        write_png(tmp_path / "x.png", np.zeros((4, 4), np.float32))
    with pytest.raises(ValueError, match=r"\(H, W\)"):
        write_png(tmp_path / "x.png", np.zeros((4, 4, 2), np.uint8))
    assert not list(tmp_path.iterdir())
