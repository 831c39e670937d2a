import numpy as np
import pytest
import torch
from PIL import Image

from hloc_bpnp.io.image import ImageReadError, image_to_gray_tensor, image_to_tensor, read_image


def test_read_png_rgb_and_gray(tmp_path):
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 256, (17, 23, 3), dtype=np.uint8)
    p = tmp_path / "a.png"
    Image.fromarray(arr).save(p)
    rgb = read_image(p)
    assert rgb.shape == (17, 23, 3) and rgb.dtype == np.uint8
    np.testing.assert_array_equal(rgb, arr)
    gray = read_image(str(p), grayscale=True)
    assert gray.shape == (17, 23) and gray.dtype == np.uint8
    expected = np.asarray(Image.fromarray(arr).convert("L"))
    np.testing.assert_array_equal(gray, expected)


def test_read_gray_png_as_rgb(tmp_path):
    arr = np.arange(12 * 8, dtype=np.uint8).reshape(12, 8)
    p = tmp_path / "g.png"
    Image.fromarray(arr).save(p)
    rgb = read_image(p)
    assert rgb.shape == (12, 8, 3)
    np.testing.assert_array_equal(rgb[..., 1], arr)


def test_read_16bit_png_scaled(tmp_path):
    arr = (np.arange(10 * 6, dtype=np.uint16).reshape(10, 6) * 1000)
    p = tmp_path / "d.png"
    Image.fromarray(arr).save(p)
    g = read_image(p, grayscale=True)
    assert g.dtype == np.uint8
    assert g.max() > 200 and g[0, 0] == 0  # scaled, not clipped to 255 everywhere


@pytest.mark.parametrize("orientation", [6, 8, 3])
def test_exif_orientation_applied(tmp_path, orientation):
    # Stored 40 wide x 20 high, left half red, right half blue.
    arr = np.zeros((20, 40, 3), dtype=np.uint8)
    arr[:, :20, 0] = 255
    arr[:, 20:, 2] = 255
    im = Image.fromarray(arr)
    exif = Image.Exif()
    exif[0x0112] = orientation
    p = tmp_path / "rot.jpg"
    im.save(p, exif=exif.tobytes(), quality=95)
    out = read_image(p)
    red = out[..., 0] > 128
    if orientation == 3:  # rotate 180: red on the right
        assert out.shape == (20, 40, 3)
        assert red[:, 25:].all() and not red[:, :15].any()
    else:
        assert out.shape == (40, 20, 3)
        if orientation == 6:  # displayed = stored rotated 90 deg clockwise: left -> top
            assert red[:15].all() and not red[25:].any()
        else:  # 8: rotated 90 deg counter-clockwise: left -> bottom
            assert red[25:].all() and not red[:15].any()


def test_missing_and_corrupt_files_name_the_file(tmp_path):
    missing = tmp_path / "nope.jpg"
    with pytest.raises(FileNotFoundError, match="nope.jpg"):
        read_image(missing)
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"definitely not a jpeg")
    with pytest.raises(ImageReadError, match="bad.jpg"):
        read_image(bad)
    # A truncated real JPEG is an error too, not a silently half-grey image.
    good = tmp_path / "good.jpg"
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(good)
    trunc = tmp_path / "trunc.jpg"
    trunc.write_bytes(good.read_bytes()[:200])
    with pytest.raises(ImageReadError, match="trunc.jpg"):
        read_image(trunc)
    assert issubclass(ImageReadError, ValueError)


def test_image_to_gray_tensor_is_the_weighted_sum_of_image_to_tensor_bit_for_bit():
    """The extractors' fast grayscale path (per channel plane, uint8 RGB) equals the generic one
    (3-channel float image, then the luma sum) exactly, on contiguous and strided arrays."""
    rng = np.random.default_rng(3)
    arr = rng.integers(0, 256, (61, 90, 3), dtype=np.uint8)
    arr[0, 0] = 255
    for im in (arr, arr[::-1, ::2], arr[5:40, 7:70]):
        t = image_to_tensor(im)
        expected = 0.299 * t[:, :1] + 0.587 * t[:, 1:2] + 0.114 * t[:, 2:3]
        got = image_to_gray_tensor(im)
        assert got.shape == expected.shape == (1, 1) + im.shape[:2] and got.dtype == torch.float32
        assert torch.equal(got, expected)
    # other inputs take the generic path: grayscale as is, float RGB through the same sum
    assert torch.equal(image_to_gray_tensor(arr[..., 1]), image_to_tensor(arr[..., 1]))
    f = torch.rand(3, 8, 9)
    assert torch.equal(image_to_gray_tensor(f), 0.299 * f[None, :1] + 0.587 * f[None, 1:2] + 0.114 * f[None, 2:])
    with pytest.raises(ValueError, match="shape"):
        image_to_gray_tensor(np.zeros((5, 7, 4), dtype=np.uint8))


def test_image_to_tensor_shapes_and_range():
    arr = np.full((5, 7, 3), 255, dtype=np.uint8)
    arr[0, 0] = 0
    t = image_to_tensor(arr)
    assert t.shape == (1, 3, 5, 7) and t.dtype == torch.float32
    assert t.max() == 1.0 and t[0, :, 0, 0].eq(0).all()
    assert image_to_tensor(arr[..., 0]).shape == (1, 1, 5, 7)
    f = torch.rand(5, 7)
    assert torch.equal(image_to_tensor(f)[0, 0], f)
    assert image_to_tensor(torch.rand(1, 1, 5, 7)).shape == (1, 1, 5, 7)
    assert image_to_tensor(torch.rand(3, 5, 7)).shape == (1, 3, 5, 7)
    with pytest.raises(ValueError, match="shape"):
        image_to_tensor(np.zeros((5, 7, 4), dtype=np.uint8))
    with pytest.raises(ValueError):
        image_to_tensor(torch.rand(2, 3, 5, 7))
