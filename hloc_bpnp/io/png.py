"""PNG writing that is safe whatever was imported first (every PNG the library writes).

Measured here (pycolmap 4.2.1, Pillow 13, system zlib 1.2.13): pycolmap's extension
``pycolmap/_core*.so`` embeds its own zlib and libpng and exports their symbols (``deflate``,
``deflateEnd``, ``crc32_z``, ``png_write_row``, ... 412 of them), while it also depends on the
system ``libz.so.1``. When ``import pycolmap`` is the first thing to load ``libz.so.1``, that
library is relocated in pycolmap's lookup scope, so its internal calls bind to pycolmap's
copy (``LD_DEBUG=bindings``: "binding file libz.so.1 to pycolmap/_core...: symbol
`inflate'", `crc32_z', ...). Compression then mixes two zlib builds: Pillow's PNG encoder,
and even the standard library's ``zlib.compress``, abort with "corrupted size vs. prev_size"
/ "free(): invalid pointer" in ``deflateEnd`` (SIGABRT, or a hang, leaving a 0-byte file).
Decompression (reading PNGs) and the stateless checksums were not affected. Loading
``libz.so.1`` before pycolmap avoids it, which ``import hloc_bpnp`` does (see
``hloc_bpnp/__init__.py``), but a caller may have imported pycolmap first.

So this module never compresses with the process's zlib once it may be poisoned:
:func:`write_png` encodes the PNG itself, with the standard library's ``zlib.compress`` when
``libz.so.1`` was loaded before pycolmap (:func:`deflate_is_safe`), else with uncompressed
("stored") deflate blocks, which need no zlib at all (bigger files, same pixels). Files are
written to a temporary name in the same folder and renamed, so a crash leaves no partial file.
"""
from __future__ import annotations

import logging
import struct
import sys
from pathlib import Path
from typing import Union

from .atomic import atomic_write_bytes

import numpy as np

logger = logging.getLogger(__name__)

PathLike = Union[str, Path]

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_STORED_MAX = 65535  # bytes per stored deflate block

# CRC-32 (PNG / zlib polynomial), table for the numpy implementation below
_CRC_TABLE = np.zeros(256, dtype=np.uint32)
for _n in range(256):
    _c = _n
    for _ in range(8):
        _c = (0xEDB88320 ^ (_c >> 1)) if _c & 1 else (_c >> 1)
    _CRC_TABLE[_n] = _c
del _n, _c


def deflate_is_safe() -> bool:
    """True when the process's zlib can compress safely: ``libz.so.1`` was loaded before
    pycolmap's extension (``import hloc_bpnp`` before pycolmap does it), or pycolmap is not
    loaded at all. Conservative: False whenever the order is unknown."""
    if "pycolmap" not in sys.modules and "pycolmap._core" not in sys.modules:
        return True
    import hloc_bpnp

    return bool(getattr(hloc_bpnp, "_ZLIB_LOADED_BEFORE_PYCOLMAP", False))


def _crc32(data: bytes, crc: int = 0) -> int:
    """CRC-32 of ``data`` without zlib: the bytes are cut into equal slices whose raw CRCs
    run in parallel (numpy), then chained: crc(A|B) = Z_len(B)(crc(A)) ^ crc0(B), where
    crc0 starts from 0 and Z_L (feeding L zero bytes) is linear over GF(2)."""
    buf = np.frombuffer(data, dtype=np.uint8)
    reg = np.uint32(crc ^ 0xFFFFFFFF)
    n = len(buf)
    if n == 0:
        return crc
    L = max(256, int(np.sqrt(n)) + 1)  # slice length: ~sqrt(n) numpy steps, ~sqrt(n) chains
    k, rest = divmod(n, L)
    table = _CRC_TABLE

    def raw(rows: np.ndarray, start: np.ndarray) -> np.ndarray:
        r = start.copy()
        for j in range(rows.shape[1]):
            r = table[(r ^ rows[:, j]) & 0xFF] ^ (r >> np.uint32(8))
        return r

    def zero_feed_matrix(length: int) -> np.ndarray:
        basis = (np.uint32(1) << np.arange(32, dtype=np.uint32)).astype(np.uint32)
        return raw(np.zeros((32, length), dtype=np.uint8), basis)  # column i = Z_L(e_i)

    def apply(cols: np.ndarray, r: int) -> int:
        out = 0
        for i in range(32):
            if (r >> i) & 1:
                out ^= int(cols[i])
        return out

    r = int(reg)
    if k:
        crcs = raw(buf[:k * L].reshape(k, L), np.zeros(k, dtype=np.uint32))
        cols = zero_feed_matrix(L)
        for c in crcs.tolist():
            r = apply(cols, r) ^ c
    if rest:
        r = int(raw(buf[k * L:].reshape(1, rest), np.array([r], dtype=np.uint32))[0])
    return r ^ 0xFFFFFFFF


def _adler32(data: bytes) -> int:
    """Adler-32 of ``data`` without zlib (numpy, in chunks that cannot overflow int64)."""
    a, b = 1, 0
    buf = np.frombuffer(data, dtype=np.uint8)
    step = 1 << 20
    for s in range(0, len(buf), step):
        chunk = buf[s:s + step].astype(np.int64)
        m = len(chunk)
        # b += m * a + sum_i (m - i) * chunk[i]
        b = (b + m * a + int(((m - np.arange(m, dtype=np.int64)) * chunk).sum())) % 65521
        a = (a + int(chunk.sum())) % 65521
    return (b << 16) | a


def _zlib_stored(data: bytes) -> bytes:
    """A valid zlib stream of ``data`` in uncompressed (stored) deflate blocks."""
    out = [b"\x78\x01"]
    n = len(data)
    if n == 0:
        out.append(b"\x01\x00\x00\xff\xff")
    for s in range(0, n, _STORED_MAX):
        block = data[s:s + _STORED_MAX]
        final = 1 if s + _STORED_MAX >= n else 0
        out.append(struct.pack("<BHH", final, len(block), len(block) ^ 0xFFFF))
        out.append(block)
    out.append(struct.pack(">I", _adler32(data)))
    return b"".join(out)


def encode_png(image: np.ndarray, compress: bool = None) -> bytes:
    """PNG bytes of an (H, W) gray, (H, W, 3) RGB or (H, W, 4) RGBA uint8 image.

    ``compress``: None (default) uses the standard library's zlib when
    :func:`deflate_is_safe`, else stored blocks; True / False force either.
    """
    img = np.asarray(image)
    if img.dtype != np.uint8:
        raise ValueError(f"encode_png needs a uint8 image, got dtype {img.dtype}")
    if img.ndim == 2:
        img = img[..., None]
    if img.ndim != 3 or img.shape[2] not in (1, 3, 4) or img.shape[0] == 0 or img.shape[1] == 0:
        raise ValueError(f"encode_png needs an (H, W), (H, W, 3) or (H, W, 4) image, got {tuple(image.shape)}")
    H, W, C = img.shape
    color_type = {1: 0, 3: 2, 4: 6}[C]
    rows = np.concatenate([np.zeros((H, 1), np.uint8), np.ascontiguousarray(img).reshape(H, W * C)], 1)
    raw = rows.tobytes()  # filter type 0 on every row
    if compress is None:
        compress = deflate_is_safe()
    if compress:
        import zlib

        payload = zlib.compress(raw, 6)
    else:
        payload = _zlib_stored(raw)

    def chunk(tag: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + tag + body + struct.pack(">I", _crc32(body, _crc32(tag)))

    ihdr = struct.pack(">IIBBBBB", W, H, 8, color_type, 0, 0, 0)
    return _PNG_SIGNATURE + chunk(b"IHDR", ihdr) + chunk(b"IDAT", payload) + chunk(b"IEND", b"")


def write_png(path: PathLike, image: np.ndarray, compress: bool = None) -> Path:
    """Write a uint8 image as PNG, atomically, never through Pillow / libpng (see module
    docstring); ``compress`` as in :func:`encode_png`. Returns ``path``."""
    data = encode_png(image, compress)
    if compress is None and not deflate_is_safe():
        logger.debug("write_png %s: pycolmap loaded zlib first, writing uncompressed deflate blocks", path)
    return atomic_write_bytes(path, data)


def save_figure_png(fig, path: PathLike, dpi: float = 100) -> Path:
    """Render a matplotlib Figure with its Agg canvas and write it with :func:`write_png`
    (matplotlib's own ``savefig`` PNG path goes through Pillow's encoder)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = fig.canvas if isinstance(fig.canvas, FigureCanvasAgg) else FigureCanvasAgg(fig)
    fig.set_dpi(dpi)
    canvas.draw()
    rgba = np.asarray(canvas.buffer_rgba())
    return write_png(path, np.ascontiguousarray(rgba[..., :3]) if (rgba[..., 3] == 255).all() else rgba)
