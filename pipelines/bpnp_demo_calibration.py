"""BPnP demo 3 (camera calibration): learn fx, fy, cx, cy from 2D-3D observations of a known
object in several views. Each view's pose is BPnP(x_m, Z, K(theta)); the reprojection loss
under those poses is back-propagated into the intrinsics through BPnP (dpose/dK included).

    python pipelines/bpnp_demo_calibration.py --output outputs/bpnp_calibration
"""
from __future__ import annotations

import logging
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bpnp_demo_pose import demo_main, project  # noqa: E402

from hloc_bpnp.bpnp import bpnp  # noqa: E402

logger = logging.getLogger("bpnp_demo_calibration")


def make_K(theta: torch.Tensor) -> torch.Tensor:
    """theta (4,) = (log fx, log fy, cx / 100, cy / 100) -> K (3, 3)."""
    fx, fy = theta[0].exp(), theta[1].exp()
    cx, cy = 100 * theta[2], 100 * theta[3]
    z, o = torch.zeros_like(fx), torch.ones_like(fx)
    return torch.stack([torch.stack([fx, z, cx]), torch.stack([z, fy, cy]), torch.stack([z, z, o])])


def run(iters: int = 300, views: int = 10, points: int = 30, lr: float = 0.05, noise: float = 0.0,
        seed: int = 0, device: str = "cpu"):
    g = torch.Generator().manual_seed(seed)
    dt = torch.float64
    Z = (torch.rand(points, 3, generator=g, dtype=dt) * 2 - 1).to(device)
    K_gt = torch.tensor([[620.0, 0, 330], [0, 600, 235], [0, 0, 1]], dtype=dt, device=device)
    poses = torch.cat([0.5 * torch.randn(views, 3, generator=g, dtype=dt),
                       0.3 * torch.randn(views, 2, generator=g, dtype=dt),
                       4.0 + torch.rand(views, 1, generator=g, dtype=dt) * 2], -1).to(device)
    x = project(poses, Z, K_gt)
    x = x + noise * torch.randn(x.shape, generator=g, dtype=dt).to(device)
    truth = torch.tensor([620.0, 600.0, 330.0, 235.0], dtype=dt)
    theta = torch.tensor([torch.log(torch.tensor(500.0)), torch.log(torch.tensor(520.0)), 3.0, 2.6],
                         dtype=dt, device=device).requires_grad_(True)
    opt = torch.optim.Adam([theta], lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, iters)
    hist = {"loss": [], "intrinsics_error_px": []}
    for it in range(iters):
        K = make_K(theta)
        pose = bpnp(x, Z, K)
        loss = ((project(pose, Z, K) - x) ** 2).sum(-1).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        with torch.no_grad():
            Kc = make_K(theta).cpu()
            est = torch.stack([Kc[0, 0], Kc[1, 1], Kc[0, 2], Kc[1, 2]])
        hist["loss"].append(loss.item())
        hist["intrinsics_error_px"].append(float((est - truth).abs().max()))
        if it % 50 == 0:
            logger.info("iter %d loss %.4g max |K - K_gt| %.3g px", it, loss.item(), hist["intrinsics_error_px"][-1])
    hist["intrinsics"] = est
    return hist


def main(argv=None) -> int:
    return demo_main(argv, "BPnP camera-calibration demo", run, 300, "calibration_demo.png", "BPnP camera calibration",
                     lambda h: f"fx, fy, cx, cy = {[round(v, 3) for v in h['intrinsics'].tolist()]} (truth 620, 600, 330, 235)")


if __name__ == "__main__":
    raise SystemExit(main())
