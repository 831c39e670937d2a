"""Reference backward modes, for tests and benchmarks (not the layer's own path).

* ``depth_weighted_grad``: the published BPnP backward. Its constraint function is the
  gradient of the depth-weighted objective ``sum_i w_i z_i^2 ||proj(p_i) - x_i||^2``
  (algebraic error ``(K p)_xy - (K p)_z x``), not of the reprojection objective the forward
  minimises, so its gradient is biased.
* ``unrolled_pose``: Gauss-Newton iterations with autograd through every iteration (the
  "unrolled" backward mode), from a given start.
* ``pycolmap_refine``: pycolmap's own (Ceres) pose refinement run to convergence, an
  independent reference for the forward optimum (see its docstring for the route).
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch

from ..geometry.pose import so3_exp
from .implicit import make_projector
from .linalg import safe_solve, so3_left_jacobian_inv
from .residuals import perturbed_residuals, residuals_and_jacobian


def depth_weighted_grad(
    pose: torch.Tensor,
    grad_pose: torch.Tensor,
    points2d: torch.Tensor,
    points3d: torch.Tensor,
    K: torch.Tensor,
    weights: Optional[torch.Tensor] = None,
) -> Sequence[torch.Tensor]:
    """IFT gradient of the depth-weighted objective at ``pose`` (published-BPnP style).

    Args:
        pose: (B, 6) solution; grad_pose: (B, 6) upstream gradient;
        points2d (B, N, 2), points3d (B, N, 3), K (B, 3, 3), weights (B, N) or None.
    Returns:
        gradients w.r.t. (points2d, points3d, K, weights) in float64.
    """
    B, N = points2d.shape[:2]
    leaves = [a.detach().double().requires_grad_(True) for a in (points2d, points3d, K)]
    w = torch.ones(B, N, dtype=torch.float64) if weights is None else weights.detach().double()
    w.requires_grad_(True)
    x, X, Km = leaves
    y = pose.detach().double()
    R, t = so3_exp(y[:, :3]), y[:, 3:]
    delta = torch.zeros(B, 6, dtype=torch.float64, requires_grad=True)
    proj = make_projector("K", None, Km)
    r = perturbed_residuals(delta, R, t, X, x, proj)
    Rd = so3_exp(delta[:, :3]) @ R
    z = proj.depth(X @ Rd.transpose(-1, -2) + (t + delta[:, 3:]).unsqueeze(1))
    F = (w * z * z * (r * r).sum(-1)).sum()
    (g,) = torch.autograd.grad(F, delta, create_graph=True)
    H = torch.stack([torch.autograd.grad(g[:, k].sum(), delta, retain_graph=True)[0] for k in range(6)], 1)
    gy = grad_pose.double()
    Jinv = so3_left_jacobian_inv(y[:, :3])
    u = torch.cat([(Jinv.transpose(-1, -2) @ gy[:, :3].unsqueeze(-1)).squeeze(-1), gy[:, 3:]], -1)
    lam, _ = safe_solve(H.detach(), u)
    return torch.autograd.grad(-(g * lam).sum(), [x, X, Km, w])


def unrolled_pose(
    pose_init: torch.Tensor,
    points2d: torch.Tensor,
    points3d: torch.Tensor,
    K: torch.Tensor,
    weights: Optional[torch.Tensor] = None,
    iters: int = 10,
) -> torch.Tensor:
    """Gauss-Newton from ``pose_init`` (B, 6) with autograd through all ``iters`` steps.

    Returns (B, 6) [axis-angle, t]; differentiable w.r.t. all problem tensors.
    """
    from ..geometry.pose import so3_log

    B, N = points2d.shape[:2]
    w = torch.ones(B, N, dtype=points2d.dtype, device=points2d.device) if weights is None else weights
    R, t = so3_exp(pose_init[:, :3].detach()), pose_init[:, 3:].detach()
    X = points3d.expand(B, N, 3)
    proj = make_projector("K", None, K.expand(B, 3, 3))
    for _ in range(iters):
        r, J, _ = residuals_and_jacobian(R, t, X, points2d, proj)
        wj = w[..., None, None] * J
        A = torch.einsum("bnki,bnkj->bij", wj, J)
        b = torch.einsum("bnki,bnk->bi", wj, r)
        step = -torch.linalg.solve(A, b)
        R, t = so3_exp(step[:, :3]) @ R, t + step[:, 3:]
    return torch.cat([so3_log(R), t], -1)


def pycolmap_refine(
    pose_init: torch.Tensor,
    points2d: torch.Tensor,
    points3d: torch.Tensor,
    camera,
    max_iters: int = 200,
) -> torch.Tensor:
    """pycolmap's L2 pose refinement of one image, run to Ceres' numerical convergence.

    ``pycolmap.refine_absolute_pose`` (4.2.1) cannot serve as a tight reference: it stops on
    Ceres' default function tolerance (1e-6 relative cost; ``AbsolutePoseRefinementOptions``
    exposes only ``gradient_tolerance`` and ``max_num_iterations``), ~1e-5 from the optimum.
    Bundle adjustment exposes the full ``ceres.solver_options``, so this builds a
    Reconstruction with the query image (variable pose), the points as constant 3D points
    and constant intrinsics, sets function/gradient/parameter tolerances to 0, and runs
    ``create_default_bundle_adjuster(...).solve()`` with the trivial (L2) loss. pycolmap 4.2.1
    requires tracks of length >= 2, so a second, constant "anchor" image observes every
    point; all of its parameters are constant, so it adds a constant to the cost only.

    Args:
        pose_init: (6,) [axis-angle, t] start; points2d (N, 2) pixels (COLMAP convention);
        points3d (N, 3); camera: an unbatched :class:`hloc_bpnp.geometry.Camera`.
    Returns:
        (6,) float64 [axis-angle, t] cam_from_world refined by pycolmap.
    """
    import pycolmap

    from ..geometry.pose import Pose

    x = points2d.detach().cpu().double().numpy()
    X = points3d.detach().cpu().double().numpy()
    if x.ndim != 2 or x.shape[1] != 2 or X.shape != (x.shape[0], 3):
        raise ValueError(f"pycolmap_refine: points2d (N, 2) and points3d (N, 3), got {x.shape} and {X.shape}")
    cam = camera.to_pycolmap()
    cam.camera_id = 1
    rec = pycolmap.Reconstruction()
    rec.add_camera_with_trivial_rig(cam)
    init = Pose.from_aa(pose_init.detach().cpu().double()).to_pycolmap()
    for image_id, name in ((1, "query"), (2, "anchor")):
        img = pycolmap.Image(name=name, camera_id=1, image_id=image_id)
        img.points2D = pycolmap.Point2DList([pycolmap.Point2D(xy) for xy in x])
        rec.add_image_with_trivial_frame(img, init)
    for i in range(len(X)):
        track = pycolmap.Track()
        track.add_element(1, i)
        track.add_element(2, i)
        rec.add_point3D(X[i], track)
    opts = pycolmap.BundleAdjustmentOptions()
    opts.refine_focal_length = opts.refine_principal_point = opts.refine_extra_params = False
    opts.refine_points3D = False
    opts.print_summary = False
    solver = opts.ceres.solver_options
    solver.function_tolerance = solver.gradient_tolerance = solver.parameter_tolerance = 0.0
    solver.max_num_iterations = int(max_iters)
    solver.num_threads = 1
    config = pycolmap.BundleAdjustmentConfig()
    config.add_image(1)
    config.add_image(2)
    config.set_constant_rig_from_world_pose(rec.image(2).frame_id)
    config.set_constant_cam_intrinsics(1)
    for pid in rec.point3D_ids():
        config.add_constant_point(pid)
    pycolmap.create_default_bundle_adjuster(opts, config, rec).solve()
    return Pose.from_pycolmap(rec.image(1).cam_from_world()).aa_t()
