"""Anisotropic keypoint noise (``refinement.keypoint_covariance``, localization/keypoint_noise.py):
structure tensors point across edges, the whitening is normalised, and on an exactly rendered
plane whose query keypoints slide along the image's edges the localizer's anisotropic BPnP
beats the isotropic one."""
import numpy as np
import pytest
import torch

from hloc_bpnp.features.patch_lk import structure_tensors
from hloc_bpnp.geometry import center_error, rotation_error_deg
from hloc_bpnp.localization import LocalizationResult, Localizer
from hloc_bpnp.localization.keypoint_noise import check_conf, default_conf, structure_tensor_sqrt_info
from hloc_bpnp.synthetic import look_at
from test_patch_alignment import CAM, _plane_scene, _render, _texture


def _edge_image(vertical: bool = True, n: int = 64) -> np.ndarray:
    img = np.zeros((n, n), np.uint8)
    if vertical:
        img[:, n // 2:] = 200
    else:
        img[n // 2:, :] = 200
    return img


def test_structure_tensor_points_across_the_edge():
    p = np.array([[32.0, 32.0]])
    Hv = structure_tensors(_edge_image(True), p, radius=5, blur_sigma=1.0)[0]
    Hh = structure_tensors(_edge_image(False), p, radius=5, blur_sigma=1.0)[0]
    # a vertical edge (intensity changes along x) is located in x only
    assert Hv[0, 0] > 100 * Hv[1, 1] and Hh[1, 1] > 100 * Hh[0, 0]
    assert Hv.dtype == torch.float64 and Hv.shape == (2, 2)
    assert structure_tensors(_edge_image(True), np.zeros((0, 2))).shape == (0, 2, 2)


def test_sqrt_info_is_normalised_and_floored():
    tex = _render(_texture(2), look_at((0.1, 0.0, -4.0), np.zeros(3), up=(0.0, -1.0, 0.0)))
    pts = np.random.default_rng(0).uniform(20, 220, (200, 2))
    L = structure_tensor_sqrt_info(tex, pts, radius=7, blur_sigma=0.5, floor=0.05)
    W = L.transpose(-1, -2) @ L
    tr = W.diagonal(dim1=-2, dim2=-1).sum(-1) / 2
    assert torch.isclose(tr.median(), torch.tensor(1.0, dtype=torch.float64), atol=1e-9)
    assert bool((torch.linalg.eigvalsh(W)[:, 0] > 0).all())
    big = structure_tensor_sqrt_info(tex, pts, floor=0.5)
    Wb = big.transpose(-1, -2) @ big
    ev = torch.linalg.eigvalsh(W)
    evb = torch.linalg.eigvalsh(Wb)
    # a larger floor makes the weights less anisotropic
    assert float((ev[:, 1] / ev[:, 0]).median()) > float((evb[:, 1] / evb[:, 0]).median())
    # a flat image: no direction is preferred, finite weights
    flat = structure_tensor_sqrt_info(np.full((64, 64), 90, np.uint8), np.array([[30.0, 30.0], [20.0, 40.0]]))
    assert torch.isfinite(flat).all()


def test_conf_is_checked():
    with pytest.raises(ValueError, match="unknown keys"):
        check_conf({**default_conf, "radus": 3})
    with pytest.raises(ValueError, match="method must be one of"):
        check_conf({**default_conf, "method": "hessian"})
    with pytest.raises(ValueError, match="floor"):
        check_conf({**default_conf, "floor": -1})


def _rings(n=512, period=18.0, centre=(200.0, 300.0)):
    """Concentric rings: a locally one-dimensional texture (every patch an edge) whose edge
    direction turns around the centre, so that the edges together still fix the pose."""
    ys, xs = torch.meshgrid(torch.arange(n, dtype=torch.float64), torch.arange(n, dtype=torch.float64), indexing="ij")
    r = ((xs - centre[0]) ** 2 + (ys - centre[1]) ** 2).sqrt()
    return (0.5 + 0.4 * torch.sin(2 * torch.pi * r / period))[None, None]


def test_localizer_anisotropic_refinement_beats_isotropic_on_edge_noise():
    map_, map_poses, query, observe = _plane_scene()
    qimage = _render(_rings(), query)
    feats, idx = observe(query)
    kp = feats["keypoints"].astype(np.float64)
    H = structure_tensors(qimage, kp, radius=7, blur_sigma=0.5)
    ev, vec = torch.linalg.eigh(H)
    assert float((ev[:, 1] / ev[:, 0]).median()) > 20  # the rings are edges everywhere
    along, across = vec[..., 0].cpu().numpy(), vec[..., 1].cpu().numpy()
    base = {"retrieval": {"num_keyframes": 4}, "ransac": {"max_error_px": 6.0}, "refinement": {"loss": "l2"}}
    plain = Localizer(map_, base)
    loc = Localizer(map_, {**base, "refinement": {"loss": "l2", "keypoint_covariance": {"method": "structure_tensor"}}})
    errs = {"iso": [], "aniso": []}
    for seed in range(6):
        # each query keypoint slides along its edge (the structure tensor's weak direction):
        # 1.5 px along it, 0.2 px across
        rng = np.random.default_rng(seed)
        f = dict(feats, keypoints=(kp + 1.5 * rng.normal(size=(len(kp), 1)) * along
                                   + 0.2 * rng.normal(size=(len(kp), 1)) * across).astype(np.float32))
        for key, lc in (("iso", plain), ("aniso", loc)):
            res = lc.localize_features(f, CAM, LocalizationResult(name=f"q{seed}"), image=qimage)
            assert res.success, (key, seed, res.failure_reason)
            errs[key].append((rotation_error_deg(res.pose.R, query.R).item(), center_error(res.pose, query).item()))
        assert "keypoint_covariance" in res.timings
    iso, aniso = np.median(errs["iso"], 0), np.median(errs["aniso"], 0)
    # measured: position 0.55x, rotation 0.95x (a plane's rotation is fixed by the points far
    # apart, whose edge directions the noise along the rings perturbs most)
    assert aniso[1] < 0.7 * iso[1] and aniso[0] < 1.25 * iso[0], (iso, aniso)
    # the option needs the query's pixels, and says so with the query's name
    with pytest.raises(ValueError, match="'q7'.*needs the query image"):
        loc.localize_features(feats, CAM, LocalizationResult(name="q7"))
    with pytest.raises(ValueError, match="'q8': image is 10x10 px but its camera is 320x240"):
        loc.localize_features(feats, CAM, LocalizationResult(name="q8"), image=np.zeros((10, 10), np.uint8))
    with pytest.raises(ValueError, match="keypoint_covariance.method must be one of"):
        Localizer(map_, {"refinement": {"keypoint_covariance": {"method": "tensor"}}})
