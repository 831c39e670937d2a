"""The image extent in hloc_bpnp/geometry/camera.py: clamp_to_image keeps COLMAP pixels in
[0, W] x [0, H]; Camera.project_with_valid's margin keeps them that far inside."""
import numpy as np
import torch


def test_clamp_to_image_keeps_points_in_the_colmap_extent():
    from hloc_bpnp.geometry import clamp_to_image

    xy = [[-0.94, 5.0], [640.3, 480.17], [12.5, 7.25]]
    want = [[0.0, 5.0], [640.0, 480.0], [12.5, 7.25]]
    np.testing.assert_allclose(clamp_to_image(np.array(xy), 640, 480), want)
    out = clamp_to_image(torch.tensor(xy, dtype=torch.float64), 640, 480)
    assert isinstance(out, torch.Tensor) and out.dtype == torch.float64
    np.testing.assert_allclose(out.cpu().numpy(), want)


def test_project_with_valid_margin():
    from hloc_bpnp.geometry import Camera

    cam = Camera.from_K(torch.tensor([[100.0, 0, 50], [0, 100.0, 40], [0, 0, 1]], dtype=torch.float64), 100, 80)
    # pixels x = 2, 50, 97 (y = 40) in front, and one behind the camera
    p = torch.tensor([[-0.48, 0.0, 1.0], [0.0, 0.0, 1.0], [0.47, 0.0, 1.0], [0.0, 0.0, -1.0]], dtype=torch.float64)
    x, v = cam.project_with_valid(p)
    np.testing.assert_allclose(x[:3, 0].cpu().numpy(), [2.0, 50.0, 97.0])
    assert v.tolist() == [True, True, True, False]
    assert cam.project_with_valid(p, margin=5.0)[1].tolist() == [False, True, False, False]
