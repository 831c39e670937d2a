"""XFeatNet's fast NMS (separable window maxima) and its sub-pixel windows gathered at the
maxima: the same numbers as max_pool2d and F.unfold, which they replace for speed."""
import pytest
import torch
import torch.nn.functional as F

from hloc_bpnp.features.xfeat_net import XFeatNet, window_max


@pytest.mark.parametrize("kernel", [1, 3, 5, 7, 4])
def test_window_max_equals_max_pool2d(kernel):
    g = torch.Generator().manual_seed(kernel)
    x = torch.rand(2, 1, 37, 41, generator=g)
    x[0, 0, :3, :3] = 2.0  # a plateau at the border (ties, padding)
    x[1, 0, 10:14, 20] = -1.0
    assert torch.equal(window_max(x, kernel), F.max_pool2d(x, kernel, stride=1, padding=kernel // 2))


@pytest.mark.parametrize("radius", [1, 2])
def test_subpixel_keypoints_are_the_soft_argmax_of_the_unfolded_window(radius):
    """Keypoints = integer maximum + soft-argmax over the (2r+1)^2 window of the heatmap, the
    window read from F.unfold of the zero-padded heatmap (the previous implementation)."""
    torch.manual_seed(0)
    net = XFeatNet({"max_keypoints": 300, "subpixel_radius": radius, "subpixel_in_cell": False,
                    "detection_threshold": 0.0}).eval()
    img = torch.rand(1, 1, 96, 128)
    with torch.no_grad():
        out = net(img, return_maps=True)
    heat, centers = out["heatmap"], out["centers"]
    H, W = heat.shape[-2:]
    idx = centers[..., 1] * W + centers[..., 0]
    patches = F.unfold(F.pad(heat, (radius,) * 4, value=0.0), 2 * radius + 1)
    p = patches.gather(2, idx[:, None].expand(-1, patches.shape[1], -1))
    w = torch.softmax(torch.log(p.clamp_min(1e-12)), dim=1)
    expected = centers.to(heat.dtype) + torch.einsum("bwk,wd->bkd", w, net.window)
    v = out["valid"]
    assert v.sum() > 50
    assert torch.allclose(out["keypoints"][v], expected[v], atol=1e-6)
