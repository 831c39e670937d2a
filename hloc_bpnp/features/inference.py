"""Inference copies of trainable networks: batch norms folded into their convolutions and
channels-last weights, cached until the network's weights change."""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn


def fused_inference_copy(module: nn.Module) -> nn.Module:
    """A copy of ``module`` for inference only: every ``Conv2d`` followed by a ``BatchNorm2d``
    inside an ``nn.Sequential`` folded into one convolution (the batch norm's running
    statistics, i.e. eval mode), and the weights in channels-last memory format. The same
    function within float rounding; on a CPU XFeat's backbone runs ~25% faster (640 x 480,
    2 threads). The copy does not follow later changes of ``module``'s weights."""
    import copy

    from torch.nn.utils.fusion import fuse_conv_bn_eval

    out = copy.deepcopy(module).eval()
    for seq in [m for m in out.modules() if isinstance(m, nn.Sequential)]:
        for i in range(len(seq) - 1):
            conv, bn = seq[i], seq[i + 1]
            if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d) and bn.track_running_stats:
                seq[i] = fuse_conv_bn_eval(conv, bn)
                seq[i + 1] = nn.Identity()
    for p in out.parameters():
        p.requires_grad_(False)
    return out.to(memory_format=torch.channels_last)


class InferenceCache:
    """A :func:`fused_inference_copy` of a module, rebuilt when the module's weights change
    (any parameter or buffer replaced or modified in place: optimiser steps, ``load_state_dict``,
    ``.to(device)``). Not a submodule: it is not part of any state dict."""

    def __init__(self) -> None:
        self._key: Optional[tuple] = None
        self._module: Optional[nn.Module] = None

    @staticmethod
    def _state_key(module: nn.Module) -> tuple:
        return tuple((t.data_ptr(), t._version, t.dtype, t.device)
                     for t in list(module.parameters()) + list(module.buffers()))

    def get(self, module: nn.Module) -> nn.Module:
        key = self._state_key(module)
        if self._module is None or key != self._key:
            self._module, self._key = fused_inference_copy(module), key
        return self._module
