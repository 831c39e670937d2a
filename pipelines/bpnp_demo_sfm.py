"""BPnP demo 2 (structure from motion): learn a 3D point set from its 2D observations in
several views with known K. Each view's pose is BPnP(x_m, Z, K); the loss is the
reprojection error of Z under those poses, back-propagated into Z through BPnP. The result
is compared with the truth after a similarity (Umeyama) alignment.

    python pipelines/bpnp_demo_sfm.py --output outputs/bpnp_sfm
"""
from __future__ import annotations

import logging
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bpnp_demo_pose import demo_main, project  # noqa: E402

from hloc_bpnp.bpnp import bpnp  # noqa: E402

logger = logging.getLogger("bpnp_demo_sfm")


def umeyama(src: torch.Tensor, dst: torch.Tensor):
    """Similarity (s, R, t) minimising ||s R src + t - dst||; src, dst (N, 3)."""
    ms, md = src.mean(0), dst.mean(0)
    S, D = src - ms, dst - md
    U, sv, Vh = torch.linalg.svd(D.T @ S / len(src))
    E = torch.eye(3, dtype=src.dtype, device=src.device)
    E[2, 2] = torch.sign(torch.det(U @ Vh))
    R = U @ E @ Vh
    s = (sv * E.diagonal()).sum() / (S * S).sum(-1).mean()
    return s, R, md - s * R @ ms


def aligned_error(Z: torch.Tensor, Z_gt: torch.Tensor) -> float:
    """RMS point error after similarity alignment, relative to the RMS radius of the truth."""
    s, R, t = umeyama(Z, Z_gt)
    err = (s * Z @ R.T + t - Z_gt).norm(dim=-1).pow(2).mean().sqrt()
    return float(err / (Z_gt - Z_gt.mean(0)).norm(dim=-1).pow(2).mean().sqrt())


def run(iters: int = 400, views: int = 8, points: int = 20, lr: float = 0.02, seed: int = 0, device: str = "cpu"):
    g = torch.Generator().manual_seed(seed)
    dt = torch.float64
    Z_gt = (torch.rand(points, 3, generator=g, dtype=dt) * 2 - 1).to(device)
    K = torch.tensor([[600.0, 0, 320], [0, 600, 240], [0, 0, 1]], dtype=dt, device=device)
    ang = torch.linspace(-0.6, 0.6, views, dtype=dt)
    poses = torch.zeros(views, 6, dtype=dt)
    poses[:, 1] = ang  # cameras on an arc looking at the object
    poses[:, 0] = 0.2 * torch.randn(views, generator=g, dtype=dt)
    poses[:, 5] = 5.0
    poses = poses.to(device)
    x = project(poses, Z_gt, K)  # (V, N, 2)
    Z = (Z_gt + 0.3 * torch.randn(points, 3, generator=g, dtype=dt).to(device)).requires_grad_(True)
    opt = torch.optim.Adam([Z], lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, iters)
    hist = {"loss": [], "aligned_error": []}
    for it in range(iters):
        pose = bpnp(x, Z, K)  # (V, 6), shared structure
        loss = ((project(pose, Z, K) - x) ** 2).sum(-1).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        hist["loss"].append(loss.item())
        hist["aligned_error"].append(aligned_error(Z.detach(), Z_gt))
        if it % 50 == 0:
            logger.info("iter %d loss %.4g aligned error %.3g", it, loss.item(), hist["aligned_error"][-1])
    hist["Z"] = Z.detach().cpu()
    return hist


def main(argv=None) -> int:
    return demo_main(argv, "BPnP structure-from-motion demo", run, 400, "sfm_demo.png", "BPnP structure from motion",
                     lambda h: f"loss {h['loss'][-1]:.3g}, aligned relative error {h['aligned_error'][-1]:.3g}")


if __name__ == "__main__":
    raise SystemExit(main())
