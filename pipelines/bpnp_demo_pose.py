"""BPnP demo 1 (pose estimation): a small network regresses the 2D keypoints of a known 3D
object; the training signal goes through BPnP with the combined loss

    L = ||proj(X | bpnp(x_hat)) - x*||^2 + lam ||x_hat - proj(X | bpnp(x_hat))||^2

until the BPnP pose of the predicted keypoints reaches the target pose.

    python pipelines/bpnp_demo_pose.py --output outputs/bpnp_pose
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

import torch

from hloc_bpnp.bpnp import bpnp
from hloc_bpnp.evaluation.plot import save_figure
from hloc_bpnp.geometry import Pose

logger = logging.getLogger("bpnp_demo_pose")


def project(pose: torch.Tensor, X: torch.Tensor, K: torch.Tensor) -> torch.Tensor:
    """pose (B, 6), X (N, 3), K (3, 3) -> pixels (B, N, 2)."""
    h = Pose.from_aa(pose).transform(X.expand(pose.shape[0], *X.shape)) @ K.T
    return h[..., :2] / h[..., 2:]


def run(iters: int = 300, lam: float = 0.1, lr: float = 1e-3, seed: int = 0, device: str = "cpu"):
    """Train; returns dict of per-iteration 'loss', 'rot_err', 't_err' lists and the final pose."""
    g = torch.Generator().manual_seed(seed)
    dt = torch.float64
    X = ((torch.rand(12, 3, generator=g, dtype=dt) * 2 - 1)).to(device)
    K = torch.tensor([[600.0, 0, 320], [0, 600, 240], [0, 0, 1]], dtype=dt, device=device)
    target = torch.tensor([[0.4, -0.3, 0.2, 0.1, -0.2, 6.0]], dtype=dt, device=device)
    x_star = project(target, X, K)
    start = torch.tensor([[0.0, 0.0, 0.0, 0.0, 0.0, 6.5]], dtype=dt, device=device)
    code = torch.randn(1, 16, generator=g, dtype=dt).to(device)
    net = torch.nn.Sequential(torch.nn.Linear(16, 64), torch.nn.ReLU(), torch.nn.Linear(64, 24)).to(device, dt)
    with torch.no_grad():  # start from the keypoints of a different pose
        net[2].weight.mul_(0.01)
        net[2].bias.copy_(project(start, X, K).reshape(-1))
    scale = 100.0  # network output in units of 100 px
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    hist = {"loss": [], "rot_err": [], "t_err": []}
    for it in range(iters):
        x_hat = net[0:2](code) @ net[2].weight.T * scale + net[2].bias
        x_hat = x_hat.reshape(1, 12, 2)
        pose = bpnp(x_hat, X, K)
        proj = project(pose, X, K)
        loss = ((proj - x_star) ** 2).sum(-1).mean() + lam * ((x_hat - proj) ** 2).sum(-1).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        with torch.no_grad():
            dR = Pose.from_aa(pose).R @ Pose.from_aa(target).R.transpose(-1, -2)
            from hloc_bpnp.geometry import rotation_angle

            hist["loss"].append(loss.item())
            hist["rot_err"].append(float(rotation_angle(dR)[0]) * 57.29577951308232)
            hist["t_err"].append(float((pose[0, 3:] - target[0, 3:]).norm()))
        if it % 50 == 0:
            logger.info("iter %d loss %.4g rot %.3g deg t %.3g", it, loss.item(), hist["rot_err"][-1], hist["t_err"][-1])
    hist["pose"] = pose.detach().cpu()
    return hist


def plot(hist: dict, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = [k for k, v in hist.items() if isinstance(v, list)]
    fig, axes = plt.subplots(1, len(keys), figsize=(4 * len(keys), 3.2))
    for ax, k in zip(axes, keys):
        ax.semilogy(hist[k])
        ax.set_title(k)
        ax.set_xlabel("iteration")
    fig.suptitle(title)
    fig.tight_layout()
    save_figure(fig, path, dpi=100)  # atomic, safe after 'import pycolmap'
    plt.close(fig)


def demo_main(argv, description: str, run_fn, default_iters: int, png_name: str, title: str, summary) -> int:
    """The CLI shared by the three demos: parse, run, plot, log a one-line summary.

    Args:
        run_fn: ``run(iters, device=...) -> history dict``.
        summary: ``history -> str`` for the final log line.
    """
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--output", type=Path, required=True)
    p.add_argument("--iters", type=int, default=default_iters)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=int, default=1, help="CPU threads (small batched problems)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args.output.mkdir(parents=True, exist_ok=True)
    hist = run_fn(args.iters, device=args.device)
    plot(hist, args.output / png_name, title)
    logger.info("final: %s", summary(hist))
    return 0


def main(argv=None) -> int:
    return demo_main(argv, "BPnP pose-estimation demo", run, 300, "pose_demo.png", "BPnP pose estimation",
                     lambda h: f"rotation error {h['rot_err'][-1]:.2e} deg, translation error {h['t_err'][-1]:.2e}")


if __name__ == "__main__":
    raise SystemExit(main())
