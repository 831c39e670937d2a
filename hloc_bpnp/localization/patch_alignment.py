"""Photometric alignment of a localized query's inlier keypoints to the map's observations.

A per-keypoint refiner moves each keypoint on its own; it cannot see that the query's keypoint
and the map's observation of the same 3D point sit on slightly different surface points
(detector-level errors of 1-3 px, measured on the Middlebury temple). Once the query has a
pose, each inlier keypoint is aligned to its 3D point as the map images closest to the query's
camera centre see it (the template: see "Where the template sits" below): a translation-only
Lucas-Kanade fit of a normalised image patch (zero mean, unit variance, Gaussian-weighted
window), the map's patch fixed.
The pose is then refined again by BPnP from the aligned keypoints.

Measured (README, "Query patch alignment"; ``pipelines/finetune_real.py --no-train``, variant
``+aligned``): Middlebury temple leave-one-out, `limited` position 0.298 -> 0.245 cm with
pretrained XFeat and 0.258 -> 0.239 cm with the shipped refiner (pretrained: 0.298); Herz-Jesu
1.176 -> 0.839 cm (pretrained). Pairwise on the temple's fixed Sampson matches (one side
aligned to the other) the median Sampson error drops x0.52, while one position per keypoint
(a consensus over all its matches) gets x0.75 (``benchmarks/bench_pair_alignment.py``):
alignment pays most where one side is fixed, as the map's observations are for a query.

**Where the template sits** (``template_center``). The pose is solved against the map's 3D
point, not against the map's keypoint: a point triangulated from several detections sits off
each of them by its reprojection error (a median of 0.95 px in an ``xfeat_refined`` temple
map). A template centred
on the map keypoint hands that offset to the query whole. Centred on the 3D point's projection
into the map image (``projection``, the default), the aligned query keypoint is where the
surface point seen along that map ray appears, so only the point's error ALONG the map ray
remains, scaled down by the small parallax between the query and its nearest map view. With
templates at the projections, the mean patch of K > 1 map views (``num_references``) is a
consistent template too (at the keypoints it was not: K = 3 did not pay).

**How much each aligned keypoint counts** (``keypoint_covariance: alignment`` with
``residual_variance``, the defaults): Lucas-Kanade's own covariance of the shift, ``sigma^2
H^-1``, with ``H`` the query patch's Gauss-Newton matrix and ``sigma^2`` the residual variance
of the normalised patch against its template at convergence. A sharp patch that does not look
like its template (another surface point, an occluder, a silhouette) weighs little. On the
temple its residual variance correlates with the keypoint's error at the true pose at 0.68
(Spearman), ``H`` alone at -0.14; the flagship's median fell by 25-29% (README, "Previous round:
the aligned keypoints weighed by their own residuals").

**Templates warped through the map's planes** (``template_warp``). The alignment is
translation-only: a template read on its map view's pixel grid matches the query's patch only
where the two views see the surface alike. A map whose points were refined on planes
(``keypoint_adjustment.method: plane``) keeps each point's surface normal
(:attr:`~hloc_bpnp.mapping.Map.point_normals`). With ``plane``, each template is read on the
query's pixel grid carried into the map view through that plane (the local affine part of the
plane's homography, :func:`~hloc_bpnp.geometry.plane_induced_affine`, the query at its RANSAC
pose), so it shows the patch foreshortened as the query sees it. ``plane_if_better`` aligns a
point with a warped template to the unwarped one too and keeps the alignment whose patch agrees
better with its template, which guards against a poorly fitted normal.

The Lucas-Kanade step itself lives in :mod:`hloc_bpnp.features.patch_lk`.

All positions are COLMAP pixels (top-left pixel centre at (0.5, 0.5)).
"""
from __future__ import annotations

import logging
from typing import Callable, Dict, List, Tuple

import numpy as np
import torch

from ..features.patch_lk import (MapImages, align_patches, align_to_templates, as_gray_image, gray_image,
                                normalise_patches, prepare_image, sample_patches, structure_tensors)
from ..geometry import plane_induced_affine

__all__ = ["default_conf", "check_conf", "resolve_enabled", "align_patches", "prepare_image", "gray_image",
           "MapImages", "reference_observations", "visible_rows", "project_points", "template_affines",
           "align_to_map"]

logger = logging.getLogger(__name__)

default_conf = {
    # True: align (the map images are required); "auto": align when the map images are given
    # (Localizer(..., map_images=), `hloc-bpnp localize --map-images`), else localize without
    "enabled": False,
    "radius": 5,  # patch half-size, pixels (11 x 11)
    "iterations": 10,
    "blur_sigma": 1.0,  # Gaussian pre-smoothing of both images (widens LK's basin)
    # bound of each shift coordinate, applied at every iteration: a keypoint whose fit runs
    # away stays at the bound. Measured on 5 temple folds (pretrained XFeat, `limited` pos):
    # rejecting the shifts that reach it instead, 0.309 cm; bounded, 0.242; none 0.327
    "max_shift_px": 3.0,
    # zero-normalised cross-correlation of the aligned patches below which the keypoint stays
    # where it was (same folds: 0.3 -> 0.237 cm, 0.5 -> 0.301: too many good fits rejected)
    "min_ncc": 0.3,
    # where the map image's template is centred: "projection" (the 3D point projected into that
    # map image with its known pose) or "keypoint" (the map's observation, the earlier design)
    "template_center": "projection",
    # align each keypoint to the mean patch of its point's observations in up to this many map
    # images nearest to the query (1: the nearest observation's patch alone) ...
    "num_references": 2,
    # ... a further one (k >= 2) only where its camera sees the point within this angle of the
    # query's ray (null: any). Measured (README, "Alignment templates at the 3D points'
    # projections"), leave-one-out, per-query geometric mean of the error ratio rot / pos against
    # the earlier design (keypoint, 1 reference), temple / Herz-Jesu-P8 / fountain-P11:
    #   projection, 1 ref:           SIFT x0.85 / x0.93, x0.83 / x0.91, x0.95 / x0.86;
    #                                xfeat_refined x0.79 / x0.74, x0.81 / x0.88, x0.90 / x0.79
    #   projection, 2 refs, any:     SIFT x0.71 / x0.73, x0.90 / x0.93, x0.89 / x0.90;
    #                                xfeat_refined x0.67 / x0.65, x0.97 / x1.01, x0.77 / x0.77
    #   projection, 2 refs, 10 deg:  SIFT x0.63 / x0.64, x0.81 / x0.86, x1.00 / x0.87;
    #                                xfeat_refined x0.57 / x0.55, x0.81 / x0.90, x0.87 / x0.77
    "max_reference_angle_deg": 10.0,
    # which map images give a point's templates: "observing" (those in its track: a matched
    # keypoint there) or "visible" (also those that have it in front of the camera, its template
    # inside the image; needs template_center: projection). A point in a track of 2-3 views
    # otherwise takes its template from a view further from the query than the nearest one
    "reference_views": "observing",
    # BPnP-refine the RANSAC pose before the alignment as well. The alignment reads only the
    # RANSAC inliers and the camera centre (which map views are nearest), and the pose is
    # refined from the aligned keypoints either way, so by default the first refinement (and
    # its structure tensors) is skipped: 0.03 s less per query, same medians (README, "one pose
    # refinement per aligned query")
    "refine_first": False,
    # the anisotropic keypoint noise of the aligned keypoints (with refinement.keypoint_covariance
    # on): "alignment", the alignment's own Gauss-Newton matrices at the aligned positions (its
    # radius and blur; free), or "image", refinement.keypoint_covariance's structure tensors
    # read again around them
    "keypoint_covariance": "alignment",
    # with keypoint_covariance "alignment": each aligned keypoint's Gauss-Newton matrix divided by
    # its own residual variance at convergence (the normalised patch against its template), so its
    # covariance is the Lucas-Kanade estimate sigma^2 H^-1 and a keypoint whose patch does not look
    # like its template weighs less, however sharp its texture. false: H^-1 alone (the earlier
    # design). Measured with `fast_learned` and `xfeat_refined_adjusted` fold maps (README,
    # "Previous round: the aligned keypoints weighed by their own residuals")
    "residual_variance": True,
    # how a map view's template is sampled: "none", on the view's pixel grid; "plane", on the
    # query's pixel grid carried into the view through the plane of the point's surface (the map's
    # Map.point_normals, fitted by keypoint_adjustment's `plane` method; the query at its RANSAC
    # pose), so that the template shows the patch as the query sees it, foreshortening included.
    # Points without a normal, or whose warp is extreme (its determinant outside
    # [1/warp_max_scale^2, warp_max_scale^2], or a singular value above warp_max_scale), keep
    # the unwarped template. "plane_if_better": a point with a warped template is aligned to both,
    # and keeps the alignment whose patch agrees better with its template (the lower residual
    # variance; one more Lucas-Kanade pass over those points). README, "Templates warped through
    # the map's planes"
    "template_warp": "none",
    "warp_max_scale": 2.0,
    # the robust loss scale (pixels, or "adaptive") of the refinement from the aligned keypoints;
    # null: refinement.loss_scale_px. Measured with fast_learned, paired: 0.3 px x0.76 / x0.79 on
    # the temple but x1.22 rotation on Herz-Jesu-P8; "adaptive" x0.83 / x0.85 and x1.14. So no
    # preset sets it (README, "the loss scale, measured, not adopted")
    "loss_scale_px": None,
}


def _by_distance(map, candidates, center: np.ndarray) -> List[str]:
    """The candidate map images sorted by the distance of their camera centre to ``center``."""
    return sorted(candidates, key=lambda n: float(np.linalg.norm(map.pose(n).center.reshape(-1).cpu().numpy()
                                                                 - center)))


def _observations_in(map, name: str, rows: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Which of the ``points3D`` rows (M,) map image ``name`` observes, and where:
    ``(hit (M,) bool, keypoints (hit.sum(), 2))``."""
    k2p = np.asarray(map.kp_to_point[name])
    kp_idx = np.flatnonzero(k2p >= 0)
    if kp_idx.size == 0:
        return np.zeros(rows.shape[0], bool), np.zeros((0, 2))
    order = np.argsort(k2p[kp_idx], kind="stable")
    srt = k2p[kp_idx][order]
    pos = np.clip(np.searchsorted(srt, rows), 0, srt.size - 1)
    hit = srt[pos] == rows
    return hit, np.asarray(map.features[name]["keypoints"], np.float64)[kp_idx[order[pos[hit]]]]


def resolve_enabled(conf: Dict, have_map_images: bool) -> bool:
    """Whether a ``patch_alignment`` conf aligns: ``enabled`` True / False, or ``"auto"``: when
    the map images are there. Other values are errors."""
    e = conf.get("enabled", default_conf["enabled"])
    if e == "auto":
        return bool(have_map_images)
    if not isinstance(e, bool):
        raise ValueError(f"patch_alignment.enabled must be true, false or 'auto', got {e!r}")
    return e


def check_conf(conf: Dict) -> Tuple[int, str]:
    """(num_references, template_center) of a ``patch_alignment`` conf; bad values are errors."""
    k_refs = int(conf.get("num_references", default_conf["num_references"]))
    if k_refs < 1:
        raise ValueError(f"patch_alignment.num_references must be >= 1, got {conf.get('num_references')!r}")
    center = conf.get("template_center", default_conf["template_center"])
    if center not in ("keypoint", "projection"):
        raise ValueError(f"patch_alignment.template_center must be 'keypoint' or 'projection', got {center!r}")
    kc = conf.get("keypoint_covariance", default_conf["keypoint_covariance"])
    if kc not in ("alignment", "image"):
        raise ValueError(f"patch_alignment.keypoint_covariance must be 'alignment' or 'image', got {kc!r}")
    rv = conf.get("residual_variance", default_conf["residual_variance"])
    if not isinstance(rv, bool):
        raise ValueError(f"patch_alignment.residual_variance must be true or false, got {rv!r}")
    ls = conf.get("loss_scale_px")
    if ls is not None and ls != "adaptive" and (isinstance(ls, bool) or not isinstance(ls, (int, float)) or not ls > 0):
        raise ValueError(f"patch_alignment.loss_scale_px must be null, > 0 pixels or 'adaptive', got {ls!r}")
    a = conf.get("max_reference_angle_deg")
    if a is not None and (isinstance(a, bool) or not isinstance(a, (int, float)) or not 0 < a <= 180):
        raise ValueError(f"patch_alignment.max_reference_angle_deg must be null or in (0, 180] degrees, got {a!r}")
    views = conf.get("reference_views", default_conf["reference_views"])
    if views not in ("observing", "visible"):
        raise ValueError(f"patch_alignment.reference_views must be 'observing' or 'visible', got {views!r}")
    warp = conf.get("template_warp", default_conf["template_warp"])
    if warp not in ("none", "plane", "plane_if_better"):
        raise ValueError(f"patch_alignment.template_warp must be 'none', 'plane' or 'plane_if_better', got {warp!r}")
    ms = conf.get("warp_max_scale", default_conf["warp_max_scale"])
    if isinstance(ms, bool) or not isinstance(ms, (int, float)) or not ms > 1:
        raise ValueError(f"patch_alignment.warp_max_scale must be a number > 1, got {ms!r}")
    if views == "visible" and center != "projection":
        raise ValueError("patch_alignment.reference_views 'visible' needs template_center 'projection' (a map image "
                         "that does not observe a point has no keypoint of it)")
    return k_refs, center


def _in_camera(map, name: str, rows: np.ndarray):
    """(map image ``name``'s camera (float64), its (M, 3) camera-frame points of ``rows``)."""
    pose, cam = map.pose(name).to(torch.float64), map.camera(name).to(torch.float64)
    return cam, pose.transform(torch.from_numpy(np.asarray(map.points3D[rows], np.float64)))


def project_points(map, name: str, rows: np.ndarray) -> np.ndarray:
    """(M, 2) COLMAP pixels of the map's 3D points ``rows`` in map image ``name`` (its pose and camera)."""
    cam, pc = _in_camera(map, name, rows)
    return cam.project(pc).cpu().numpy()


def reference_observations(map, rows: np.ndarray, candidates,
                           center: np.ndarray) -> Tuple[np.ndarray, np.ndarray, List[str]]:
    """For each ``points3D`` row, the map image (among ``candidates``) observing it whose camera
    centre is nearest to ``center`` and the observation's keypoint position.

    Args:
        map: a :class:`~hloc_bpnp.mapping.Map`; rows: (M,) point rows; candidates: map image
            names to consider; center: (3,) the query's camera centre (world).
    Returns:
        ``(owner (M,), keypoints (M, 2), names)``: ``names`` the candidates sorted by distance,
        ``owner`` the index into ``names`` of each row's observing image (-1: none of them),
        ``keypoints`` that observation's position (COLMAP pixels; zeros where owner is -1).
    """
    names = _by_distance(map, candidates, center)
    rows = np.asarray(rows, np.int64)
    owner = np.full(rows.shape[0], -1, np.int64)
    kps = np.zeros((rows.shape[0], 2), np.float64)
    for j, n in enumerate(names):
        todo = np.flatnonzero(owner < 0)
        if todo.size == 0:
            break
        hit, kp = _observations_in(map, n, rows[todo])
        owner[todo[hit]] = j
        kps[todo[hit]] = kp
    return owner, kps, names


def visible_rows(map, rows: np.ndarray, names: List[str], margin: float) -> List[np.ndarray]:
    """Which ``points3D`` rows (M,) each map image of ``names`` shows: (M,) bool per image, true
    where the image observes the point (a keypoint of its track) and also where the point is in
    front of its camera and projected at least ``margin`` pixels inside the image. Rows that no
    image of ``names`` observes are shown nowhere (their match to the map is not confirmed)."""
    return _visibility(map, rows, names, margin)[0]


def _visibility(map, rows: np.ndarray, names: List[str], margin: float):
    """:func:`visible_rows` and, per image, the (M, 2) projections of the rows it was read from."""
    rows = np.asarray(rows, np.int64)
    observed = [_observations_in(map, n, rows)[0] for n in names]
    any_obs = np.any(observed, axis=0) if observed else np.zeros(rows.shape[0], bool)
    shown, pixels = [], []
    for n, obs in zip(names, observed):
        cam, pc = _in_camera(map, n, rows)
        x, inside = cam.project_with_valid(pc, min_depth=0.0, margin=margin)
        shown.append(obs | (any_obs & inside.cpu().numpy()))
        pixels.append(x.cpu().numpy())
    return shown, pixels


def template_affines(map, name: str, rows: np.ndarray, points2D: np.ndarray, query_pose, query_camera,
                     max_scale: float) -> Tuple[torch.Tensor, np.ndarray]:
    """The warps of the templates of ``points3D`` rows (M,) in map image ``name``: each point's
    plane (:attr:`~hloc_bpnp.mapping.Map.point_normals`) carries the query's pixel grid around
    its keypoint ``points2D`` (M, 2) (the query at ``query_pose`` / ``query_camera``) into the
    map image (:func:`~hloc_bpnp.geometry.plane_induced_affine`).

    Returns:
        ``(A (M, 2, 2) float32, warped (M,) bool)``: ``A`` the identity where a point has no
        normal, the plane's warp is not valid, or it scales by more than ``max_scale`` (its
        determinant outside ``[max_scale^-2, max_scale^2]`` or a singular value above it).
    """
    rows = np.asarray(rows, np.int64)
    normals = getattr(map, "point_normals", None)
    if normals is None or not len(rows):
        return torch.eye(2).expand(len(rows), 2, 2).clone(), np.zeros(len(rows), bool)
    A, valid = plane_induced_affine(torch.from_numpy(np.asarray(points2D, np.float64)), query_camera, query_pose,
                                    map.camera(name), map.pose(name),
                                    torch.from_numpy(np.asarray(map.points3D[rows], np.float64)),
                                    torch.from_numpy(np.asarray(normals[rows], np.float64)))
    det = torch.linalg.det(A)
    s_max = torch.linalg.matrix_norm(A, ord=2)
    ok = valid & (det > max_scale ** -2) & (det < max_scale ** 2) & (s_max <= max_scale)
    A = torch.where(ok[:, None, None], A, torch.eye(2, dtype=A.dtype))
    return A.float(), ok.cpu().numpy()


def align_to_map(query_image: torch.Tensor, points2D: np.ndarray, rows: np.ndarray, map,
                 map_images: Callable[[str], torch.Tensor], candidates, center: np.ndarray,
                 conf: Dict, return_tensors: bool = False, query_pose=None, query_camera=None):
    """Query keypoints ``points2D`` (M, 2) of 3D points ``rows`` (M,) aligned to their map
    observations (see :func:`reference_observations`), or with ``reference_views: visible`` to
    the 3D points' projections in the nearest map views that show them (:func:`visible_rows`).

    Args:
        query_image: (1, 1, H, W) gray query image (uint8, or float in [0, 1]).
        map_images: name -> (1, 1, H, W) gray map image (a :class:`MapImages`).
        candidates: the map images to take templates from; center: (3,) the query's camera
            centre (world), which orders them.
        query_pose, query_camera: the query's ``cam_from_world`` and camera, needed with
            ``conf["template_warp"]`` ``"plane"`` or ``"plane_if_better"`` (:func:`template_affines`).
    Returns:
        ((M, 2) aligned positions, info {"n_aligned", "n_points", "median_shift_px",
        "mean_references": the map views averaged per template, over the points with one,
        "median_residual_variance": of the patches of the points with a template against it
        (rejected ones at their start), 0 for a perfect match, ~2 for unrelated patches; None
        where no point has one, "n_warped": the points aligned to a template warped through their
        plane (at least one of its views warped)}),
        and with ``return_tensors`` the (M, 2, 2) structure tensors of the query's patches at the
        returned positions (the alignment's Gauss-Newton matrices; read with the alignment's
        radius and blur where a point has no map view). With ``conf["residual_variance"]`` each
        is divided by its patch's residual variance against the template (an information
        matrix: the inverse of the Lucas-Kanade covariance); a point no map view shows takes
        the median variance of the aligned ones.
    """
    query = as_gray_image(query_image)
    out = np.asarray(points2D, np.float64).copy()
    k_refs, center_mode = check_conf(conf)
    warp_mode = conf.get("template_warp", default_conf["template_warp"])
    warp = warp_mode in ("plane", "plane_if_better")
    both = warp_mode == "plane_if_better"  # align to both templates, keep the better-agreeing one
    if warp and (query_pose is None or query_camera is None):
        raise ValueError(f"patch_alignment.template_warp {warp_mode!r} needs the query's pose and camera "
                         "(align_to_map(..., query_pose=, query_camera=))")
    max_scale = float(conf.get("warp_max_scale", default_conf["warp_max_scale"]))
    warped = np.zeros(len(out), bool)

    def image(name):
        img, cam = map_images(name), map.camera(name)
        if (int(cam.width), int(cam.height)) != (img.shape[-1], img.shape[-2]):
            raise ValueError(f"patch alignment: map image {name!r} is {img.shape[-1]}x{img.shape[-2]} px "
                             f"but its camera is {int(cam.width)}x{int(cam.height)} (wrong map image folder?)")
        return img

    lk = (int(conf["radius"]), int(conf["iterations"]), float(conf["blur_sigma"]), float(conf["max_shift_px"]),
          float(conf["min_ncc"]))
    shown = None  # visible: per view, the points it shows and their projections there
    if conf.get("reference_views", default_conf["reference_views"]) == "visible":
        names = _by_distance(map, candidates, center)
        # the template (radius + the blur's support) inside the image
        shown, pixels = _visibility(map, rows, names, lk[0] + 3 * lk[2] + 1)
        owner = np.full(len(out), -1, np.int64)
        ref_kp = np.zeros((len(out), 2))
        for j in range(len(names) - 1, -1, -1):  # the nearest view that shows the point
            owner[shown[j]] = j
            ref_kp[shown[j]] = pixels[j][shown[j]]
    else:
        owner, ref_kp, names = reference_observations(map, rows, candidates, center)
    shifts = []
    n_ok = 0
    tensors = torch.zeros(len(out), 2, 2, dtype=torch.float64)
    variances = torch.full((len(out),), float("nan"), dtype=torch.float64)
    done = np.zeros(len(out), bool)
    if k_refs == 1 and not warp:  # one template per point, read by align_patches itself
        for j in np.unique(owner[owner >= 0]).tolist():
            s = np.flatnonzero(owner == j)
            ref = ref_kp[s]
            if center_mode == "projection" and shown is None:
                ref = project_points(map, names[j], np.asarray(rows, np.int64)[s])
            d, ok, H, v = align_patches(image(names[j]), query, torch.from_numpy(ref), torch.from_numpy(out[s]), *lk,
                                        return_tensors=True, return_residuals=True)
            tensors[torch.from_numpy(s)], variances[torch.from_numpy(s)], done[s] = H, v, True
            out[s] += d.cpu().numpy()
            n_ok += int(ok.sum())
            shifts.append(d[ok].norm(dim=-1).cpu().numpy())
    else:
        # the mean normalised patch of each point's observations in its k nearest observing images
        templ = torch.zeros(len(out), (2 * lk[0] + 1) ** 2)
        plain = templ.clone() if both else None  # the unwarped templates, to compare with
        count = np.zeros(len(out), np.int64)
        seen = owner >= 0
        rows64 = np.asarray(rows, np.int64)
        max_angle = conf.get("max_reference_angle_deg")
        for jn, n in enumerate(names):
            todo = np.flatnonzero(seen & (count < k_refs))
            if todo.size == 0:
                break
            if max_angle is not None:
                # a further reference only where it sees the point within max_angle of the query's ray
                X = np.asarray(map.points3D[rows64[todo]], np.float64)
                c = map.pose(n).to(torch.float64).center.reshape(3).cpu().numpy()
                a, b = c - X, np.asarray(center, np.float64).reshape(3) - X
                cos = (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1) + 1e-12)
                todo = todo[(count[todo] == 0) | (cos >= np.cos(np.deg2rad(float(max_angle))))]
                if todo.size == 0:
                    continue
            if shown is None:
                hit, kp = _observations_in(map, n, rows64[todo])
                if hit.any() and center_mode == "projection":
                    kp = project_points(map, n, rows64[todo[hit]])
            else:
                hit = shown[jn][todo]
                kp = pixels[jn][todo[hit]]
            if hit.any():
                A = None
                if warp:
                    A, w_ok = template_affines(map, n, rows64[todo[hit]], out[todo[hit]], query_pose, query_camera,
                                               max_scale)
                    warped[todo[hit]] |= w_ok
                    A = A if w_ok.any() else None  # nothing to warp: the unwarped reads, exactly
                patches = sample_patches(image(n), torch.from_numpy(kp), lk[0], lk[2], affines=A)
                templ[todo[hit]] += patches
                if both:
                    plain[todo[hit]] += patches if A is None else sample_patches(image(n), torch.from_numpy(kp),
                                                                                 lk[0], lk[2])
                count[todo[hit]] += 1
        s = np.flatnonzero(seen)
        t = templ[s]
        t = normalise_patches(t, eps=1e-6)[0]
        d, ok, H, v = align_to_templates(query, torch.from_numpy(out[s]), t, *lk, return_tensors=True,
                                         return_residuals=True)
        if both and warped[s].any():
            # the points with a warped template aligned to their unwarped one too: each keeps the
            # alignment whose patch agrees better with its template (the lower residual variance)
            w = np.flatnonzero(warped[s])
            wt = torch.from_numpy(w)
            d0, ok0, H0, v0 = align_to_templates(query, torch.from_numpy(out[s[w]]),
                                                 normalise_patches(plain[s[w]], eps=1e-6)[0], *lk,
                                                 return_tensors=True, return_residuals=True)
            use0 = v0 < v[wt]
            u = wt[use0]
            d[u], ok[u], H[u], v[u] = d0[use0].to(d.dtype), ok0[use0], H0[use0].to(H.dtype), v0[use0].to(v.dtype)
            warped[s[w[use0.cpu().numpy()]]] = False
        tensors[torch.from_numpy(s)], variances[torch.from_numpy(s)], done[s] = H, v, True
        out[s] += d.cpu().numpy()
        n_ok += int(ok.sum())
        shifts.append(d[ok].norm(dim=-1).cpu().numpy())
    sh = np.concatenate(shifts) if shifts else np.zeros(0)
    n_seen = int((owner >= 0).sum())
    refs = (float(count[owner >= 0].mean()) if k_refs > 1 else 1.0) if n_seen else 0.0
    info = {"n_aligned": n_ok, "n_points": int(rows.shape[0]),
            "median_shift_px": float(np.median(sh)) if sh.size else 0.0, "mean_references": refs,
            "median_residual_variance": float(variances[torch.from_numpy(done)].median()) if done.any() else None,
            "n_warped": int(warped.sum())}
    if not return_tensors:
        return out, info
    if not done.all():  # points no map view observes were not aligned: their tensors from the image
        rest = np.flatnonzero(~done)
        tensors[torch.from_numpy(rest)] = structure_tensors(query, torch.from_numpy(out[rest]), lk[0], lk[2])
    if conf.get("residual_variance", default_conf["residual_variance"]):
        known = torch.isfinite(variances)
        variances[~known] = variances[known].median() if known.any() else 1.0
        # a patch identical to its template (e.g. a map image aligned to itself) divides by 1e-6, not 0
        tensors = tensors / variances.clamp_min(1e-6)[:, None, None]
    return out, info, tensors
