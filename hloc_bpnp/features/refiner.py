"""A sub-pixel keypoint refiner on top of a frozen detector (Keypt2Subpx-style, our own design).

Per keypoint, a small patch of the network input image and of the detector's heatmap at the
working scale, centred on the detector's integer maximum, goes through a tiny CNN that predicts

* an offset ``(dx, dy)`` in working-scale pixels, added to the detector's position, bounded by
  ``max_offset * tanh(.)``;
* a log-variance ``s`` (pixels^2 at the working scale): ``w = exp(-s)`` is the keypoint's
  inverse variance, the correspondence weight BPnP can use.

The last layer is zero-initialised: an untrained refiner returns offset 0 and log-variance 0,
i.e. exactly the detector's keypoints with unit weights. The refiner only moves positions;
keypoint order, scores and descriptors are those of the frozen detector, so the same matches
can be evaluated with refined and unrefined positions (a paired comparison).

Patches are sampled at INTEGER centres (exact pixels, no interpolation). The image patch is
standardised per patch; the heatmap patch is divided by its centre value.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..config import merge
from .patch_lk import normalise_patches


def extract_patches(maps: torch.Tensor, centers: torch.Tensor, size: int) -> torch.Tensor:
    """Square patches of ``maps`` around integer ``centers``.

    Args:
        maps: (B, C, H, W).
        centers: (B, K, 2) integer (x, y) pixel indices (long or integral float).
        size: odd patch side.
    Returns:
        (B, K, C, size, size); outside the image: zeros.
    """
    if size % 2 != 1:
        raise ValueError(f"patch size must be odd, got {size}")
    B, C, H, W = maps.shape
    r = size // 2
    padded = F.pad(maps, (r, r, r, r))
    ij = torch.arange(-r, r + 1, device=maps.device)
    c = centers.long()
    xs = (c[..., 0, None] + r + ij).clamp(0, W + 2 * r - 1)  # (B, K, S)
    ys = (c[..., 1, None] + r + ij).clamp(0, H + 2 * r - 1)
    lin = ys[..., :, None] * (W + 2 * r) + xs[..., None, :]  # (B, K, S, S)
    K = c.shape[1]
    flat = padded.reshape(B, C, -1)
    out = flat.gather(2, lin.reshape(B, 1, -1).expand(-1, C, -1))  # (B, C, K*S*S)
    return out.reshape(B, C, K, size, size).permute(0, 2, 1, 3, 4)


def normalize_patches(patches: torch.Tensor) -> torch.Tensor:
    """(…, 2, S, S) [image, heatmap] -> network input: image standardised per patch, heatmap
    divided by its centre value (the detector's maximum)."""
    img, heat = patches[..., :1, :, :], patches[..., 1:2, :, :]
    img = normalise_patches(img.flatten(-2), eps=1e-3)[0].view_as(img)
    r = heat.shape[-1] // 2
    heat = heat / heat[..., r:r + 1, r:r + 1].clamp_min(1e-6)
    return torch.cat([img, heat], dim=-3)


#: the 8 symmetries of the square patch grid as 2x2 integer matrices T acting on (x, y) patch
#: coordinates about the centre: rotations by 0, 90, 180, 270 degrees, then the same after a
#: mirror x -> -x.
DIHEDRAL = torch.tensor([[[1, 0], [0, 1]], [[0, -1], [1, 0]], [[-1, 0], [0, -1]], [[0, 1], [-1, 0]],
                         [[-1, 0], [0, 1]], [[0, 1], [1, 0]], [[1, 0], [0, -1]], [[0, -1], [-1, 0]]])


def dihedral_patches(patches: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Transformed patches: ``out[n]`` at ``T_k p`` is ``patches[n]`` at ``p`` (p about the centre).

    Args:
        patches: (N, C, S, S).
        k: (N,) long in [0, 8): the transform of each patch (:data:`DIHEDRAL`).
    Returns:
        (N, C, S, S). A keypoint offset ``o`` in a patch is ``T_k o`` in the transformed one, so a
        prediction ``o'`` on the transformed patch maps back with :func:`dihedral_offsets_back`.
    """
    N, C, S, _ = patches.shape
    r = S // 2
    ij = torch.arange(-r, r + 1, device=patches.device)
    yy, xx = torch.meshgrid(ij, ij, indexing="ij")
    q = torch.stack([xx.reshape(-1), yy.reshape(-1)], -1)  # (S*S, 2) output coordinates
    Tinv = DIHEDRAL.to(patches.device)[k].transpose(-1, -2)  # orthogonal: T^-1 = T^T
    p = torch.einsum("nij,qj->nqi", Tinv, q) + r  # (N, S*S, 2) source coordinates
    lin = (p[..., 1] * S + p[..., 0]).long()
    return patches.reshape(N, C, S * S).gather(2, lin[:, None].expand(-1, C, -1)).reshape(N, C, S, S)


def dihedral_offsets_back(offsets: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """(N, 2) offsets predicted on :func:`dihedral_patches` output -> the original patches' frame."""
    Tinv = DIHEDRAL.to(offsets.device, offsets.dtype)[k].transpose(-1, -2)
    return torch.einsum("nij,nj->ni", Tinv, offsets)


class KeypointRefiner(nn.Module):
    """Patch CNN: (N, 2, S, S) normalised patches -> offsets (N, 2) and log-variances (N,).

    Config:
        patch_size: S (odd).
        channels: width of the conv layers.
        max_offset: bound of the offset, working-scale pixels.
        activation: ``relu`` (the shipped refiner's) or ``leaky_relu`` (slope 0.1). Measured:
            LeakyReLU did not stop last round's training collapse (its cause was the log-variance's
            losses training the shared features, see :meth:`forward`) and fitted no better.
    """

    default_conf: Dict[str, Any] = {"patch_size": 9, "channels": 16, "max_offset": 1.5, "activation": "relu"}

    def __init__(self, conf: Optional[Dict[str, Any]] = None) -> None:
        super().__init__()
        self.conf = merge(self.default_conf, conf or {}, strict=True)
        S, c = int(self.conf["patch_size"]), int(self.conf["channels"])
        if S < 7 or S % 2 != 1:
            raise ValueError(f"refiner patch_size must be odd and >= 7, got {S}")
        acts = {"relu": lambda: nn.ReLU(inplace=True), "leaky_relu": lambda: nn.LeakyReLU(0.1, inplace=True)}
        if self.conf["activation"] not in acts:
            raise ValueError(f"refiner activation must be one of {sorted(acts)}, got {self.conf['activation']!r}")
        act = acts[self.conf["activation"]]
        self.features = nn.Sequential(
            nn.Conv2d(2, c, 3), act(),
            nn.Conv2d(c, c, 3), act(),
            nn.Conv2d(c, c, 3), act(),
        )
        n = c * (S - 6) ** 2
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(n, 64), act(), nn.Linear(64, 3))
        nn.init.zeros_(self.head[-1].weight)
        nn.init.zeros_(self.head[-1].bias)

    @property
    def patch_size(self) -> int:
        return int(self.conf["patch_size"])

    def forward(self, patches: torch.Tensor) -> Dict[str, torch.Tensor]:
        """``patches``: (N, 2, S, S) raw [image, heatmap] patches (see :func:`extract_patches`).

        Returns ``offset`` (N, 2) working-scale pixels and ``log_var`` (N,).
        """
        if patches.ndim != 4 or patches.shape[1] != 2 or patches.shape[-1] != self.patch_size:
            raise ValueError(f"refiner expects (N, 2, {self.patch_size}, {self.patch_size}) patches, "
                             f"got {tuple(patches.shape)}")
        if patches.shape[0] == 0:
            z = patches.new_zeros(0, 3)
        else:
            # channels last: the CPU convolutions of many tiny patches run ~2x faster (same values)
            x = normalize_patches(patches).contiguous(memory_format=torch.channels_last)
            h = self.head[:-1](self.features(x))
            last = self.head[-1]
            # the log-variance reads the features without training them: its losses (the
            # uncertainty terms, BPnP's NLL) otherwise overwhelm the offsets' features and the
            # offsets collapse to constants (measured). The same function at inference.
            z = torch.cat([F.linear(h, last.weight[:2], last.bias[:2]),
                           F.linear(h.detach(), last.weight[2:], last.bias[2:])], -1)
        m = float(self.conf["max_offset"])
        return {"offset": m * torch.tanh(z[:, :2] / m), "log_var": z[:, 2]}

    def refine(self, image: torch.Tensor, heat: torch.Tensor, centers: torch.Tensor) -> Dict[str, torch.Tensor]:
        """Batched images: ``image`` (B, 1, H, W) gray in [0, 1], ``heat`` (B, 1, H, W),
        ``centers`` (B, K, 2) integer pixels -> ``offset`` (B, K, 2), ``log_var`` (B, K)."""
        B, K = centers.shape[:2]
        p = extract_patches(torch.cat([image, heat], 1), centers, self.patch_size)
        out = self.forward(p.reshape(B * K, 2, self.patch_size, self.patch_size))
        return {"offset": out["offset"].reshape(B, K, 2), "log_var": out["log_var"].reshape(B, K)}


def apply_refiner(refiner: Optional["KeypointRefiner"], image: torch.Tensor, heat: torch.Tensor,
                  xy: torch.Tensor, centers: torch.Tensor, return_maps: bool = False) -> Dict[str, torch.Tensor]:
    """A detector's keypoints through its optional refiner (XFeatNet, ALIKEDNet).

    Args:
        refiner: the :class:`KeypointRefiner` or None; image: (B, C, H, W) network input;
        heat: (B, 1, H, W) the detector's heat / score map; xy: (B, K, 2) keypoints;
        centers: (B, K, 2) long patch centres; return_maps: also return the refiner's inputs.
    Returns:
        ``keypoints`` (B, K, 2) (moved by the offsets when there is a refiner), ``centers``,
        with a refiner ``log_var`` (B, K), with ``return_maps`` ``heatmap`` and ``gray``
        (B, 1, H, W).
    """
    out: Dict[str, torch.Tensor] = {"centers": centers}
    gray = image.mean(1, keepdim=True) if (refiner is not None or return_maps) else None
    if refiner is not None:
        ref = refiner.refine(gray, heat.detach(), centers)
        xy = xy + ref["offset"].to(xy.dtype)
        out["log_var"] = ref["log_var"]
    if return_maps:
        out["heatmap"], out["gray"] = heat, gray
    out["keypoints"] = xy
    return out


def load_refiner(path, conf: Optional[Dict[str, Any]] = None, source: str = "refiner") -> KeypointRefiner:
    """A :class:`KeypointRefiner` with weights from ``path`` (``torch.load(weights_only=True)``);
    every tensor must match the architecture and the file may hold nothing else.

    Raises:
        RuntimeError: unsafe file, missing/extra tensors or wrong shapes (names the file).
    """
    from ..weights import load_state_strict, read_state_dict
    from .base import unwrap_state_dict

    ref = KeypointRefiner(conf)
    src = f"{source}: refiner weights {path}"
    state = unwrap_state_dict(read_state_dict(path, src))
    extra = sorted(set(state) - set(ref.state_dict()))
    if extra:
        raise RuntimeError(f"{src}: the file holds tensors a KeypointRefiner{dict(ref.conf)} does not have, "
                           f"e.g. {extra[:3]} (wrong file or refiner config?)")
    load_state_strict(ref, state, src)
    return ref.eval()


def refiner_of_features(features, base: Dict[str, Any], source: str = "refiner") -> Dict[str, Any]:
    """The features conf of a refined preset, checked against the ``base`` features it must run on.

    Args:
        features: a features preset name (e.g. ``xfeat_refined``, the shipped refiner) or the path
            of a ``features.yaml`` that ``hloc-bpnp finetune`` / ``finetune_real.py`` wrote beside
            a ``refiner.pt`` (a relative ``refiner`` path is read from the file's folder).
        base: the detector's features conf the refiner will run on.
    Returns:
        the conf, its ``refiner`` an absolute path to the weights file.
    Raises:
        ValueError: naming ``source`` and the file: no refiner in it, or a key other than
            ``refiner`` / ``refiner_conf`` differs from ``base`` (a refiner runs on the
            positions it was trained on, e.g. ``subpixel_in_cell``).
        FileNotFoundError: an unknown preset, or the weights file it names is missing.
    """
    from ..config import load_config
    from ..weights import resolve_refiner

    is_file = Path(str(features)).suffix in (".yaml", ".yml")
    if is_file and not Path(features).is_file():
        raise ValueError(f"{source}: {features} is not a file")
    conf = load_config("features", features)
    if not conf.get("refiner"):
        raise ValueError(f"{source}: {features} names no refiner")
    ref = Path(str(conf["refiner"])).expanduser()
    if is_file and not ref.is_absolute():
        ref = Path(features).parent / ref
    conf["refiner"] = str(resolve_refiner(ref if is_file else conf["refiner"], str(features)).resolve())
    skip = {"refiner", "refiner_conf", "preset"}
    b = {k: v for k, v in base.items() if k not in skip}
    differ = sorted(k for k in (set(b) | set(conf)) - skip if b.get(k) != conf.get(k))
    if differ:
        raise ValueError(f"{source}: {features} differs from the features it would run on in "
                         + ", ".join(f"{k} ({conf.get(k)!r} vs {b.get(k)!r})" for k in differ))
    return conf
