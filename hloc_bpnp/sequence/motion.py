"""Constant-velocity motion model of a tracked camera, with a covariance learnt from its own
prediction errors.

Poses are ``cam_from_world`` (COLMAP). The velocity between two tracked frames is the
camera-frame motion ``V = T_k T_{k-1}^-1`` (so ``T_k = V T_{k-1}``); the prediction for the next
frame is ``exp(s log V) T_k`` with ``s`` the ratio of the time steps (1 for frames without
timestamps). The prediction error is measured in the solver's tangent space
``[log(R_est R_pred^T), t_est - t_pred]`` (see :class:`hloc_bpnp.bpnp.lm.PosePrior`), and its
running second moment (with a floor) is the covariance of the next prediction.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Deque, Optional, Tuple

import numpy as np
import torch

from ..geometry import Pose
from ..geometry.pose import so3_exp, so3_log


def pose_log(pose: Pose) -> torch.Tensor:
    """(6,) [axis-angle, t] of an unbatched Pose (float64)."""
    return torch.cat([so3_log(pose.R.to(torch.float64)), pose.t.to(torch.float64)])


def tangent_error(est: Pose, ref: Pose) -> np.ndarray:
    """(6,) ``[log(R_est R_ref^T), t_est - t_ref]``: the tangent of the solver's prior term."""
    R = est.R.to(torch.float64) @ ref.R.to(torch.float64).T
    return torch.cat([so3_log(R), est.t.to(torch.float64) - ref.t.to(torch.float64)]).cpu().numpy()


def scaled_motion(V: Pose, s: float) -> Pose:
    """``exp(s log V)`` for a rigid motion, with the translation scaled along the same screw
    to first order (exact for pure translations and s in {0, 1})."""
    if s == 1.0:
        return V
    aa = so3_log(V.R.to(torch.float64))
    return Pose(so3_exp(s * aa), s * V.t.to(torch.float64))


@dataclass
class MotionModel:
    """Constant-velocity predictor over consecutive tracked frames.

    Args:
        sigma_rot_rad: floor (and initial value) of the rotation prediction std (rad).
        sigma_pos: floor (and initial value) of the position prediction std (scene units).
        history: number of recent prediction errors in the covariance estimate.
    """

    sigma_rot_rad: float
    sigma_pos: float
    history: int = 10
    _poses: Deque[Tuple[Optional[float], Pose]] = field(default_factory=lambda: deque(maxlen=2))
    _errors: Deque[np.ndarray] = field(default_factory=lambda: deque(maxlen=10))

    def __post_init__(self):
        self._errors = deque(maxlen=int(self.history))

    def reset(self) -> None:
        """Forget the motion (after a lost frame or a relocalization): the next prediction is
        the last pose with the floor covariance inflated."""
        self._poses.clear()

    def update(self, pose: Pose, timestamp: Optional[float] = None, predicted: Optional[Pose] = None) -> None:
        """Record the estimated pose of a tracked frame (and its prediction error)."""
        if predicted is not None and len(self._poses) == 2:
            self._errors.append(tangent_error(pose, predicted))
        self._poses.append((timestamp, pose))

    def last_rotation_rad(self) -> Optional[float]:
        """Rotation angle (rad) between the last two recorded poses, None with fewer."""
        if len(self._poses) < 2:
            return None
        R = self._poses[1][1].R.to(torch.float64) @ self._poses[0][1].R.to(torch.float64).T
        return float(so3_log(R).norm())

    @property
    def ready(self) -> bool:
        return len(self._poses) >= 1

    def predict(self, timestamp: Optional[float] = None) -> Tuple[Pose, np.ndarray]:
        """(predicted Pose, (6, 6) covariance of the prediction in the tangent space).

        With one known pose the prediction is that pose (zero velocity) with 4x the floor std.
        """
        if not self._poses:
            raise RuntimeError("MotionModel.predict before any update")
        t1, p1 = self._poses[-1]
        if len(self._poses) == 1:
            return p1, self._covariance(inflate=4.0)
        t0, p0 = self._poses[0]
        s = 1.0
        if timestamp is not None and t0 is not None and t1 is not None and t1 > t0:
            s = float(np.clip((timestamp - t1) / (t1 - t0), 0.0, 5.0))
        V = p1.compose(p0.inv())
        return scaled_motion(V, s).compose(p1), self._covariance()

    def _covariance(self, inflate: float = 1.0) -> np.ndarray:
        floor = np.array([self.sigma_rot_rad] * 3 + [self.sigma_pos] * 3) ** 2
        var = floor.copy()
        if len(self._errors) >= 2:
            e = np.stack(self._errors)
            var = np.maximum(floor, (e ** 2).mean(0))
        return np.diag(var * inflate ** 2)
