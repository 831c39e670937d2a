"""The fused inference copy of XFeat's backbone (``features/inference.py``, ``XFeatNet.backbone``):
batch norms folded into the convolutions, channels last, rebuilt when the weights change."""
import torch

from hloc_bpnp.features.xfeat_net import XFeatNet


def _perturbed_running_stats(net: XFeatNet, seed: int) -> None:
    """Non-trivial batch-norm statistics and weights (a random network's are 0 / 1)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in net.net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)


def test_fused_inference_backbone_equals_the_network_and_follows_its_weights():
    """Without gradients in eval mode the backbone runs a copy with batch norms folded into the
    convolutions (channels last): the same outputs within float rounding; the copy is rebuilt
    when the weights change, and it is in no state dict."""
    torch.manual_seed(1)
    net = XFeatNet({"max_keypoints": 200}).eval()
    _perturbed_running_stats(net, 0)
    img = torch.rand(1, 1, 96, 128)
    keys = set(net.state_dict())
    with torch.inference_mode():
        fused = net.backbone(img)
    with torch.no_grad():
        net.conf["fused_inference"] = False
        plain = net.backbone(img)
        net.conf["fused_inference"] = True
    for f, p in zip(fused, plain):
        assert f.is_contiguous() and torch.allclose(f, p, atol=1e-5, rtol=1e-4), (f - p).abs().max()
    assert set(net.state_dict()) == keys
    # new weights (load_state_dict copies in place): the fused copy follows
    other = XFeatNet({"max_keypoints": 200}).eval()
    _perturbed_running_stats(other, 1)
    net.load_state_dict(other.state_dict())
    with torch.inference_mode():
        fused2 = net.backbone(img)
        plain2 = other.net(img)
    assert not torch.allclose(fused2[0], fused[0], atol=1e-3)
    for f, p in zip(fused2, plain2):
        assert torch.allclose(f, p, atol=1e-5, rtol=1e-4), (f - p).abs().max()
    # training and gradients use the network itself
    net.train()
    assert net.backbone(img)[0].requires_grad


def test_fused_inference_is_not_a_feature_preset_key():
    """The fused backbone changes no result, so it is not part of the XFeat feature preset: maps
    saved before it (whose saved config is compared with the requested one) stay reusable."""
    from hloc_bpnp.features.learned import XFeat

    assert "fused_inference" not in XFeat.default_conf
    assert XFeatNet.default_conf["fused_inference"] is True
