"""Each correspondence's noise as the query keypoint's plus its 3D point's
(``refinement.point_uncertainty``).

With a refined feature preset (``xfeat_refined``) every keypoint has a standard deviation
``sigma`` (pixels, the refiner's ``sigmas``), the query's and the map's alike. BPnP's
``use_weights: uncertainty`` weighs a correspondence by its query keypoint's ``1 / sigma_q^2``
only, as if the 3D point were exact. But the point was triangulated from map keypoints of the
same kind, and its error, seen from the query, is ``J_q Sigma_X J_q^T``
(:mod:`hloc_bpnp.geometry.point_uncertainty`; ``Sigma_X`` from the sigmas of the map's
observations of the point, :meth:`hloc_bpnp.mapping.Map.point_covariances`): on the Middlebury
temple's leave-one-out maps a median of 0.39 px in its worst direction against the query's
0.56 px. Each correspondence i then gets

    C_i = sigma_q,i^2 C_kp,i + J_q Sigma_X,i J_q^T

(``C_kp,i`` the identity, or the keypoint's structure-tensor shape with
``keypoint_covariance.method: structure_tensor``; ``J_q`` at the pose the refinement starts
from), and BPnP weighs it by ``W_i = C_i^-1`` divided by the median ``trace(W_i) / 2`` (the robust
loss scale keeps its meaning in pixels). Both terms are in pixels: no ratio to tune.

``point_uncertainty``: ``auto`` (on where the weights resolve to ``uncertainty`` and the map's
features carry sigmas), ``true`` (an error where they cannot), ``false``. Measured: README,
"This round".
"""
from __future__ import annotations

from typing import Optional

import numpy as np
import torch

from ..geometry.point_uncertainty import projected_covariances

__all__ = ["MODES", "point_uncertainty_on", "correspondence_sqrt_info"]

MODES = ("auto", True, False)


def point_uncertainty_on(conf, weights_mode, lookup, name: str = "query") -> bool:
    """Whether a query's refinement adds its 3D points' uncertainty: ``conf`` the merged
    localization conf, ``weights_mode`` its resolved ``use_weights``, ``lookup`` the map (a
    :class:`~hloc_bpnp.mapping.Map`; the hloc plugin's lookup has no tracks).

    Raises:
        ValueError: an unknown mode, or ``true`` where it cannot apply (names the query and why).
    """
    ref = conf["refinement"]
    mode = ref.get("point_uncertainty", False)
    if mode not in MODES or not isinstance(mode, (str, bool)):
        raise ValueError(f"refinement.point_uncertainty must be 'auto', true or false, got {mode!r}")
    if mode is False or ref["method"] != "bpnp":
        return False
    has_map = bool(getattr(lookup, "has_point_uncertainty", False))
    if mode is True:
        if weights_mode != "uncertainty":
            raise ValueError(f"query {name!r}: refinement.point_uncertainty needs use_weights 'uncertainty' "
                             f"(the query's keypoint sigmas), got {weights_mode!r}")
        if not has_map:
            raise ValueError(f"query {name!r}: refinement.point_uncertainty needs a map whose features carry "
                             f"keypoint sigmas (built with a refined feature preset, e.g. xfeat_refined)")
        return True
    return weights_mode == "uncertainty" and has_map


def correspondence_sqrt_info(kp_var, point_cov: torch.Tensor, points3D, pose, camera,
                             kp_sqrt_info: Optional[torch.Tensor] = None) -> torch.Tensor:
    """(M, 2, 2) ``L_i`` (``L_i^T L_i = W_i``) of ``C_i = kp_var_i C_kp,i + J_q Sigma_X,i J_q^T``
    (module docstring), normalised so that the median ``trace(W_i) / 2`` is 1.

    Args:
        kp_var: (M,) the query keypoints' variances (pixels^2, ``sigma^2``).
        point_cov: (M, 3, 3) their 3D points' covariances (world units^2).
        points3D: (M, 3) the points; pose: the query's ``cam_from_world``; camera: its intrinsics.
        kp_sqrt_info: (M, 2, 2) optional ``L`` of the keypoints' shape (structure tensors,
            :mod:`keypoint_noise`), else isotropic.
    """
    v = torch.as_tensor(np.asarray(kp_var), dtype=torch.float64).reshape(-1)
    M = v.shape[0]
    if M == 0:
        return torch.zeros(0, 2, 2, dtype=torch.float64)
    if kp_sqrt_info is None:
        C = torch.eye(2, dtype=torch.float64).expand(M, 2, 2)
    else:
        L = torch.as_tensor(kp_sqrt_info, dtype=torch.float64)
        C = torch.linalg.inv(L.transpose(-1, -2) @ L)
    C = v.reshape(-1, 1, 1) * C + projected_covariances(torch.as_tensor(np.asarray(points3D), dtype=torch.float64),
                                                       point_cov, pose, camera)
    W = torch.linalg.inv(C)
    W = W / W.diagonal(dim1=-2, dim2=-1).sum(-1).div(2).median()
    W = 0.5 * (W + W.transpose(-1, -2))
    return torch.linalg.cholesky(W).transpose(-1, -2)
