"""clamp_to_image (hloc_bpnp/geometry/camera.py): COLMAP pixels kept in the image extent."""
import numpy as np
import torch


def test_clamp_to_image_keeps_points_in_the_colmap_extent():
    from hloc_bpnp.geometry import clamp_to_image

    xy = [[-0.94, 5.0], [640.3, 480.17], [12.5, 7.25]]
    want = [[0.0, 5.0], [640.0, 480.0], [12.5, 7.25]]
    np.testing.assert_allclose(clamp_to_image(np.array(xy), 640, 480), want)
    out = clamp_to_image(torch.tensor(xy, dtype=torch.float64), 640, 480)
    assert isinstance(out, torch.Tensor) and out.dtype == torch.float64
    np.testing.assert_allclose(out.numpy(), want)
