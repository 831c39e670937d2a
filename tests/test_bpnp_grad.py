"""BPnP backward: implicit gradients against finite differences of the whole solver."""
import pytest
import torch

from hloc_bpnp.bpnp import bpnp, solve_pnp
from hloc_bpnp.bpnp.reference import depth_weighted_grad, unrolled_pose
from hloc_bpnp.bpnp.testing import random_problem
from hloc_bpnp.geometry import Camera, Pose


@pytest.fixture(autouse=True, scope="module")
def _single_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _problem(B=2, N=10, seed=0):
    # 1 px noise, depth spread +-25% around 8 units
    pb = random_problem(B, N, noise=1.0, depth=8.0, spread=2.0, seed=seed)
    w = 0.5 + torch.rand(B, N, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return pb, w


@pytest.mark.parametrize("which", ["points2d", "points3d", "K", "weights"])
def test_gradcheck_against_finite_differences(which):
    pb, w = _problem()
    args = {"points2d": pb.points2d, "points3d": pb.points3d, "K": pb.K, "weights": w}
    leaf = args[which].clone().requires_grad_(True)

    def f(v):
        a = dict(args)
        a[which] = v
        return bpnp(a["points2d"], a["points3d"], a["K"], weights=a["weights"])

    assert torch.autograd.gradcheck(f, (leaf,), eps=1e-6, atol=1e-7, rtol=1e-5)


def test_gradcheck_with_fixed_pose_init_and_robust_loss():
    pb, _ = _problem(B=1, N=12, seed=1)
    x = pb.points2d.clone()
    x[0, 0] += 15.0  # one outlier in the Cauchy tail
    x.requires_grad_(True)
    init = pb.pose + 0.01

    def f(v):
        return solve_pnp(v, pb.points3d, pb.K, pose_init=init, loss="cauchy", loss_scale=3.0).pose

    assert torch.autograd.gradcheck(f, (x,), eps=1e-6, atol=1e-7, rtol=1e-5)


def test_gradcheck_distorted_camera_params():
    g = torch.Generator().manual_seed(3)
    params = torch.tensor([480.0, 470.0, 330.0, 250.0, -0.12, 0.03, 0.001, -0.002], dtype=torch.float64)
    X = (torch.rand(1, 10, 3, generator=g, dtype=torch.float64) * 2 - 1) * 2
    P = torch.tensor([[0.2, -0.3, 0.1, 0.2, -0.1, 7.0]], dtype=torch.float64)
    x = Camera("OPENCV", 640, 480, params).project(Pose.from_aa(P).transform(X))
    x = x + torch.randn(x.shape, generator=g, dtype=torch.float64)
    leaf = params.clone().requires_grad_(True)

    def f(p):
        return solve_pnp(x, X, Camera("OPENCV", 640, 480, p)).pose

    assert torch.autograd.gradcheck(f, (leaf,), eps=1e-7, atol=1e-7, rtol=1e-5)


def _fd_directional(f, x, d, eps=1e-5):
    return (f(x + eps * d) - f(x - eps * d)) / (2 * eps)


def test_depth_weighted_gradient_differs_ours_matches_fd():
    pb, _ = _problem(B=1, N=12, seed=4)
    v = torch.tensor([[0.3, -0.2, 0.5, 1.0, -0.4, 0.7]], dtype=torch.float64)
    X = pb.points3d.clone().requires_grad_(True)
    pose = bpnp(pb.points2d, X, pb.K)
    (ours,) = torch.autograd.grad((pose * v).sum(), X)
    dw = depth_weighted_grad(pose, v, pb.points2d, pb.points3d, pb.K)[1]
    d = torch.randn(X.shape, generator=torch.Generator().manual_seed(40), dtype=torch.float64)
    fd = _fd_directional(lambda a: (bpnp(pb.points2d, a, pb.K) * v).sum(), pb.points3d, d)
    err_ours = abs((ours * d).sum() - fd) / abs(fd)
    err_dw = abs((dw * d).sum() - fd) / abs(fd)
    assert err_ours < 1e-6, err_ours
    assert err_dw > 1e-3, err_dw
    assert (ours - dw).norm() / ours.norm() > 1e-3


def test_gauss_newton_backward_is_close_but_not_exact():
    pb, _ = _problem(B=2, N=20, seed=5)
    x = pb.points2d.clone().requires_grad_(True)
    g = []
    for exact in (True, False):
        (gx,) = torch.autograd.grad(solve_pnp(x, pb.points3d, pb.K, exact=exact).pose.sum(), x)
        g.append(gx)
    rel = (g[0] - g[1]).norm() / g[0].norm()
    assert 1e-9 < rel < 0.05


def test_unrolled_converges_to_implicit_gradient():
    pb, _ = _problem(B=2, N=20, seed=6)
    x = pb.points2d.clone().requires_grad_(True)
    (g_ift,) = torch.autograd.grad(bpnp(x, pb.points3d, pb.K).sum(), x)
    (g_unr,) = torch.autograd.grad(unrolled_pose(pb.pose, x, pb.points3d, pb.K, iters=15).sum(), x)
    assert (g_ift - g_unr).norm() / g_ift.norm() < 1e-8


def test_float32_backward_finite_and_close():
    pb, _ = _problem(B=3, N=30, seed=7)
    x64 = pb.points2d.clone().requires_grad_(True)
    (g64,) = torch.autograd.grad(bpnp(x64, pb.points3d, pb.K).sum(), x64)
    x32 = pb.points2d.float().requires_grad_(True)
    (g32,) = torch.autograd.grad(bpnp(x32, pb.points3d.float(), pb.K.float()).sum(), x32)
    assert g32.dtype == torch.float32
    assert (g32.double() - g64).norm() / g64.norm() < 1e-4
