"""``solve_pnp(..., sqrt_info=L)``: anisotropic keypoint noise (whitened residuals L_i r_i)."""
import pytest
import torch

from hloc_bpnp.bpnp import solve_pnp
from hloc_bpnp.bpnp.testing import random_problem
from hloc_bpnp.geometry import Pose, pose_error


def _sqrt_info_from_cov(cov: torch.Tensor) -> torch.Tensor:
    """(..., 2, 2) covariances -> L with L^T L = cov^-1."""
    return torch.linalg.cholesky(torch.linalg.inv(cov)).transpose(-1, -2)


def test_identity_and_scalar_sqrt_info_equal_the_isotropic_and_weighted_solves():
    pb = random_problem(3, 40, noise=1.0, seed=3)
    init = pb.pose + 0.01
    base = solve_pnp(pb.points2d, pb.points3d, pb.K, pose_init=init)
    eye = torch.eye(2, dtype=torch.float64).expand(3, 40, 2, 2)
    same = solve_pnp(pb.points2d, pb.points3d, pb.K, pose_init=init, sqrt_info=eye)
    assert torch.allclose(same.pose, base.pose, atol=1e-10) and torch.allclose(same.cost, base.cost)
    # L = s_i I is the scalar weight s_i^2 (L2 loss)
    s = 0.5 + torch.rand(3, 40, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    weighted = solve_pnp(pb.points2d, pb.points3d, pb.K, pose_init=init, weights=s ** 2)
    whitened = solve_pnp(pb.points2d, pb.points3d, pb.K, pose_init=init, sqrt_info=s[..., None, None] * eye)
    assert torch.allclose(whitened.pose, weighted.pose, atol=1e-10)
    # residuals stay in pixels
    assert torch.allclose(whitened.residuals, weighted.residuals, atol=1e-8)


def test_true_anisotropic_covariances_beat_the_isotropic_solve():
    """Keypoints with 2 px of noise along a random direction per point and 0.1 px across it
    (edge-like): the solve whitened by the true covariances is several times more accurate."""
    B, N = 16, 60
    g = torch.Generator().manual_seed(1)
    pb = random_problem(B, N, noise=0.0, seed=5)
    ang = torch.rand(B, N, generator=g, dtype=torch.float64) * torch.pi
    u = torch.stack([ang.cos(), ang.sin()], -1)
    v = torch.stack([-ang.sin(), ang.cos()], -1)
    x = pb.clean2d + 2.0 * torch.randn(B, N, 1, generator=g, dtype=torch.float64) * u \
        + 0.1 * torch.randn(B, N, 1, generator=g, dtype=torch.float64) * v
    cov = 4.0 * u[..., :, None] * u[..., None, :] + 0.01 * v[..., :, None] * v[..., None, :]
    init = pb.pose + 0.005
    iso = solve_pnp(x, pb.points3d, pb.K, pose_init=init)
    ani = solve_pnp(x, pb.points3d, pb.K, pose_init=init, sqrt_info=_sqrt_info_from_cov(cov))
    assert bool(ani.valid.all())
    gt = Pose.from_aa(pb.pose)
    e_iso = pose_error(Pose.from_aa(iso.pose), gt)[0]
    e_ani = pose_error(Pose.from_aa(ani.pose), gt)[0]
    assert float(e_ani.median()) < 0.3 * float(e_iso.median()), (e_ani.median(), e_iso.median())
    # the whitened cost is chi-square with 2N - 6 degrees of freedom: sigma^2 near 1
    assert 0.7 < float(ani.sigma2.median()) < 1.3


def test_sqrt_info_unbatched_with_a_robust_loss():
    pb = random_problem(1, 30, noise=0.5, seed=7)
    L = torch.eye(2, dtype=torch.float64).expand(30, 2, 2) * 2.0
    res = solve_pnp(pb.points2d[0], pb.points3d[0], pb.K[0], pose_init=pb.pose[0] + 0.01, loss="cauchy",
                    loss_scale=2.0, sqrt_info=L)
    ref = solve_pnp(pb.points2d[0], pb.points3d[0], pb.K[0], pose_init=pb.pose[0] + 0.01, loss="cauchy",
                    loss_scale=1.0, weights=torch.full((30,), 4.0, dtype=torch.float64))
    # Cauchy: rho_2(4 s) = 4 log(1 + s) = 4 rho_1(s), the same cost as weight 4 at scale 1 px
    assert res.pose.shape == (6,) and torch.allclose(res.pose, ref.pose, atol=1e-9)


def test_sqrt_info_refuses_bad_shapes_and_gradients():
    pb = random_problem(2, 20, noise=0.5, seed=9)
    with pytest.raises(ValueError, match=r"sqrt_info must have shape \((2, 20|B, N), 2, 2\)"):
        solve_pnp(pb.points2d, pb.points3d, pb.K, sqrt_info=torch.ones(2, 20, 2, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"sqrt_info must have shape \(2, 20, 2, 2\), got \(2, 19, 2, 2\)"):
        solve_pnp(pb.points2d, pb.points3d, pb.K, sqrt_info=torch.ones(2, 19, 2, 2, dtype=torch.float64))
    with pytest.raises(ValueError, match="sqrt_info.*NaN"):
        solve_pnp(pb.points2d, pb.points3d, pb.K,
                  sqrt_info=torch.full((2, 20, 2, 2), float("nan"), dtype=torch.float64))
    x = pb.points2d.clone().requires_grad_(True)
    with pytest.raises(ValueError, match="sqrt_info is forward-only"):
        solve_pnp(x, pb.points3d, pb.K, sqrt_info=torch.eye(2, dtype=torch.float64).expand(2, 20, 2, 2))
