"""Positions per match (training/match_alignment.py): one side of each match aligned to the
other by photometric Lucas-Kanade, scored by the Sampson error under the known poses."""
import numpy as np
import pytest
import torch

from hloc_bpnp.geometry.pose import Pose
from hloc_bpnp.training.match_alignment import (align_match_sides, aligned_match_errors, default_conf,
                                                scene_gray_images)
from hloc_bpnp.training.refiner_data import RefinerScene, essential
from hloc_bpnp.training.refiner_train import match_errors

F, W, H = 400.0, 320, 240
DEPTH, BASELINE = 4.0, 0.05  # a fronto-parallel plane; the second camera 5 cm to the side


def _texture(x, y, seed=0):
    """A smooth random texture, exact at any sub-pixel position (a sum of sinusoids)."""
    rng = np.random.default_rng(seed)
    v = np.zeros_like(x, dtype=np.float64)
    for _ in range(24):
        fx, fy = rng.uniform(-0.35, 0.35, 2)
        v += rng.uniform(0.2, 1.0) * np.sin(fx * x + fy * y + rng.uniform(0, 2 * np.pi))
    return v


def _two_views(n=200, noise=0.8, seed=0, flat=False):
    """Two renders of the plane (the second is the first moved by the disparity) and a
    RefinerScene whose side ``a`` keypoints are exact and side ``b`` ones ``noise`` px off."""
    disparity = F * BASELINE / DEPTH  # 5 px: image b shows the texture at x + 5
    ys, xs = np.mgrid[0:H, 0:W].astype(np.float64)
    ims = []
    for dx in (0.0, disparity):
        t = _texture(xs + dx, ys)
        t = (t - t.min()) / (t.max() - t.min())
        ims.append(torch.from_numpy(np.full_like(t, 0.5) if flat else t).float()[None, None])
    g = np.random.default_rng(seed)
    pa = np.stack([g.uniform(20, W - 20, n), g.uniform(20, H - 20, n)], -1)
    pb = pa - [disparity, 0.0] + g.normal(0, noise, (n, 2))
    base = torch.from_numpy(np.concatenate([pa, pb]))
    K = torch.tensor([[F, 0, W / 2], [0, F, H / 2], [0, 0, 1]], dtype=torch.float64)
    norm0 = (base - K[:2, 2]) / F
    N = base.shape[0]
    pose_a = Pose.from_aa(torch.zeros(6, dtype=torch.float64))
    pose_b = Pose.from_aa(torch.tensor([0, 0, 0, -BASELINE, 0, 0], dtype=torch.float64))
    rs = RefinerScene("plane", ["a.png", "b.png"], torch.zeros(N, 2, 9, 9), base, torch.ones(N, 2, dtype=torch.float64),
                      torch.cat([torch.zeros(n), torch.ones(n)]).long(), norm0,
                      torch.eye(2, dtype=torch.float64).expand(N, 2, 2) / F,
                      torch.stack([torch.arange(n), torch.arange(n) + n], -1), torch.zeros(n, dtype=torch.long),
                      essential(pose_a, pose_b)[None], torch.tensor([F], dtype=torch.float64), [("a.png", "b.png")])
    return rs, ims


def test_the_sampson_error_of_the_scene_is_the_vertical_offset():
    rs, _ = _two_views(noise=0.0)
    z = torch.zeros(rs.base.shape[0], 2, dtype=torch.float64)
    e0 = match_errors(rs, torch.arange(rs.matches.shape[0]), {0: z[:200], 1: z[200:]})
    assert float(e0.max()) < 1e-6  # exact correspondences lie on their epipolar lines
    off = z.clone()
    off[200:, 1] = 0.5
    e = match_errors(rs, torch.arange(rs.matches.shape[0]), {0: off[:200], 1: off[200:]})
    assert torch.allclose(e, torch.full_like(e, 0.5 / np.sqrt(2)), atol=1e-6)  # symmetric Sampson


def test_alignment_pulls_the_moving_side_onto_its_partner():
    rs, ims = _two_views(noise=0.8)
    zero = torch.zeros(rs.base.shape[0], 2, dtype=torch.float64)
    m = rs.matches
    plain = match_errors(rs, torch.arange(m.shape[0]), {0: zero[m[:, 0]], 1: zero[m[:, 1]]})
    e, valid = aligned_match_errors(rs, ims, zero)
    assert valid.float().mean() > 0.95
    assert float(e.median()) < 0.2 * float(plain.median())
    # the shift itself: side b lands within 0.1 px of the exact correspondence
    shift, _ = align_match_sides(rs, ims, rs.base)
    exact = rs.base[m[:, 0]] - torch.tensor([F * BASELINE / DEPTH, 0.0], dtype=torch.float64)
    err = (rs.base[m[:, 1]] + shift - exact).norm(dim=-1)
    assert float(err[valid].median()) < 0.1


def test_variant_offsets_are_network_pixels_and_side_a_keeps_its_position():
    rs, ims = _two_views(noise=0.0)
    rs.scale = torch.full_like(rs.scale, 2.0)  # 2 original px per network px
    off = torch.zeros(rs.base.shape[0], 2, dtype=torch.float64)
    off[:200, 1] = 0.5  # side a moved 1 original px down: side b must follow it
    e, valid = aligned_match_errors(rs, ims, off)
    assert valid.all()
    assert float(e.median()) < 0.1  # aligned: b follows a
    m = rs.matches
    plain = match_errors(rs, torch.arange(m.shape[0]), {0: off[m[:, 0]], 1: off[m[:, 1]]})
    assert float(plain.median()) == pytest.approx(1 / np.sqrt(2), abs=1e-6)


def test_rejected_fits_keep_the_variant_positions():
    rs, ims = _two_views(noise=0.5, flat=True)  # no texture: nothing to align to
    zero = torch.zeros(rs.base.shape[0], 2, dtype=torch.float64)
    m = rs.matches
    e, valid = aligned_match_errors(rs, ims, zero)
    assert not valid.any()
    assert torch.allclose(e, match_errors(rs, torch.arange(m.shape[0]), {0: zero[m[:, 0]], 1: zero[m[:, 1]]}))


def test_bad_inputs_are_errors(tmp_path):
    rs, ims = _two_views(n=10)
    with pytest.raises(ValueError, match="1 images for the 2"):
        align_match_sides(rs, ims[:1], rs.base)
    with pytest.raises(ValueError, match="positions"):
        align_match_sides(rs, ims, rs.base[:5])
    with pytest.raises(ValueError, match="unknown settings.*radus"):
        align_match_sides(rs, ims, rs.base, {"radus": 4})
    with pytest.raises(FileNotFoundError, match="'a.png' of scene 'plane'"):
        scene_gray_images(rs, tmp_path)
    assert set(default_conf) == {"radius", "iterations", "blur_sigma", "max_shift_px", "min_ncc"}
