"""Can a scene's ground truth resolve a difference in pose error?

A benchmark's ground-truth poses and intrinsics come from their own calibration. When they
disagree with what the images say by more than the methods differ, a median against them
cannot rank the methods. This module measures that disagreement with the scene's own images:

1. a map is triangulated at the ground-truth poses (a mapping preset, as the leave-one-out
   protocol builds its maps);
2. a bundle adjustment then moves the poses and the points, with the intrinsics held constant;
3. the adjusted poses are brought back to the ground truth's frame by the similarity that
   fits them best (the bundle adjustment's gauge), and what is left per image is the
   *correction* the images ask of the ground truth.

Two unrelated feature presets (e.g. SIFT and XFeat) that ask for the same corrections
(their rotation vectors point the same way, :func:`correction_agreement`) measure an error of
the ground truth itself, not of either detector. A correction larger than the gap between two
methods' errors means the ground truth cannot rank them on that scene.

Poses are ``cam_from_world`` as everywhere in the package; a correction's rotation is the
axis-angle vector of ``R_adjusted R_gt^T`` in the camera frame, in degrees
(:func:`~hloc_bpnp.geometry.metrics.rotation_error_vectors`).
"""
from __future__ import annotations

from typing import Dict, Mapping, Optional, Sequence, Union

import numpy as np
import torch

from ..geometry.metrics import rotation_error_vectors
from ..geometry.pose import Pose, project_to_so3, so3_exp
from ..io.scene import Scene

LOSSES = ("trivial", "soft_l1", "cauchy", "huber")


def remove_similarity_gauge(reference: Pose, adjusted: Pose) -> Dict[str, torch.Tensor]:
    """Per-image differences of two sets of poses of the same images, up to a similarity.

    ``adjusted`` is expressed in a world frame that differs from ``reference``'s by a
    similarity (a bundle adjustment's gauge). The world rotation ``Q`` is the chordal mean of
    ``R_ref_i^T R_adj_i`` (so ``R_adj_i ~ R_ref_i Q^T``); the scale ``s`` and offset ``u`` are
    then fitted by least squares to the camera centres, ``c_adj ~ s Q c_ref + u``.

    Args:
        reference: (N,) poses, cam_from_world (e.g. the ground truth); N >= 3.
        adjusted: (N,) poses of the same images in another frame.
    Returns:
        ``rotation_deg`` (N, 3): axis-angle of ``R_adj Q R_ref^T`` in the camera frame, degrees;
        ``rotation_error_deg`` (N,): its norm; ``center_error`` (N,): distance between the
        reference centre and the adjusted centre mapped back (reference units);
        ``world_rotation`` (3, 3): ``Q``; ``scale``: ``s``; ``offset`` (3,): ``u``; ``aligned``:
        (N,) ``adjusted`` brought into ``reference``'s frame.
    """
    if reference.shape != adjusted.shape or len(reference.shape) != 1:
        raise ValueError(f"remove_similarity_gauge: two (N,) pose sets, got {tuple(reference.shape)} "
                         f"and {tuple(adjusted.shape)}")
    if reference.shape[0] < 3:
        raise ValueError(f"remove_similarity_gauge: need at least 3 images, got {reference.shape[0]}")
    Rr, Ra = reference.R.double(), adjusted.R.double()
    Qt = project_to_so3((Rr.transpose(-1, -2) @ Ra).sum(0))  # R_adj ~ R_ref Q^T
    Q = Qt.transpose(0, 1)
    rot = rotation_error_vectors(Ra @ Q, Rr)
    x = reference.center.double() @ Q.T                    # Q c_ref
    y = adjusted.center.double()
    xc, yc = x - x.mean(0), y - y.mean(0)
    denom = (xc * xc).sum()
    if float(denom) <= 0:
        raise ValueError("remove_similarity_gauge: the reference camera centres coincide; the scale is undefined")
    s = (xc * yc).sum() / denom
    u = y.mean(0) - s * x.mean(0)
    back = ((y - u) / s) @ Q                                # Q^T (c_adj - u) / s
    return {"rotation_deg": rot, "rotation_error_deg": rot.norm(dim=-1),
            "center_error": (back - reference.center.double()).norm(dim=-1),
            "world_rotation": Q, "scale": s, "offset": u, "aligned": Pose.from_center(Ra @ Q, back)}


def _reprojection_errors(rec) -> np.ndarray:
    rec.update_point_3d_errors()
    return np.array([p.error for p in rec.points3D.values()], dtype=np.float64)


def bundle_adjust_fixed_intrinsics(rec, loss: str = "soft_l1", loss_scale_px: float = 1.0,
                                   max_iterations: int = 100):
    """A copy of ``rec`` with its poses and 3D points bundle-adjusted, intrinsics constant.

    Args:
        rec: ``pycolmap.Reconstruction`` with 3D points (at least 3 registered images).
        loss: Ceres loss on the reprojection residuals: one of :data:`LOSSES`.
        loss_scale_px: its scale (pixels).
    Returns:
        The adjusted ``pycolmap.Reconstruction`` (``rec`` is left unchanged).
    """
    import pycolmap

    if loss not in LOSSES:
        raise ValueError(f"bundle_adjust_fixed_intrinsics: loss must be one of {LOSSES}, got {loss!r}")
    if rec.num_reg_images() < 3 or rec.num_points3D() == 0:
        raise ValueError(f"bundle_adjust_fixed_intrinsics: need >= 3 registered images and some 3D points, got "
                         f"{rec.num_reg_images()} images and {rec.num_points3D()} points")
    out = pycolmap.Reconstruction(rec)
    opts = pycolmap.BundleAdjustmentOptions()
    opts.refine_focal_length = opts.refine_principal_point = opts.refine_extra_params = False
    opts.print_summary = False
    opts.ceres.loss_function_type = getattr(pycolmap.LossFunctionType, loss.upper())
    opts.ceres.loss_function_scale = float(loss_scale_px)
    opts.ceres.solver_options.max_num_iterations = int(max_iterations)
    pycolmap.bundle_adjustment(out, opts)
    return out


def _poses(rec, names: Sequence[str]) -> Pose:
    poses = []
    for n in names:
        im = rec.find_image_with_name(n)
        if im is None:
            raise ValueError(f"ground-truth consistency: image {n!r} is not registered in the map")
        poses.append(Pose.from_pycolmap(im.cam_from_world()))
    return Pose.stack(poses)


def ground_truth_corrections(rec, names: Optional[Sequence[str]] = None, loss: str = "soft_l1",
                             loss_scale_px: float = 1.0) -> Dict:
    """What a bundle adjustment of ``rec`` (built at the ground-truth poses) asks of them.

    Args:
        rec: ``pycolmap.Reconstruction`` whose image poses are the ground truth and whose 3D
            points were triangulated at them.
        names: images to report (default: every registered image, by name).
    Returns:
        ``names``; ``reprojection_gt`` and ``reprojection_adjusted``: ``{"mean_px",
        "median_px"}`` over the 3D points' mean reprojection errors; ``n_points``; and
        :func:`remove_similarity_gauge`'s entries as numpy arrays (``rotation_deg`` (N, 3),
        ``rotation_error_deg`` (N,), ``center_error`` (N,), ``scale``, ``offset``), and
        ``adjusted``: the adjusted (N,) poses in the ground truth's frame.
    """
    import pycolmap

    names = sorted(im.name for im in rec.images.values() if im.has_pose) if names is None else list(names)
    before = _reprojection_errors(pycolmap.Reconstruction(rec))  # a copy: the errors are recomputed in place
    adj = bundle_adjust_fixed_intrinsics(rec, loss=loss, loss_scale_px=loss_scale_px)
    after = _reprojection_errors(adj)
    gauge = remove_similarity_gauge(_poses(rec, names), _poses(adj, names))
    out = {"names": names, "n_points": int(len(before)),
           "reprojection_gt": {"mean_px": float(before.mean()), "median_px": float(np.median(before))},
           "reprojection_adjusted": {"mean_px": float(after.mean()), "median_px": float(np.median(after))}}
    out["adjusted"] = gauge.pop("aligned")
    for k, v in gauge.items():
        out[k] = v.cpu().numpy() if v.ndim else float(v)
    return out


def scene_ground_truth_corrections(scene: Scene, mapping: Union[str, Mapping] = "default", images=None,
                                   loss: str = "soft_l1", progress: bool = False) -> Dict:
    """:func:`ground_truth_corrections` of a map of all of ``scene``'s images, triangulated at
    their ground-truth poses with the mapping preset ``mapping``.

    The preset must not move keypoints onto the map's projections (``keypoint_adjustment``):
    that would hide the very disagreement this measures.
    """
    from ..mapping.build import build_map_from_poses, resolved_mapping_config

    conf = resolved_mapping_config(mapping)
    if conf["keypoint_adjustment"]["enabled"]:
        raise ValueError(f"ground-truth consistency: mapping preset {mapping!r} adjusts the keypoints onto the "
                         "map (keypoint_adjustment.enabled); use a preset without it, e.g. 'default' or "
                         "'xfeat_refined'")
    m = build_map_from_poses(scene, images=images, conf=conf, progress=progress)
    return ground_truth_corrections(m.reconstruction, names=scene.names, loss=loss)


def correction_agreement(a: Mapping, b: Mapping) -> Dict[str, np.ndarray]:
    """How alike two sets of corrections (or of pose errors) are, image by image.

    Args:
        a, b: mappings with ``names`` and ``rotation_deg`` (N, 3), e.g. two outputs of
            :func:`ground_truth_corrections` for different feature presets, or a method's
            rotation errors as returned by
            :func:`~hloc_bpnp.geometry.metrics.rotation_error_vectors`.
    Returns:
        ``names`` (the common images, in ``a``'s order), ``cosine`` (N,) between the rotation
        vectors, ``difference_deg`` (N,) the norm of their difference, and the medians
        ``median_cosine`` and ``median_difference_deg``.
    """
    ia = {n: i for i, n in enumerate(a["names"])}
    ib = {n: i for i, n in enumerate(b["names"])}
    names = [n for n in a["names"] if n in ib]
    if not names:
        raise ValueError("correction_agreement: the two sets share no image name")
    va = np.asarray(a["rotation_deg"], dtype=np.float64)[[ia[n] for n in names]]
    vb = np.asarray(b["rotation_deg"], dtype=np.float64)[[ib[n] for n in names]]
    na, nb = np.linalg.norm(va, axis=1), np.linalg.norm(vb, axis=1)
    cos = np.where((na > 0) & (nb > 0), (va * vb).sum(1) / np.maximum(na * nb, 1e-300), np.nan)
    diff = np.linalg.norm(va - vb, axis=1)
    return {"names": names, "cosine": cos, "difference_deg": diff,
            "median_cosine": float(np.nanmedian(cos)) if np.isfinite(cos).any() else float("nan"),
            "median_difference_deg": float(np.median(diff))}


def consensus_poses(reference: Pose, adjusted: Sequence[Pose]) -> Pose:
    """The mean of several sets of adjusted poses, each already in ``reference``'s frame.

    Rotations are averaged as rotation vectors relative to ``reference`` (small corrections),
    centres as points.

    Args:
        reference: (N,) poses (e.g. the ground truth).
        adjusted: K >= 1 sets of (N,) poses of the same images (e.g. the ``adjusted`` entries of
            :func:`ground_truth_corrections` for K feature presets).
    Returns:
        (N,) poses, cam_from_world.
    """
    if not adjusted:
        raise ValueError("consensus_poses: need at least one set of adjusted poses")
    for a in adjusted:
        if a.shape != reference.shape:
            raise ValueError(f"consensus_poses: pose sets of shape {tuple(a.shape)} and {tuple(reference.shape)}")
    vec = torch.stack([rotation_error_vectors(a.R, reference.R) for a in adjusted]).mean(0) * (np.pi / 180.0)
    R = so3_exp(vec) @ project_to_so3(reference.R.double())
    return Pose.from_center(R, torch.stack([a.center.double() for a in adjusted]).mean(0))


def pseudo_ground_truth(scene: Scene, mappings: Sequence[Union[str, Mapping]] = ("default", "xfeat_refined"),
                        loss: str = "soft_l1", corrections: Optional[Sequence[Mapping]] = None,
                        progress: bool = False):
    """``scene`` with every pose replaced by the consensus of the bundle adjustments of
    :func:`scene_ground_truth_corrections` for each mapping preset.

    A test of how much of a benchmark's error is its ground truth's, not a neutral referee: the
    pseudo ground truth comes from the same images and features a method is then evaluated on
    (Brachmann et al., ICCV 2021, show that methods near a pseudo ground truth's source score
    better). Use presets of every method compared, so that none is alone at the source.

    ``corrections``: already computed outputs of :func:`scene_ground_truth_corrections` for
    ``mappings`` (then nothing is recomputed).

    Returns:
        (the new :class:`Scene`, the list of corrections, one per preset).
    """
    import dataclasses

    names = scene.names
    if any(scene[n].pose is None for n in names):
        raise ValueError("pseudo_ground_truth: every image of the scene needs a ground-truth pose")
    if corrections is None:
        corrections = [scene_ground_truth_corrections(scene, m, loss=loss, progress=progress) for m in mappings]
    elif len(corrections) != len(mappings):
        raise ValueError(f"pseudo_ground_truth: {len(corrections)} corrections for {len(mappings)} mapping presets")
    gt = Pose.stack([scene[n].pose.to(torch.float64) for n in names])
    poses = consensus_poses(gt, [c["adjusted"] for c in corrections])
    images = [dataclasses.replace(scene[n], pose=poses[i]) for i, n in enumerate(names)]
    meta = dict(scene.metadata)
    meta["pseudo_ground_truth"] = [m if isinstance(m, str) else "<dict>" for m in mappings]
    return Scene(images, image_dir=scene.image_dir, metadata=meta), corrections
