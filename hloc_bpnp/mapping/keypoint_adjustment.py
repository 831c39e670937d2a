"""Keypoint adjustment of a map's tracks: the observations of each 3D point photometrically
aligned to each other (to one reference observation, or to their consensus), then the points
re-triangulated with the poses fixed.

Why: the observations of one 3D point are detections in different images, and a detector
places them on slightly different surface points (1-3 px on the Middlebury temple for XFeat).
Triangulated, such a point is consistent with none of them. Once the observations are
aligned to each other, they sit on one surface point, and so does the re-triangulated 3D
point; a query aligned to any of the map's observations of the point
(``localization.patch_alignment``) then lands on that same surface point. So an adjusted map
is meant for localization WITH query patch alignment (without it, on the temple, a map
adjusted by ``reference`` made the pose worse: 0.080 -> 0.096 deg).

Three methods (``method``):

- ``reference``: each track's reference is its observation whose camera centre is nearest to
  the mean of the track's camera centres (the middle of the views); every other observation
  is aligned to it by translation-only Lucas-Kanade
  (:func:`~hloc_bpnp.features.patch_lk.align_patches`, shifts bounded per coordinate, fits
  correlating below ``min_ncc`` keep their position). The 3D point then carries the
  reference's own detection error whole.
- ``consensus`` (PixSfM's idea, with image patches): ``rounds`` times, every observation is
  aligned to the mean normalised patch of its track's OTHER observations
  (:func:`~hloc_bpnp.features.patch_lk.align_to_templates`), the step damped and the track's
  mean step removed, so the track becomes consistent while keeping the average position of
  its detections (tested: on a rendered plane with 0.8 px of noise per observation, the
  points land 0.40 px from the truth against 0.86 px for ``reference``).

- ``plane`` (:mod:`~hloc_bpnp.mapping.point_refinement`, the multi-view-stereo idea): the 3D
  point itself moves, along the ray of its reference view, and a small plane patch through it
  takes a normal, so that the reference patch mapped through the plane's homography looks the
  same in every other view (within ``max_angle_deg``). Unlike the two translation-only methods
  it follows the foreshortening between views, and the point lands on the surface, which is
  what query alignment's templates (centred on the points' projections) need. The observations
  of a refined point move onto its projections.

Then the points are re-triangulated by Gauss-Newton on the reprojection error (poses and
cameras fixed, the current position as the start), and the model's 2D points and the
features' keypoints are moved together, so the map stays consistent when saved.

Measured on real scenes with ``xfeat_refined`` and query alignment (README, "Previous round:
where XFeat's error ... map keypoint adjustment"), leave-one-out median rotation error against
query alignment alone (with the earlier templates at the map keypoints): ``consensus`` -33%
on the Middlebury temple, -6% on fountain-P11, +12% on Herz-Jesu-P8 (wide baselines:
translation-only patches do not follow the foreshortening); ``reference`` is not robust. So only the opt-in mapping preset ``xfeat_refined_adjusted`` enables the stage.

All positions are COLMAP pixels (top-left pixel centre at (0.5, 0.5)); poses cam_from_world.
"""
from __future__ import annotations

import logging
import time
from typing import Callable, Dict, Mapping, Optional, Tuple

import numpy as np
import torch
from tqdm import tqdm

from ..features.patch_lk import MapImages, align_patches, align_to_templates, sample_patches
from ..geometry.camera import clamp_to_image
from .point_refinement import refine_points_on_planes
from .point_triangulation import registered_views, retriangulate, track_observations, write_points

logger = logging.getLogger(__name__)

default_conf = {
    "enabled": False,
    "radius": 5,          # patch half-size, pixels (11 x 11)
    "iterations": 10,     # Lucas-Kanade Gauss-Newton steps
    "blur_sigma": 1.0,    # Gaussian pre-smoothing of both images
    "max_shift_px": 3.0,  # bound of each shift coordinate, at every iteration
    "min_ncc": 0.3,       # aligned patches correlating less keep their observation where it was
    "max_angle_deg": 180.0,  # only observations seen within this angle of the reference's ray move
    "gn_iterations": 5,   # re-triangulation steps
    # reference: every observation aligned to its track's reference observation (one pass);
    # consensus: every observation aligned to the mean patch of its track's other observations,
    # damped, the track's mean shift removed (it keeps the average of the detections), `rounds`
    # times (its template from the track's observations within max_angle_deg of its own ray)
    "method": "consensus",
    "rounds": 4,
    "damping": 0.5,
    # plane: each point's depth along its reference view's ray and a plane normal fitted to the
    # patches of all its views seen within max_angle_deg (mapping/point_refinement.py), the
    # patch sampled every `stride` pixels, `iterations` Levenberg-Marquardt steps, the depth
    # bounded by max_shift_px of motion in the view of largest parallax
    "stride": 1,
}


def adjustment_config(conf=None) -> Dict:
    """``default_conf`` with ``conf``'s keys; unknown keys are errors."""
    conf = dict(conf or {})
    unknown = sorted(set(conf) - set(default_conf))
    if unknown:
        raise ValueError(f"keypoint_adjustment: unknown keys {unknown}; known: {sorted(default_conf)}")
    return {**default_conf, **conf}


def _as_image_source(images) -> Callable[[str], torch.Tensor]:
    return images if callable(images) and not isinstance(images, Mapping) else MapImages(images)


def _reference_pairs(rec, centers: Dict[int, np.ndarray], max_angle_deg: float):
    """Per track, its reference observation and the (reference, other) observation pairs to
    align: ``{(ref image id, image id): [(ref 2D idx, 2D idx), ...]}``."""
    work: Dict[Tuple[int, int], list] = {}
    cos_max = np.cos(np.deg2rad(max_angle_deg))
    for p in rec.points3D.values():
        el = [(int(e.image_id), int(e.point2D_idx)) for e in p.track.elements if int(e.image_id) in centers]
        if len(el) < 2:
            continue
        cs = np.stack([centers[i] for i, _ in el])
        r = int(np.argmin(np.linalg.norm(cs - cs.mean(0), axis=1)))
        ri, rk = el[r]
        rays = np.asarray(p.xyz)[None] - cs
        rays /= np.linalg.norm(rays, axis=1, keepdims=True).clip(1e-12)
        cosang = rays @ rays[r]
        for j, (i, k) in enumerate(el):
            if j != r and cosang[j] >= cos_max:
                work.setdefault((ri, i), []).append((rk, k))
    return work


def _lk_args(conf):
    return (int(conf["radius"]), int(conf["iterations"]), float(conf["blur_sigma"]), float(conf["max_shift_px"]),
            float(conf["min_ncc"]))


def _align_to_references(rec, kp, regs, centers, source, conf, progress):
    """One pass: each observation aligned to its track's reference observation."""
    work = _reference_pairs(rec, centers, float(conf["max_angle_deg"]))
    new = {i: k.copy() for i, k in kp.items()}
    shifts, n_ok, n_try = [], 0, 0
    for (ri, i), pairs in tqdm(sorted(work.items()), desc="keypoint adjustment", disable=not progress):
        a = np.asarray(pairs, np.int64)
        d, ok = align_patches(source(regs[ri].name), source(regs[i].name), torch.from_numpy(kp[ri][a[:, 0]]),
                              torch.from_numpy(kp[i][a[:, 1]]), *_lk_args(conf))
        new[i][a[:, 1]] += d.cpu().numpy()
        n_ok += int(ok.sum())
        n_try += len(a)
        shifts.append(d[ok].norm(dim=-1).cpu().numpy())
    return new, shifts, n_ok, n_try


def _align_to_consensus(rec, kp, regs, centers, source, conf, progress):
    """Rounds of: every observation aligned to the mean normalised patch of the other
    observations of its track seen within ``max_angle_deg`` of its own ray, the step damped and
    the track's mean step removed (so the track keeps the average position of its detections),
    total shifts bounded by ``max_shift_px``."""
    obs_t, obs_i, obs_k, rays = [], [], [], []
    for t, p in enumerate(rec.points3D.values()):
        el = [(int(e.image_id), int(e.point2D_idx)) for e in p.track.elements if int(e.image_id) in regs]
        if len(el) >= 2:
            obs_t += [t] * len(el)
            obs_i += [i for i, _ in el]
            obs_k += [k for _, k in el]
            r = np.asarray(p.xyz)[None] - np.stack([centers[i] for i, _ in el])
            rays.append(r / np.linalg.norm(r, axis=1, keepdims=True).clip(1e-12))
    new = {i: k.copy() for i, k in kp.items()}
    if not obs_t:
        return new, [], 0, 0
    obs_t = torch.tensor(obs_t)
    obs_i, obs_k = np.array(obs_i), np.array(obs_k)
    _, obs_t = torch.unique(obs_t, return_inverse=True)
    n_tracks = int(obs_t.max()) + 1
    count = torch.bincount(obs_t, minlength=n_tracks).double()
    # (a, b) pairs of observations of one track whose rays are within max_angle_deg
    cos_max = np.cos(np.deg2rad(float(conf["max_angle_deg"])))
    pa, pb, start = [], [], 0
    for r in rays:
        a, b = np.nonzero((r @ r.T >= cos_max - 1e-12) & ~np.eye(len(r), dtype=bool))
        pa.append(a + start)
        pb.append(b + start)
        start += len(r)
    pa, pb = torch.from_numpy(np.concatenate(pa)), torch.from_numpy(np.concatenate(pb))
    has_partner = torch.bincount(pa, minlength=start) > 0
    x0 = torch.from_numpy(np.stack([kp[i][k] for i, k in zip(obs_i, obs_k)]))
    x = x0.clone()
    by_image = {int(i): torch.from_numpy(np.flatnonzero((obs_i == i) & has_partner.cpu().numpy())) for i in np.unique(obs_i)}
    radius, blur, bound = int(conf["radius"]), float(conf["blur_sigma"]), float(conf["max_shift_px"])
    ok_any = torch.zeros(len(x), dtype=torch.bool)
    for _ in tqdm(range(int(conf["rounds"])), desc="keypoint adjustment", disable=not progress):
        patches = torch.zeros(len(x), (2 * radius + 1) ** 2)
        for i, sel in by_image.items():
            patches[sel] = sample_patches(source(regs[i].name), x[sel], radius, blur)
        templ = torch.zeros_like(patches).index_add_(0, pa, patches[pb])  # the near partners' sum
        templ = (templ - templ.mean(-1, keepdim=True)) / (templ.std(-1, keepdim=True) + 1e-6)
        step = torch.zeros_like(x)
        for i, sel in by_image.items():
            d, ok = align_to_templates(source(regs[i].name), x[sel], templ[sel], *_lk_args(conf))
            step[sel] = float(conf["damping"]) * d
            ok_any[sel] |= ok
        mean = torch.zeros(n_tracks, 2, dtype=x.dtype).index_add_(0, obs_t, step) / count[:, None]
        x = x0 + (x + step - mean[obs_t] - x0).clamp(-bound, bound)
    for j, (i, k) in enumerate(zip(obs_i.tolist(), obs_k.tolist())):
        new[i][k] = x[j].cpu().numpy()
    moved = (x - x0).norm(dim=-1)
    return new, [moved[ok_any].cpu().numpy()], int(ok_any.sum()), len(x)


def _refine_on_planes(rec, kp, regs, cameras, poses, source, conf):
    """Each point's depth along its reference view's ray and a local plane's normal fitted to
    the views' patches (:func:`~hloc_bpnp.mapping.point_refinement.refine_points_on_planes`);
    the observations of a refined point move onto its projections. Returns the new keypoints,
    the moves of the refined observations, the counts, the new points by id and the refined
    points' ``(ids (K,), normals (K, 3))``."""
    pids = list(rec.points3D)
    tracks = [[int(e.image_id) for e in rec.points3D[p].track.elements if int(e.image_id) in regs] for p in pids]
    xyz = torch.from_numpy(np.stack([np.asarray(rec.points3D[p].xyz, np.float64) for p in pids])) if pids else \
        torch.zeros(0, 3, dtype=torch.float64)
    X, refined, plane_stats = refine_points_on_planes(
        xyz, tracks, cameras, poses, lambda i: source(regs[i].name), radius=int(conf["radius"]),
        blur_sigma=float(conf["blur_sigma"]), iterations=int(conf["iterations"]),
        max_depth_px=float(conf["max_shift_px"]), max_angle_deg=float(conf["max_angle_deg"]),
        min_ncc=float(conf["min_ncc"]), stride=int(conf["stride"]))
    new = {i: k.copy() for i, k in kp.items()}
    obs = [(j, int(e.image_id), int(e.point2D_idx)) for j, p in enumerate(pids) if refined[j]
           for e in rec.points3D[p].track.elements if int(e.image_id) in regs]
    moves = []
    if obs:
        o = np.asarray(obs, np.int64)
        for i in np.unique(o[:, 1]).tolist():
            s = o[o[:, 1] == i]
            x = cameras[i].project(poses[i].transform(X[torch.from_numpy(s[:, 0])])).cpu().numpy()
            moves.append(np.linalg.norm(x - kp[i][s[:, 2]], axis=1))
            new[i][s[:, 2]] = x
    n_try = sum(len(t) for t in tracks)
    start = {p: X[j].cpu().numpy() for j, p in enumerate(pids) if refined[j]}
    keep = refined.cpu().numpy()
    normals = (np.asarray(pids, np.int64)[keep], plane_stats["normals"][refined].cpu().numpy())
    return new, moves, len(obs), n_try, start, normals


def adjust_keypoints(rec, features: Mapping[str, Mapping], images, conf=None,
                     progress: bool = False) -> Tuple[Dict[str, dict], Dict]:
    """Align each track's observations to each other (``conf["method"]``), re-triangulate.

    Args:
        rec: ``pycolmap.Reconstruction`` whose registered images' 2D points are the keypoints
            of ``features``; modified in place (3D point positions and errors, 2D points).
        features: name -> feature dict (numpy or torch) of at least every registered image.
        images: the images: a folder, a name -> array mapping, or a callable name -> (1, 1, H, W)
            gray tensor (e.g. a :class:`~hloc_bpnp.features.patch_lk.MapImages`).
        conf: :data:`default_conf` overrides.
    Returns:
        ``(features, stats)``: a copy of ``features`` whose registered images' keypoints are
        the adjusted ones (other entries unchanged), and ``{"n_observations", "n_tried",
        "n_aligned", "median_shift_px", "reprojection_px_before", "reprojection_px_after",
        "seconds", "point_normals"}`` (reprojection: median over observations; ``point_normals``
        the fitted planes' ``(point3D_ids (K,), world unit normals (K, 3))`` of the points that
        method ``plane`` refined, K = 0 for the other methods: the map keeps them,
        :meth:`~hloc_bpnp.mapping.Map.from_reconstruction`).
    Raises:
        ValueError: an image whose size is not its camera's, a keypoint count that is not the
            model's 2D point count, an unknown key or method.
        KeyError: a registered image without features.
    """
    conf = adjustment_config(conf)
    t0 = time.time()
    source = _as_image_source(images)
    regs, cameras, poses = registered_views(rec)
    centers, kp = {}, {}
    for i, im in regs.items():
        centers[i] = poses[i].center.reshape(-1).cpu().numpy()
        if im.name not in features:
            raise KeyError(f"keypoint adjustment: no features for map image {im.name!r}")
        k = np.asarray(features[im.name]["keypoints"], np.float64)
        if len(k) != len(im.points2D):
            raise ValueError(f"keypoint adjustment: image {im.name!r} has {len(k)} keypoints but "
                             f"{len(im.points2D)} 2D points in the model")
        kp[i] = k
    pids, obs_row, obs_img, idx = track_observations(rec, regs)
    for j in np.unique(obs_img).tolist():
        im, cam = source(regs[j].name), rec.cameras[regs[j].camera_id]
        if (int(cam.width), int(cam.height)) != (im.shape[-1], im.shape[-2]):
            raise ValueError(f"keypoint adjustment: image {regs[j].name!r} is {im.shape[-1]}x{im.shape[-2]} px "
                             f"but its camera is {int(cam.width)}x{int(cam.height)} (wrong image folder?)")
    start = {}
    normals = (np.zeros(0, np.int64), np.zeros((0, 3)))
    if conf["method"] == "reference":
        new, shifts, n_ok, n_try = _align_to_references(rec, kp, regs, centers, source, conf, progress)
    elif conf["method"] == "consensus":
        new, shifts, n_ok, n_try = _align_to_consensus(rec, kp, regs, centers, source, conf, progress)
    elif conf["method"] == "plane":
        new, shifts, n_ok, n_try, start, normals = _refine_on_planes(rec, kp, regs, cameras, poses, source, conf)
    else:
        raise ValueError(f"keypoint_adjustment.method must be 'reference', 'consensus' or 'plane', "
                         f"got {conf['method']!r}")
    for i, im in regs.items():  # a moved observation stays in the image (LightGlue refuses others)
        cam = rec.cameras[im.camera_id]
        moved = np.any(new[i] != kp[i], axis=1)
        new[i][moved] = clamp_to_image(new[i][moved], cam.width, cam.height)
    stats = {"n_observations": len(obs_img), "n_aligned": n_ok, "n_tried": n_try,
             "median_shift_px": float(np.median(np.concatenate(shifts))) if shifts and n_ok else 0.0,
             "point_normals": normals}
    if len(obs_img):
        uv_old = torch.from_numpy(np.stack([kp[i][k] for i, k in zip(obs_img, idx)]))
        uv = torch.from_numpy(np.stack([new[i][k] for i, k in zip(obs_img, idx)]))
        X0 = torch.from_numpy(np.stack([np.asarray(rec.points3D[p].xyz, np.float64) for p in pids]))
        _, r0 = retriangulate(X0, obs_row, obs_img, uv_old, cameras, poses, 0)
        if start:
            X0 = torch.from_numpy(np.stack([start.get(p, np.asarray(rec.points3D[p].xyz, np.float64)) for p in pids]))
        X, r = retriangulate(X0, obs_row, obs_img, uv, cameras, poses, int(conf["gn_iterations"]))
        write_points(rec, pids, X, obs_row, r)
        stats.update(reprojection_px_before=float(r0.median()), reprojection_px_after=float(r.median()))
    for i, im in regs.items():
        pts = im.points2D  # pycolmap's own list: assigning an element's xy moves the model's 2D point
        for j in np.flatnonzero(np.any(new[i] != kp[i], axis=1)).tolist():
            pts[j].xy = new[i][j]
    out = {}
    names = {im.name: i for i, im in regs.items()}
    for n, f in features.items():
        if n in names:
            f = dict(f)
            k = f["keypoints"]
            adj = new[names[n]]
            f["keypoints"] = (torch.as_tensor(adj, dtype=k.dtype) if isinstance(k, torch.Tensor)
                              else adj.astype(np.asarray(k).dtype))
        out[n] = f
    stats["seconds"] = time.time() - t0
    logger.info("Keypoint adjustment: %d/%d observations aligned (median shift %.2f px), median reprojection "
                "%.3f -> %.3f px, %.1f s", n_ok, n_try, stats["median_shift_px"], stats.get("reprojection_px_before", 0),
                stats.get("reprojection_px_after", 0), stats["seconds"])
    return out, stats


def adjust_if_enabled(rec, features: Mapping[str, Mapping], images, conf: Mapping,
                      progress: bool = False) -> Tuple[Mapping[str, Mapping], Optional[Tuple[np.ndarray, np.ndarray]]]:
    """The mapping pipelines' step: :func:`adjust_keypoints` with ``conf`` (a mapping config's
    ``keypoint_adjustment`` section) when it is enabled, else ``features`` unchanged. Returns
    ``(features, point_normals)``: the normals as ``Map.from_reconstruction`` takes them (None
    when the step is off or fitted no plane)."""
    if not conf["enabled"]:
        return features, None
    if images is None:
        raise ValueError("keypoint_adjustment needs the images of the map (an image folder or name -> array), "
                         "got none")
    feats, stats = adjust_keypoints(rec, features, images, conf, progress=progress)
    normals = stats["point_normals"]
    return feats, (normals if len(normals[0]) else None)

