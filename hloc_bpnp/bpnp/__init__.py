"""BPnP: a differentiable, batched PnP layer (LM forward, implicit-function-theorem backward).

Pieces (Theseus-style): ``losses`` (robust rho), ``residuals`` (camera projection, analytic
Jacobians), ``lm`` (the batched solver), ``init`` (closed-form starts, multi-start for few
points), ``implicit`` (the autograd layer), ``hessian`` (its analytic second-order terms for
pinhole cameras), ``covariance``, ``ransac`` (pycolmap LO-RANSAC, then the differentiable solve)
and ``solve`` (the public entry points).

    >>> pose = bpnp(points2d, points3d, K)            # (B, 6) [axis-angle, t]
    >>> res = solve_pnp(p2d, p3d, camera, loss="cauchy", loss_scale=2.0, pose_init=init)
"""
from .covariance import pose_covariance
from .init import dlt_pose, initial_pose, multistart_pose, planar_pose
from .lm import LMState, PosePrior, levenberg_marquardt
from .losses import LOSSES, robust_rho
from .ransac import pycolmap_ransac, ransac_then_bpnp
from .solve import PnPResult, bpnp, solve_pnp

__all__ = [
    "bpnp", "solve_pnp", "PnPResult", "pycolmap_ransac", "ransac_then_bpnp",
    "levenberg_marquardt", "LMState", "PosePrior", "initial_pose", "dlt_pose", "planar_pose", "multistart_pose",
    "pose_covariance", "robust_rho", "LOSSES",
]
