"""Training data for the keypoint refiner, computed ONCE per posed scene and cached.

The extractor is frozen, so everything the refiner's losses need can be precomputed at the
evaluation scale (same resolution and keypoint count as the feature preset):

* per keypoint (all images concatenated): its [image, heatmap] patch, the detector's position
  in original pixels, the original-pixels-per-network-pixel scale, its undistorted normalized
  coordinates and their 2x2 Jacobian w.r.t. the pixel position (exact for pinhole cameras, a
  linearisation under distortion), so a refined position ``p + s * offset`` maps to
  ``n0 + J (s * offset)``;
* matches: for every pair of images, mutual nearest neighbours of the descriptors whose
  Sampson error under the known poses is below ``max_error`` network pixels; with the pair's
  essential matrix and the focal scale that turns normalized errors into pixels;
* pose problems (optional, for losses through BPnP): per query image, 2D-3D correspondences
  whose 3D points were triangulated from the OTHER images only (the query is never in its own
  map): a fold map of the others (:func:`hloc_bpnp.mapping.build_map_from_poses`, poses fixed)
  and the query's matches to its keypoints with a 3D point, kept when they reproject within
  ``max_error`` network pixels under the known pose.

``build_refiner_scene`` computes it; ``cached_refiner_scene`` stores it under a cache folder
keyed by scene, feature config and options.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Union

import torch

from ..io.atomic import atomic_path
from ..io.scene import Scene

logger = logging.getLogger(__name__)

DATA_VERSION = 1


@dataclass
class PoseProblem:
    """One query's 2D-3D correspondences (3D from a map without the query)."""

    name: str
    kp: torch.Tensor          # (n,) long global keypoint indices (into RefinerScene arrays)
    points3d: torch.Tensor    # (n, 3) float64
    K: torch.Tensor           # (3, 3) float64 (pinhole part of the camera; distortion: see Jacobians)
    pose: torch.Tensor        # (6,) float64 [axis-angle, t] ground truth cam_from_world


@dataclass
class RefinerScene:
    """Cached refiner training data of one scene (all tensors CPU)."""

    name: str
    image_names: List[str]
    patches: torch.Tensor     # (N, 2, S, S) float32
    base: torch.Tensor        # (N, 2) float64 detector keypoints, original pixels (COLMAP convention)
    scale: torch.Tensor       # (N, 2) float64 original pixels per network pixel
    image: torch.Tensor       # (N,) long image index
    norm0: torch.Tensor       # (N, 2) float64 undistorted normalized coordinates of ``base``
    jac: torch.Tensor         # (N, 2, 2) float64 d norm / d pixel
    matches: torch.Tensor     # (M, 2) long global keypoint indices (image a, image b)
    match_pair: torch.Tensor  # (M,) long pair index
    E: torch.Tensor           # (P, 3, 3) float64 essential matrices, x_b^T E x_a = 0
    focal: torch.Tensor       # (P,) float64 sqrt(f_a f_b) (mean focal lengths): normalized -> pixels
    pairs: List[tuple] = field(default_factory=list)
    poses: List[PoseProblem] = field(default_factory=list)

    def to_dict(self) -> Dict:
        d = {k: getattr(self, k) for k in ("patches", "base", "scale", "image", "norm0", "jac", "matches",
                                            "match_pair", "E", "focal")}
        d["meta"] = {"name": self.name, "image_names": self.image_names, "pairs": [list(p) for p in self.pairs],
                     "version": DATA_VERSION}
        d["poses"] = [{"name": p.name, "kp": p.kp, "points3d": p.points3d, "K": p.K, "pose": p.pose}
                      for p in self.poses]
        return d

    @classmethod
    def from_dict(cls, d: Mapping) -> "RefinerScene":
        m = d["meta"]
        return cls(m["name"], list(m["image_names"]), *(d[k] for k in ("patches", "base", "scale", "image", "norm0",
                                                                        "jac", "matches", "match_pair", "E", "focal")),
                   pairs=[tuple(p) for p in m["pairs"]], poses=[PoseProblem(**p) for p in d["poses"]])

    def subset_images(self, names: Sequence[str]) -> "RefinerScene":
        """Only the matches and pose problems among ``names`` (keypoint arrays are shared)."""
        keep_img = torch.tensor([n in set(names) for n in self.image_names])
        ok = keep_img[self.image[self.matches[:, 0]]] & keep_img[self.image[self.matches[:, 1]]]
        return RefinerScene(f"{self.name}[{len(names)}]", self.image_names, self.patches, self.base, self.scale,
                            self.image, self.norm0, self.jac, self.matches[ok], self.match_pair[ok], self.E,
                            self.focal, self.pairs, [p for p in self.poses if p.name in set(names)])


def essential(pose_a, pose_b) -> torch.Tensor:
    """(3, 3) essential matrix with x_b^T E x_a = 0 for normalized coordinates (poses cam_from_world)."""
    from ..geometry.pose import skew

    rel = pose_b.to(torch.float64) @ pose_a.to(torch.float64).inv()
    return skew(rel.t) @ rel.R


def sampson_normalized(E: torch.Tensor, na: torch.Tensor, nb: torch.Tensor) -> torch.Tensor:
    """Sampson distance (normalized units) of (M, 2) correspondences under (M, 3, 3) or (3, 3) E."""
    ha = torch.cat([na, torch.ones_like(na[:, :1])], -1)
    hb = torch.cat([nb, torch.ones_like(nb[:, :1])], -1)
    if E.ndim == 2:
        E = E.expand(na.shape[0], 3, 3)
    Ea = torch.einsum("mij,mj->mi", E, ha)
    Etb = torch.einsum("mji,mj->mi", E, hb)
    num = (hb * Ea).sum(-1)
    den = Ea[:, 0] ** 2 + Ea[:, 1] ** 2 + Etb[:, 0] ** 2 + Etb[:, 1] ** 2
    return num.abs() / den.clamp_min(1e-30).sqrt()


def _normalized_with_jacobian(camera, pts: torch.Tensor, eps: float = 0.25):
    """Undistorted normalized coordinates (N, 2) and d/dpixel (N, 2, 2) (central differences)."""
    cam = camera.to(torch.float64)
    pts = pts.to(torch.float64)
    n0 = cam.unproject(pts)
    cols = []
    for d in range(2):
        e = torch.zeros(2, dtype=torch.float64)
        e[d] = eps
        cols.append((cam.unproject(pts + e) - cam.unproject(pts - e)) / (2 * eps))
    return n0, torch.stack(cols, -1)


def mutual_nn(d0: torch.Tensor, d1: torch.Tensor) -> torch.Tensor:
    """(M, 2) index pairs of mutual nearest neighbours of unit descriptors."""
    if d0.shape[0] == 0 or d1.shape[0] == 0:
        return torch.zeros(0, 2, dtype=torch.long)
    sim = d0 @ d1.T
    nn01 = sim.argmax(1)
    nn10 = sim.argmax(0)
    i = torch.arange(d0.shape[0])
    ok = nn10[nn01] == i
    return torch.stack([i[ok], nn01[ok]], -1)


def build_refiner_scene(scene: Scene, name: str, features: Union[str, Dict], patch_size: int,
                        max_error: float = 3.0, min_matches: int = 30, pose_problems: bool = True,
                        mapping: Union[str, Dict] = "xfeat", pairs: Optional[Sequence[tuple]] = None,
                        max_pose_problems: Optional[int] = None, fold_neighbors: int = 10,
                        images: Optional[Sequence[str]] = None, progress: bool = False) -> RefinerScene:
    """Extract (frozen detector, no refiner), match, verify and (optionally) build pose problems.

    Args:
        scene: posed images (cameras + cam_from_world), ``scene.image_dir`` holding them.
        features: feature preset/config of a refinable extractor (XFeat).
        patch_size: the refiner's patch side.
        max_error: inlier threshold in network pixels (Sampson / reprojection).
        min_matches: pairs with fewer inliers are dropped.
        pose_problems: build the leave-query-out 2D-3D problems (one fold map per image).
        mapping: mapping preset of the fold maps (its features are replaced by these ones).
        pairs: image pairs to match (default: all pairs; for large maps: covisible pairs).
        max_pose_problems: at most this many queries (evenly spaced in name order).
        fold_neighbors: a query's fold map holds the (up to) this many other images sharing
            the most verified matches with it.
        images: use only these images of the scene (e.g. a user's map without the images a
            refiner will be evaluated on): keypoints, matches and pose problems among them only.
    Raises:
        ValueError: the scene yields no verified pair (names the scene), or ``images`` names an
            image the scene does not have.
    """
    from ..config import load_config, merge
    from ..features import build_extractor
    from tqdm import tqdm

    from ..io.image import read_image

    if scene.image_dir is None:
        raise ValueError(f"scene {name!r}: no image folder")
    if images is not None:
        missing = sorted(set(images) - set(scene.names))
        if missing:
            raise ValueError(f"scene {name!r}: images {missing[:3]} are not in the scene")
        scene = scene.subset(images)
    fconf = load_config("features", features) if isinstance(features, str) else dict(features)
    fconf = merge(fconf, {"refiner": None})
    ext = build_extractor(fconf)
    if not hasattr(ext, "extract_with_patches"):
        raise ValueError(f"features {fconf.get('model')!r} have no refiner support (XFeat has)")
    names = list(scene.names)
    feats = {}
    for n in tqdm(names, desc=f"{name}: extraction", disable=not progress):
        im = scene[n]
        if im.pose is None:
            raise ValueError(f"scene {name!r}: image {n!r} has no pose")
        feats[n] = ext.extract_with_patches(read_image(Path(scene.image_dir) / n, grayscale=False), patch_size)
    offsets, o = {}, 0
    for n in names:
        offsets[n] = o
        o += feats[n]["keypoints"].shape[0]
    base = torch.cat([feats[n]["keypoints"] for n in names]).double()
    norms, jacs = [], []
    for n in names:
        n0, J = _normalized_with_jacobian(scene[n].camera, feats[n]["keypoints"])
        norms.append(n0)
        jacs.append(J)
    norm0, jac = torch.cat(norms), torch.cat(jacs)
    scale = torch.cat([feats[n]["scale"].double().expand(feats[n]["keypoints"].shape[0], 2) for n in names])
    image = torch.cat([torch.full((feats[n]["keypoints"].shape[0],), i, dtype=torch.long)
                       for i, n in enumerate(names)])
    patches = torch.cat([feats[n]["patches"] for n in names])
    Es, focals, pair_list, matches, match_pair = [], [], [], [], []
    if pairs is None:
        pairs = [(a, b) for i, a in enumerate(names) for b in names[i + 1:]]
    for a, b in tqdm(pairs, desc=f"{name}: matching", disable=not progress):
        if a not in feats or b not in feats or a == b:
            raise ValueError(f"scene {name!r}: pair ({a!r}, {b!r}) names an image that is not in the scene")
        mm = mutual_nn(feats[a]["descriptors"], feats[b]["descriptors"])
        if mm.shape[0] == 0:
            continue
        E = essential(scene[a].pose, scene[b].pose)
        fa, fb = scene[a].camera.f.double().mean(), scene[b].camera.f.double().mean()
        f = torch.sqrt(fa * fb)
        ga, gb = mm[:, 0] + offsets[a], mm[:, 1] + offsets[b]
        e = sampson_normalized(E, norm0[ga], norm0[gb]) * f
        s = torch.sqrt(scale[ga].mean(-1) * scale[gb].mean(-1))
        ok = e < max_error * s
        if int(ok.sum()) < min_matches:
            continue
        matches.append(torch.stack([ga[ok], gb[ok]], -1))
        match_pair.append(torch.full((int(ok.sum()),), len(pair_list), dtype=torch.long))
        Es.append(E)
        focals.append(f)
        pair_list.append((a, b))
    if not pair_list:
        raise ValueError(f"scene {name!r}: no image pair has {min_matches} matches consistent with the known poses "
                         f"(wrong poses or intrinsics?)")
    rs = RefinerScene(name, names, patches, base, scale, image, norm0, jac, torch.cat(matches), torch.cat(match_pair),
                      torch.stack(Es), torch.stack(focals), pair_list)
    if pose_problems:
        mconf = load_config("mapping", mapping) if isinstance(mapping, str) else dict(mapping)
        queries = names
        if max_pose_problems and len(names) > max_pose_problems:
            queries = [names[int(i)] for i in torch.linspace(0, len(names) - 1, max_pose_problems).round().long()]
        rs.poses = _pose_problems(scene, rs, feats, offsets, merge(mconf, {"features": fconf}), max_error,
                                  queries, fold_neighbors, progress)
    logger.info("refiner data %s: %d keypoints, %d pairs, %d matches, %d pose problems", name, base.shape[0],
                len(pair_list), rs.matches.shape[0], len(rs.poses))
    return rs


def _pose_problems(scene: Scene, rs: RefinerScene, feats: Dict, offsets: Dict, mconf: Dict,
                   max_error: float, queries: Sequence[str], fold_neighbors: int,
                   progress: bool = False) -> List[PoseProblem]:
    from tqdm import tqdm

    from ..mapping import build_map_from_poses

    names = rs.image_names
    plain = {n: {k: feats[n][k] for k in ("keypoints", "descriptors", "scores", "image_size")} for n in names}
    pair_of = {p: i for i, p in enumerate(rs.pairs)}
    counts = torch.bincount(rs.match_pair, minlength=len(rs.pairs))
    out = []
    for q in tqdm(queries, desc=f"{rs.name}: leave-query-out maps", disable=not progress):
        shared = sorted(((int(counts[i]), b if a == q else a) for (a, b), i in pair_of.items() if q in (a, b)),
                        reverse=True)
        others = [n for _, n in shared[:fold_neighbors]]
        if len(others) < 3:
            logger.warning("scene %s: query %s has %d verified neighbours (< 3); no pose problem", rs.name, q,
                           len(others))
            continue
        try:
            m = build_map_from_poses(scene.subset(others), conf=mconf, features={n: plain[n] for n in others},
                                     progress=False)
        except (RuntimeError, ValueError) as e:
            raise ValueError(f"scene {rs.name!r}: triangulating the map without {q!r} failed: {e}") from e
        kq, X = [], []
        seen = set()
        for o in others:
            key = (q, o) if (q, o) in pair_of else (o, q)
            if key not in pair_of or o not in m.kp_to_point:
                continue
            sel = rs.match_pair == pair_of[key]
            mm = rs.matches[sel]
            gq, go = (mm[:, 0], mm[:, 1]) if key[0] == q else (mm[:, 1], mm[:, 0])
            rows = torch.as_tensor(m.kp_to_point[o])[go - offsets[o]]
            for a, r in zip(gq.tolist(), rows.tolist()):
                if r >= 0 and a not in seen:
                    seen.add(a)
                    kq.append(a)
                    X.append(m.points3D[r])
        if len(kq) < 12:
            logger.warning("scene %s: query %s has only %d 2D-3D matches without itself; skipped", rs.name, q, len(kq))
            continue
        kq_t = torch.tensor(kq)
        X_t = torch.as_tensor(__import__("numpy").asarray(X), dtype=torch.float64)
        im = scene[q]
        cam = im.camera.to(torch.float64)
        proj = cam.project(im.pose.to(torch.float64).transform(X_t))
        err = (proj - rs.base[kq_t]).norm(dim=-1)
        ok = err < max_error * rs.scale[kq_t].mean(-1)
        if int(ok.sum()) < 12:
            continue
        K = cam.K() if callable(cam.K) else cam.K
        out.append(PoseProblem(q, kq_t[ok], X_t[ok], K.to(torch.float64), im.pose.to(torch.float64).aa_t()))
    return out


def scene_geometry_digest(scene: Scene) -> str:
    """A digest of what the cached data depends on in ``scene`` besides its pixels: each image's
    name, camera (model, size, parameters) and pose. Two scenes of one folder with different
    poses (e.g. a pseudo ground truth, :func:`hloc_bpnp.protocols.gt_consistency.pseudo_ground_truth`)
    get different caches."""
    h = hashlib.sha1()
    for im in sorted(scene.images, key=lambda i: i.name):
        c = im.camera
        h.update(f"{im.name}|{c.model}|{int(c.width)}x{int(c.height)}|".encode())
        h.update(c.params.detach().cpu().to(torch.float64).numpy().tobytes())
        if im.pose is not None:
            h.update(im.pose.R.detach().cpu().to(torch.float64).numpy().tobytes())
            h.update(im.pose.t.detach().cpu().to(torch.float64).numpy().tobytes())
        else:
            h.update(b"no pose")
    return h.hexdigest()[:16]


def _cache_key(scene_dir: Path, fconf: Dict, opts: Dict, geometry: str) -> str:
    h = hashlib.sha1(json.dumps({"scene": str(scene_dir.resolve()), "features": fconf, "opts": opts,
                                 "geometry": geometry, "version": DATA_VERSION},
                                sort_keys=True, default=str).encode()).hexdigest()
    return h[:16]


def default_cache_dir() -> Path:
    return Path(os.environ.get("HLOC_BPNP_CACHE", Path.home() / ".cache" / "hloc_bpnp")) / "refiner_data"


def cached_refiner_scene(scene_dir: Union[str, Path], features: Union[str, Dict], patch_size: int,
                         cache_dir: Optional[Union[str, Path]] = None, scene: Optional[Scene] = None,
                         **kwargs) -> RefinerScene:
    """:func:`build_refiner_scene` of a scene folder (or ``scene`` with that folder's name),
    cached in ``cache_dir`` (default ``$HLOC_BPNP_CACHE`` or ``~/.cache/hloc_bpnp``). The cache
    key holds the folder, the features, the options and :func:`scene_geometry_digest` of the
    scene: the same folder with other poses or cameras is built anew."""
    from ..config import load_config
    from .real import load_real_scene

    scene_dir = Path(scene_dir)
    fconf = load_config("features", features) if isinstance(features, str) else dict(features)
    fconf = {k: v for k, v in fconf.items() if k not in ("refiner", "refiner_conf", "preset")}
    opts = {"patch_size": patch_size, **kwargs}
    opts.pop("progress", None)
    if opts.get("images") is not None:
        opts["images"] = sorted(opts["images"])
    cdir = Path(cache_dir) if cache_dir else default_cache_dir()
    scene = scene if scene is not None else load_real_scene(scene_dir)
    path = cdir / f"{scene_dir.name}_{_cache_key(scene_dir, fconf, opts, scene_geometry_digest(scene))}.pt"
    if path.is_file():
        logger.info("refiner data %s: cached %s", scene_dir.name, path)
        return RefinerScene.from_dict(torch.load(path, map_location="cpu", weights_only=True))
    rs = build_refiner_scene(scene, scene_dir.name, fconf, patch_size, **kwargs)
    with atomic_path(path) as tmp:
        torch.save(rs.to_dict(), tmp)
    return rs


def cached_refiner_scenes(scene_dir: Union[str, Path], features: Union[str, Dict], patch_size: int,
                          scales: Sequence = ("preset",), cache_dir: Optional[Union[str, Path]] = None,
                          **kwargs) -> List[RefinerScene]:
    """:func:`cached_refiner_scene` once per extraction scale: ``scales`` are ``resize_max``
    values of the feature preset (``"preset"``: its own). The refiner sees network pixels, and
    a 640 px image at full size and a 3072 px one shrunk to 1600 px look different per pixel,
    so training data at several scales is what lets it transfer between such scenes.

    Raises:
        ValueError: an empty ``scales`` or a scale that is neither ``"preset"`` nor a positive
            integer.
    """
    from ..config import load_config, merge

    if not scales:
        raise ValueError("cached_refiner_scenes: no scale given")
    from .real import load_real_scene

    for rm in scales:
        if rm != "preset" and not (isinstance(rm, int) and rm > 0):
            raise ValueError(f"refiner data scales: {rm!r} is neither 'preset' nor a positive resize_max in pixels")
    fconf = load_config("features", features) if isinstance(features, str) else dict(features)
    if kwargs.get("scene") is None:  # read once: every scale's cache key needs its geometry
        kwargs["scene"] = load_real_scene(Path(scene_dir))
    out = []
    for rm in scales:
        fc = fconf if rm == "preset" else merge(fconf, {"resize_max": int(rm)})
        out.append(cached_refiner_scene(scene_dir, fc, patch_size, cache_dir, **kwargs))
    return out


def data_scales(dconf: Dict) -> List:
    """Pop the ``resize_max`` entry of a training preset's ``data`` section: a list of scales
    for :func:`cached_refiner_scenes` (default: the feature preset's own)."""
    scales = dconf.pop("resize_max", ["preset"])
    return list(scales) if isinstance(scales, (list, tuple)) else [scales]
