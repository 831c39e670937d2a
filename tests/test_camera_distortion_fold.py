"""Unprojection beyond the distortion's fold is flagged (NaN + mask), never a
wrong ray; callers (BPnP start, Sampson errors) cope."""
import pytest
import torch

from hloc_bpnp.geometry import Camera, Pose

CAM = Camera("SIMPLE_RADIAL", 3000, 2000, torch.tensor([1000.0, 1500.0, 1000.0, -0.2], dtype=torch.float64))


def test_simple_radial_corner_beyond_fold_is_nan():
    x = torch.tensor([[0.5, 0.5], [2999.5, 1999.5], [1500.0, 1000.0], [2000.0, 1500.0]], dtype=torch.float64)
    uv, valid = CAM.unproject_with_valid(x)
    assert valid.tolist() == [False, False, True, True]
    assert torch.isnan(uv[:2]).all()  # was (+2.376, +1.584): the opposite quadrant
    assert torch.isnan(CAM.unproject(x)[0]).all() and torch.isnan(CAM.unproject_rays(x)[0, :2]).all()
    # valid ones round-trip exactly
    back = CAM.project(torch.cat([uv[2:], torch.ones(2, 1, dtype=torch.float64)], -1))
    assert (back - x[2:]).abs().max() < 1e-9


def test_fold_boundary_simple_radial():
    """Radius r_d = r (1 + k r^2) peaks at r^2 = -1 / (3k): inside it is invertible."""
    k = -0.2
    r_max = (-1 / (3 * k)) ** 0.5
    rd_max = r_max * (1 + k * r_max ** 2)
    for frac, ok in [(0.999, True), (1.001, False)]:
        x = torch.tensor([[1500.0 + 1000.0 * frac * rd_max, 1000.0]], dtype=torch.float64)
        uv, valid = CAM.unproject_with_valid(x)
        assert bool(valid[0]) == ok
        if ok:
            assert 0 < uv[0, 0] < r_max and abs(uv[0, 1]) < 1e-12


@pytest.mark.parametrize("model,params", [
    ("RADIAL", [500.0, 320.0, 240.0, -0.5, 0.05]),
    ("OPENCV", [500.0, 500.0, 320.0, 240.0, -0.6, 0.05, 0.001, 0.001]),
])
def test_no_wrong_rays_on_a_dense_grid(model, params):
    """Every ray returned reprojects onto its pixel and lies in the same half-plane."""
    cam = Camera(model, 1600, 1200, torch.tensor(params, dtype=torch.float64))
    g = torch.stack(torch.meshgrid(torch.linspace(0.5, 1599.5, 60, dtype=torch.float64),
                                   torch.linspace(0.5, 1199.5, 45, dtype=torch.float64), indexing="xy"), -1)
    x = g.reshape(-1, 2)
    uv, valid = cam.unproject_with_valid(x)
    assert (~valid).any() and valid.any()
    assert torch.isnan(uv[~valid]).all() and torch.isfinite(uv[valid]).all()
    back = cam.project(torch.cat([uv[valid], torch.ones(int(valid.sum()), 1, dtype=torch.float64)], -1))
    assert (back - x[valid]).abs().max() < 1e-6
    d = cam.normalize(x[valid])
    assert ((uv[valid] * d).sum(-1) >= 0).all()


def test_gradient_finite_with_invalid_points():
    x = torch.tensor([[0.5, 0.5], [2000.0, 1500.0]], dtype=torch.float64, requires_grad=True)
    uv = CAM.unproject(x)
    uv[1].sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad[0].abs().max() == 0


def test_bpnp_start_and_sampson_cope_with_pixels_beyond_the_fold():
    from hloc_bpnp.bpnp import solve_pnp
    from hloc_bpnp.mapping.verification import sampson_errors

    g = torch.Generator().manual_seed(0)
    Xc = torch.cat([(torch.rand(40, 2, generator=g, dtype=torch.float64) * 2 - 1) * 0.5,
                    4 + torch.rand(40, 1, generator=g, dtype=torch.float64)], -1)
    pose = Pose.from_aa(torch.tensor([0.1, -0.2, 0.05, 0.3, -0.1, 0.5], dtype=torch.float64))
    X = pose.inv().transform(Xc)
    x = CAM.project(Xc)
    x[:3] = torch.tensor([[0.5, 0.5], [2999.5, 0.5], [0.5, 1999.5]], dtype=torch.float64)  # corrupt: no ray
    assert not CAM.unproject_with_valid(x)[1][:3].any()
    w = torch.ones(40, dtype=torch.float64)
    w[:3] = 0  # the caller drops them from the cost, the start must ignore their NaN rays
    res = solve_pnp(x, X, CAM, weights=w)
    assert bool(res.valid) and (res.pose - pose.aa_t()).abs().max() < 1e-8
    err = sampson_errors(CAM, CAM, pose, Pose.from_aa(torch.tensor([0.1, -0.2, 0.05, 1.3, -0.1, 0.5],
                                                                   dtype=torch.float64)), x, x)
    assert torch.isinf(err[:3]).all() and torch.isfinite(err[3:]).all()
