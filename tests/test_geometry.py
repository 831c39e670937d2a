"""Camera models vs pycolmap, pose algebra and conversions, error metrics, plane-induced warps."""
import math

import numpy as np
import pycolmap
import pytest
import torch

from hloc_bpnp.geometry import (
    Camera,
    Pose,
    center_error,
    is_rotation,
    plane_induced_affine,
    project_to_so3,
    rotation_error_deg,
    so3_exp,
    so3_log,
)

MODELS = {
    "SIMPLE_PINHOLE": [520.0, 321.5, 239.25],
    "PINHOLE": [500.0, 510.0, 320.0, 240.0],
    "SIMPLE_RADIAL": [500.0, 320.0, 240.0, 0.08],
    "RADIAL": [500.0, 320.0, 240.0, 0.1, -0.05],
    "OPENCV": [500.0, 510.0, 320.0, 240.0, 0.1, -0.05, 0.001, 0.002],
}


def _points(n=200, seed=0):
    g = torch.Generator().manual_seed(seed)
    p = torch.rand(n, 3, generator=g, dtype=torch.float64) * 2 - 1
    p[:, :2] *= 0.5
    p[:, 2] = p[:, 2].abs() + 1.0
    return p


@pytest.mark.parametrize("model", list(MODELS))
def test_project_matches_pycolmap(model):
    cam = Camera(model, 640, 480, torch.tensor(MODELS[model], dtype=torch.float64))
    pc = cam.to_pycolmap()
    p = _points()
    ours = cam.project(p).numpy()
    ref = pc.img_from_cam(p.numpy())
    assert np.abs(ours - ref).max() < 1e-9


@pytest.mark.parametrize("model", list(MODELS))
def test_unproject_roundtrip_and_pycolmap(model):
    cam = Camera(model, 640, 480, torch.tensor(MODELS[model], dtype=torch.float64))
    p = _points()
    x = cam.project(p)
    uv = cam.unproject(x)
    assert (uv - p[:, :2] / p[:, 2:]).abs().max() < 1e-12
    ref = cam.to_pycolmap().cam_from_img(x.numpy())
    assert np.abs(uv.numpy() - ref).max() < 1e-9


def test_camera_pycolmap_roundtrip():
    for model, params in MODELS.items():
        pc = pycolmap.Camera(model=model, width=640, height=480, params=params)
        cam = Camera.from_pycolmap(pc)
        assert cam.model == model and cam.width == 640 and cam.height == 480
        assert np.allclose(cam.to_pycolmap().params, pc.params)


@pytest.mark.parametrize("model", ["RADIAL", "OPENCV"])
def test_project_unproject_gradients(model):
    params = torch.tensor(MODELS[model], dtype=torch.float64, requires_grad=True)
    p = _points(6).requires_grad_(True)

    def proj(params, p):
        return Camera(model, 640, 480, params).project(p)

    def unproj(params, x):
        return Camera(model, 640, 480, params).unproject(x)

    assert torch.autograd.gradcheck(proj, (params, p))
    x = proj(params, p).detach().requires_grad_(True)
    assert torch.autograd.gradcheck(unproj, (params, x))


def test_batched_cameras():
    params = torch.tensor([MODELS["OPENCV"], MODELS["OPENCV"]], dtype=torch.float64)
    params[1, 0] = 600
    cam = Camera("OPENCV", 640, 480, params)
    p = _points(10).expand(2, 10, 3)
    x = cam.project(p)
    assert x.shape == (2, 10, 2)
    assert not torch.allclose(x[0], x[1])
    assert torch.allclose(Camera("OPENCV", 640, 480, params[1]).project(p[1]), x[1])
    assert cam.K.shape == (2, 3, 3)


def test_camera_errors():
    with pytest.raises(ValueError, match="expects 4 params"):
        Camera("PINHOLE", 640, 480, torch.zeros(3))
    with pytest.raises(ValueError, match="Unsupported camera model"):
        Camera("FISHEYE_X", 640, 480, torch.zeros(3))
    with pytest.raises(ValueError, match=r"\(\.\.\., N, 3\)"):
        Camera("PINHOLE", 640, 480, torch.ones(4)).project(torch.zeros(5, 2))


def test_camera_scale_pixel_convention():
    cam = Camera("PINHOLE", 640, 480, torch.tensor([500.0, 500.0, 320.0, 240.0], dtype=torch.float64))
    half = cam.scale(0.5)
    p = _points(20)
    # COLMAP convention: scaling pixel coordinates by s is exact (no half-pixel shifts)
    assert torch.allclose(half.project(p), cam.project(p) * 0.5)
    assert (half.width, half.height) == (320, 240)


def test_pose_conversions():
    g = torch.Generator().manual_seed(1)
    aa_t = torch.randn(16, 6, generator=g, dtype=torch.float64)
    pose = Pose.from_aa(aa_t)
    assert is_rotation(pose.R).all()
    assert torch.allclose(Pose.from_aa(pose.aa_t()).R, pose.R, atol=1e-12)
    assert torch.allclose(Pose.from_qt(pose.qvec(), pose.t).R, pose.R, atol=1e-12)
    ident = pose @ pose.inv()
    assert torch.allclose(ident.R, torch.eye(3, dtype=torch.float64).expand(16, 3, 3), atol=1e-12)
    assert ident.t.abs().max() < 1e-12
    pts = torch.randn(16, 5, 3, generator=g, dtype=torch.float64)
    cam_pts = pose.transform(pts)
    back = pose.inv().transform(cam_pts)
    assert torch.allclose(back, pts, atol=1e-12)
    # the centre maps to the origin of the camera frame
    assert pose.transform(pose.center.unsqueeze(-2)).abs().max() < 1e-12


def test_pose_pycolmap_roundtrip():
    pose = Pose.from_aa(torch.tensor([0.3, -0.2, 0.1, 1.0, 2.0, 3.0], dtype=torch.float64))
    rigid = pose.to_pycolmap()
    X = np.array([[0.5, -1.0, 4.0]])
    ours = pose.transform(torch.from_numpy(X)).numpy()
    ref = (rigid * X[0])[None]
    assert np.abs(ours - ref).max() < 1e-12
    back = Pose.from_pycolmap(rigid)
    assert torch.allclose(back.R, pose.R, atol=1e-14) and torch.allclose(back.t, pose.t)


def test_so3_small_angles_and_pi():
    aa = torch.tensor([[1e-9, 0, 0], [0, 0, 0], [0, math.pi - 1e-9, 0]], dtype=torch.float64)
    back = so3_log(so3_exp(aa))
    assert torch.allclose(back[:2], aa[:2], atol=1e-15)
    assert abs(back[2].norm() - (math.pi - 1e-9)) < 1e-8
    aa = torch.zeros(1, 3, dtype=torch.float64, requires_grad=True)
    so3_exp(aa).sum().backward()
    assert torch.isfinite(aa.grad).all()


def test_rotation_error_accurate_near_zero():
    R = so3_exp(torch.tensor([0.0, 0.0, math.radians(0.01)], dtype=torch.float64))
    I = torch.eye(3, dtype=torch.float64)
    assert abs(rotation_error_deg(R, I).item() - 0.01) < 1e-10
    # near-orthonormal ground truth (as Strecha): identical poses give ~0, not ~0.06 deg
    g = torch.Generator().manual_seed(3)
    R_gt = so3_exp(torch.randn(3, generator=g, dtype=torch.float64))
    R_noisy = R_gt + 1e-6 * torch.randn(3, 3, generator=g, dtype=torch.float64)
    assert rotation_error_deg(project_to_so3(R_noisy), R_noisy).item() < 1e-9
    arccos = torch.rad2deg(torch.arccos(((R_noisy @ R_noisy.T).trace() - 1).clamp(-1, 1) / 2))
    assert rotation_error_deg(R_noisy, R_noisy).item() < 1e-9 <= arccos.item() + 1e-9


def test_center_error():
    a = Pose.from_center(torch.eye(3, dtype=torch.float64), torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64))
    b = Pose.from_center(torch.eye(3, dtype=torch.float64), torch.tensor([1.0, 2.0, 3.01], dtype=torch.float64))
    assert abs(center_error(a, b).item() - 0.01) < 1e-12


def _two_views():
    """Two pinhole views of points on an oblique plane: (cam, pose_a, pose_b, X (N, 3), n (3,), d)
    with the plane n.X = d."""
    cam = Camera("PINHOLE", 640, 480, torch.tensor([500.0, 510.0, 320.0, 240.0], dtype=torch.float64))
    pose_a = Pose.identity()
    pose_b = Pose(so3_exp(torch.tensor([0.05, -0.5, 0.1], dtype=torch.float64)),
                  torch.tensor([1.2, -0.1, 0.3], dtype=torch.float64))
    n = torch.nn.functional.normalize(torch.tensor([0.4, -0.2, -1.0], dtype=torch.float64), dim=0)
    g = torch.Generator().manual_seed(0)
    uv = (torch.rand(40, 2, generator=g, dtype=torch.float64) - 0.5) * 0.6
    rays = torch.cat([uv, torch.ones(40, 1, dtype=torch.float64)], 1)
    d = -4.0  # the plane n.X = d, about 4 in front of camera a
    X = rays * (d / (rays @ n))[:, None]
    return cam, pose_a, pose_b, X, n, d


def test_plane_induced_affine_is_the_homographys_jacobian():
    cam, pose_a, pose_b, X, n, d = _two_views()
    x_a = cam.project(pose_a.transform(X))
    A, valid = plane_induced_affine(x_a, cam, pose_a, cam, pose_b, X, n.expand_as(X))
    assert valid.all() and A.shape == (len(X), 2, 2) and A.dtype == torch.float64
    # camera a is the world frame: on the plane n.X = d, X_b = R X + t n.X / d, so the homography
    # is K (R + t n^T / d) K^-1
    K = cam.K
    Hm = K @ (pose_b.R + pose_b.t[:, None] @ n[None] / d) @ torch.linalg.inv(K)

    def h(x):
        y = torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype)], 1) @ Hm.T
        return y[:, :2] / y[:, 2:]

    J = torch.stack([torch.autograd.functional.jacobian(lambda v: h(v[None])[0], x) for x in x_a])
    torch.testing.assert_close(A, J, atol=1e-4, rtol=1e-4)  # central differences of 1 px
    # the plane's image of the point itself: x_b = h(x_a)
    torch.testing.assert_close(h(x_a), cam.project(pose_b.transform(X)))
    # a normal of any length or sign is the same plane
    A2, _ = plane_induced_affine(x_a, cam, pose_a, cam, pose_b, X, -3 * n.expand_as(X))
    torch.testing.assert_close(A2, A)
    # a camera moved along its axis towards a fronto-parallel plane magnifies by the depth ratio
    front = torch.tensor([0.0, 0.0, -1.0], dtype=torch.float64).expand_as(X)
    Xf = X.clone()
    Xf[:, 2] = 4.0
    closer = Pose(torch.eye(3, dtype=torch.float64), torch.tensor([0.0, 0.0, -2.0], dtype=torch.float64))
    Af, ok = plane_induced_affine(cam.project(Xf), cam, pose_a, cam, closer, Xf, front)
    assert ok.all()
    torch.testing.assert_close(Af, 2.0 * torch.eye(2, dtype=torch.float64).expand_as(Af), atol=1e-9, rtol=1e-9)


def test_plane_induced_affine_marks_missing_and_impossible_planes():
    cam, pose_a, pose_b, X, n, d = _two_views()
    x_a = cam.project(pose_a.transform(X))
    N = n.expand_as(X).clone()
    N[0] = float("nan")  # no normal
    N[1] = 0.0
    # a plane containing camera a's ray: the rays run along it
    N[2] = torch.nn.functional.normalize(torch.linalg.cross(X[2], torch.tensor([0.0, 1.0, 0.0], dtype=torch.float64)), dim=0)
    behind = Pose(torch.eye(3, dtype=torch.float64), torch.tensor([0.0, 0.0, -10.0], dtype=torch.float64))
    A, valid = plane_induced_affine(x_a, cam, pose_a, cam, pose_b, X, N)
    assert not valid[:3].any() and valid[3:].all()
    torch.testing.assert_close(A[:3], torch.eye(2, dtype=torch.float64).expand(3, 2, 2))
    _, v_behind = plane_induced_affine(x_a, cam, pose_a, cam, behind, X, n.expand_as(X))  # plane behind view b
    assert not v_behind.any()
    with pytest.raises(ValueError, match=r"points2D \(N, 2\)"):
        plane_induced_affine(x_a[:3], cam, pose_a, cam, pose_b, X, N)


def test_pose_stack():
    from hloc_bpnp.geometry.pose import Pose, so3_exp

    a = Pose(so3_exp(torch.tensor([0.1, 0.2, 0.3], dtype=torch.float64)), torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64))
    b = Pose.identity()
    s = Pose.stack([a, b])
    assert s.shape == (2,)
    torch.testing.assert_close(s[0].R, a.R)
    torch.testing.assert_close(s[1].t, b.t)
    with pytest.raises(ValueError, match="no poses"):
        Pose.stack([])


def test_rotation_error_vectors():
    from hloc_bpnp.geometry.metrics import rotation_error_deg, rotation_error_vectors
    from hloc_bpnp.geometry.pose import so3_exp

    g = torch.Generator().manual_seed(0)
    R_gt = so3_exp(torch.randn(6, 3, generator=g, dtype=torch.float64))
    delta = torch.tensor([[0.1, 0.0, 0.0], [0.0, 0.2, 0.0], [0.0, 0.0, 0.3], [0.1, 0.1, 0.1],
                          [0.0, 0.0, 0.0], [-0.2, 0.1, 0.0]], dtype=torch.float64)  # degrees, camera frame
    R_est = so3_exp(delta * (math.pi / 180)) @ R_gt
    v = rotation_error_vectors(R_est, R_gt)
    torch.testing.assert_close(v, delta, atol=1e-9, rtol=1e-9)
    torch.testing.assert_close(v.norm(dim=-1), rotation_error_deg(R_est, R_gt), atol=1e-9, rtol=1e-9)
