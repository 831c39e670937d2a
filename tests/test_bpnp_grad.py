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


# ------------------------------------------------------------ analytic second-order terms
@pytest.mark.parametrize("loss", ["l2", "huber", "cauchy"])
@pytest.mark.parametrize("kind", ["K", "PINHOLE", "SIMPLE_PINHOLE"])
def test_analytic_hessian_and_mixed_terms_match_autograd(loss, kind):
    """hessian.py's closed-form H and -d(lam^T g)/dtheta against double-backward autograd of
    the exact objective, away from the optimum (all terms non-zero) and with weights."""
    from hloc_bpnp.bpnp.hessian import (camera_matrix, params_grad_from_K, pinhole_gradient_hessian,
                                        pinhole_mixed_vjp, pinhole_terms)
    from hloc_bpnp.bpnp.implicit import objective_gradient_hessian
    from hloc_bpnp.geometry import so3_exp

    B, N = 3, 15
    pb, w = _problem(B, N, seed=8)
    g = torch.Generator().manual_seed(80)
    x = pb.points2d + 4 * torch.randn(pb.points2d.shape, generator=g, dtype=torch.float64)  # Huber tails
    P = pb.pose + 0.01 * torch.randn(B, 6, generator=g, dtype=torch.float64)
    R, t = so3_exp(P[:, :3]), P[:, 3:]
    if kind == "K":
        cam, model = pb.K.clone(), None
        cam[:, 0, 1] = 3.0  # skew, and a non-trivial last row
        cam[:, 2, 0] = 1e-4
    elif kind == "PINHOLE":
        cam, model = torch.stack([pb.K[:, 0, 0], pb.K[:, 1, 1], pb.K[:, 0, 2], pb.K[:, 1, 2]], -1), kind
    else:
        cam, model = torch.stack([pb.K[:, 0, 0], pb.K[:, 0, 2], pb.K[:, 1, 2]], -1), kind
    spec = dict(R=R, t=t, kind="K" if kind == "K" else "camera", model=model, loss=loss, loss_scale=2.0)
    leaves = [a.clone().requires_grad_(True) for a in (x, pb.points3d, cam, w)]
    g_ref, H_ref = objective_gradient_hessian(spec, *leaves, exact=True)
    lam = torch.randn(B, 6, generator=g, dtype=torch.float64)
    mixed_ref = torch.autograd.grad(-(g_ref * lam).sum(), leaves)

    T = pinhole_terms(R, t, pb.points3d, x, camera_matrix(spec["kind"], model, cam), w, loss, 2.0)
    g_an, H_an = pinhole_gradient_hessian(T)
    gx, gX, gK, gw = pinhole_mixed_vjp(T, lam)
    mixed = (gx, gX, params_grad_from_K(spec["kind"], model, gK), gw)

    def rel(a, b):
        return float((a - b).abs().max() / b.abs().max())

    assert rel(g_an, g_ref.detach()) < 1e-10
    assert rel(H_an, H_ref) < 1e-10
    for name, a, b in zip(("points2d", "points3d", "camera", "weights"), mixed, mixed_ref):
        assert a.shape == b.shape and rel(a, b) < 1e-10, (name, rel(a, b))
    # the robust curvature terms matter: dropping them is far off
    _, H_gn = pinhole_gradient_hessian(T, exact=False)
    assert rel(H_gn, H_ref) > 1e-4


@pytest.mark.parametrize("loss", ["l2", "cauchy"])
def test_analytic_backward_equals_autograd_backward(loss, monkeypatch):
    """End to end: the analytic layer and the autograd fallback give the same gradients (shared
    points3d and K, with weights), both for the exact and the Gauss-Newton Hessian."""
    import hloc_bpnp.bpnp.implicit as implicit

    pb, w = _problem(B=4, N=20, seed=9)
    X, K = pb.points3d[0], pb.K[0]
    h = Pose.from_aa(pb.pose).transform(X.expand(4, 20, 3)) @ K.T
    x = h[..., :2] / h[..., 2:] + torch.randn(4, 20, 2, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    v = torch.randn(4, 6, generator=torch.Generator().manual_seed(90), dtype=torch.float64)

    def grads(exact):
        leaves = [a.clone().requires_grad_(True) for a in (x, X, K, w)]
        pose = solve_pnp(*leaves[:3], weights=leaves[3], loss=loss, loss_scale=2.0, exact=exact).pose
        return torch.autograd.grad((pose * v).sum(), leaves)

    for exact in (True, False):
        fast = grads(exact)
        monkeypatch.setattr(implicit, "supports_analytic", lambda kind, model: False)
        slow = grads(exact)
        monkeypatch.undo()
        for a, b in zip(fast, slow):
            assert a.shape == b.shape and (a - b).abs().max() <= 1e-10 * b.abs().max()


@pytest.mark.parametrize("model", ["PINHOLE", "SIMPLE_PINHOLE"])
def test_gradcheck_pinhole_camera_params(model):
    """The analytic backward's chain from dL/dK to COLMAP pinhole parameters."""
    pb, _ = _problem(B=1, N=10, seed=10)
    K = pb.K[0]
    if model == "PINHOLE":
        params = torch.stack([K[0, 0], K[1, 1], K[0, 2], K[1, 2]])
    else:
        params = torch.stack([K[0, 0], K[0, 2], K[1, 2]])
    x = pb.points2d[0]
    X = pb.points3d[0].clone().requires_grad_(True)
    leaf = params.clone().requires_grad_(True)

    def f(p, pts):
        return solve_pnp(x, pts, Camera(model, 640, 480, p)).pose

    assert torch.autograd.gradcheck(f, (leaf, X), eps=1e-6, atol=1e-7, rtol=1e-5)
