"""Look at a localization result without ground truth (hloc's ``visualize_loc`` idea).

:func:`plot_localization` draws, in one figure:

* the query with its 2D-3D correspondences (grey), the RANSAC inliers (green), and the map's
  3D points seen by the top retrieved keyframes reprojected with the estimated pose and camera
  (red +): reprojections that land on the structure make a pose credible;
* for each of the top ``num_keyframes`` retrieved keyframes, the query beside the keyframe with
  lines between query inliers and the keyframe keypoints observing the same 3D point.

A failed query is drawn too: its correspondences, no reprojection, the reason in the title.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Union

import numpy as np

from ..localization.results import LocalizationResult


def _keyframe_observations(map_, name: str, point_rows: np.ndarray):
    """Keypoints of map image ``name`` observing the given point rows: (xy (K, 2), rows (K,))."""
    rows = np.asarray(map_.kp_to_point.get(name, np.zeros(0, np.int64)))
    kp = np.asarray(map_.features[name]["keypoints"])
    sel = np.nonzero(np.isin(rows, point_rows) & (rows >= 0))[0]
    return kp[sel], rows[sel]


def plot_localization(result: LocalizationResult, map_, query_image: np.ndarray,
                      map_images: Optional[Union[str, Path]] = None, output: Optional[Union[str, Path]] = None,
                      num_keyframes: int = 2):
    """Draw a localization result (see the module docstring).

    Args:
        result: from :class:`~hloc_bpnp.localization.Localizer` (``points2D``, ``point3D_ids``,
            ``inlier_mask``, ``pose``, ``camera``, ``retrieved``).
        map_: the :class:`~hloc_bpnp.mapping.Map` it was localized against.
        query_image: (H, W[, 3]) array.
        map_images: folder of the map images (keyframe panels are skipped without it).
        output: PNG path (written atomically, safe after ``import pycolmap``); None: no file.
    Returns:
        the matplotlib Figure.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..io.image import read_image

    id_to_row = {int(i): r for r, i in enumerate(np.asarray(map_.point3D_ids))}
    p2 = np.zeros((0, 2)) if result.points2D is None else np.asarray(result.points2D, float)
    ids = np.zeros(0, np.int64) if result.point3D_ids is None else np.asarray(result.point3D_ids)
    inl = np.zeros(len(p2), bool) if result.inlier_mask is None else np.asarray(result.inlier_mask, bool)
    rows = np.array([id_to_row.get(int(i), -1) for i in ids], np.int64)
    kfs = [n for n in result.retrieved if n in map_.features][:num_keyframes] if map_images is not None else []
    fig, axes = plt.subplots(1, 1 + len(kfs), figsize=(7 * (1 + len(kfs)), 5.5), squeeze=False)
    ax = axes[0, 0]
    ax.imshow(query_image, cmap="gray" if query_image.ndim == 2 else None)
    if len(p2):
        ax.scatter(p2[~inl, 0] - 0.5, p2[~inl, 1] - 0.5, s=4, c="0.6", label=f"correspondences ({len(p2)})")
        ax.scatter(p2[inl, 0] - 0.5, p2[inl, 1] - 0.5, s=6, c="lime", label=f"inliers ({int(inl.sum())})")
    if result.success and result.pose is not None and result.camera is not None:
        seen = set()
        for n in (result.retrieved[:max(num_keyframes, 1)] if result.retrieved else []):
            r = np.asarray(map_.kp_to_point.get(n, []))
            seen.update(int(x) for x in r[r >= 0])
        if seen:
            import torch

            X = torch.as_tensor(np.asarray(map_.points3D)[sorted(seen)], dtype=torch.float64)
            pc = result.pose.to(torch.float64).transform(X)
            x, ok = result.camera.to(torch.float64).project_with_valid(pc)
            x = x[ok].cpu().numpy()
            H, W = query_image.shape[:2]
            inside = (x[:, 0] >= 0) & (x[:, 0] <= W) & (x[:, 1] >= 0) & (x[:, 1] <= H)
            ax.scatter(x[inside, 0] - 0.5, x[inside, 1] - 0.5, s=8, c="red", marker="+", linewidths=0.6,
                       label=f"map points reprojected ({int(inside.sum())})")
        title = f"{result.name}: localized, {result.num_inliers} inliers"
    else:
        title = f"{result.name}: FAILED ({result.failure_reason or 'unknown'}), {result.num_inliers} inliers"
    ax.set_title(title, fontsize=9)
    if len(p2) or result.success:
        ax.legend(loc="lower right", fontsize=7, markerscale=2)
    ax.axis("off")
    for j, n in enumerate(kfs, start=1):
        ax = axes[0, j]
        kimg = read_image(Path(map_images) / n)
        qh, qw = query_image.shape[:2]
        kh, kw = kimg.shape[:2]
        q3 = query_image if query_image.ndim == 3 else np.repeat(query_image[..., None], 3, -1)
        k3 = kimg if kimg.ndim == 3 else np.repeat(kimg[..., None], 3, -1)
        canvas = np.zeros((max(qh, kh), qw + kw, 3), dtype=np.uint8)
        canvas[:qh, :qw] = q3
        canvas[:kh, qw:] = k3
        ax.imshow(canvas)
        kx, krows = _keyframe_observations(map_, n, rows[inl])
        row_to_k = {int(r): kx[i] for i, r in enumerate(krows)}
        pairs = [(p2[i], row_to_k[int(rows[i])]) for i in np.nonzero(inl)[0] if int(rows[i]) in row_to_k]
        for a, b in pairs:
            ax.plot([a[0] - 0.5, b[0] - 0.5 + qw], [a[1] - 0.5, b[1] - 0.5], lw=0.4, c="lime", alpha=0.7)
        ax.set_title(f"keyframe {n}: {len(pairs)} inlier matches", fontsize=9)
        ax.axis("off")
    fig.tight_layout()
    if output is not None:
        from .plot import save_figure

        save_figure(fig, output, dpi=80)
    return fig
