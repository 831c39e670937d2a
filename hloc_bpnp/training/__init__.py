"""End-to-end fine-tuning of local features against pose error through BPnP.

* :mod:`.network` — the trainable feature network (soft-argmax keypoints, dense descriptors);
* :mod:`.localization` — the differentiable query -> pose path (dual-softmax, RANSAC start,
  weighted BPnP);
* :mod:`.losses` — descriptor, score and pose losses, fixed or homoscedastic weighting;
* :mod:`.data` — scenes with known poses (synthetic, with exact depth);
* :mod:`.trainer` — the loop (checkpoints/resume, CSV logs, NaN guard, clipping, data parallel);
* :mod:`.evaluate` — held-out evaluation through the hard localization path.
"""
from .data import TrainScene, TrainView, load_synthetic_scenes, make_view, scenes_from_config
from .distributed import average_gradients, init_distributed
from .evaluate import evaluate_network
from .localization import MapView, dual_softmax, localize_differentiable
from .losses import LossWeighting, descriptor_loss, pose_loss
from .network import TrainableFeatureNet
from .trainer import FinetuneModel, Trainer, default_conf, map_view_features

__all__ = [
    "TrainableFeatureNet", "Trainer", "FinetuneModel", "default_conf", "TrainScene", "TrainView",
    "load_synthetic_scenes", "make_view", "scenes_from_config", "MapView", "dual_softmax",
    "localize_differentiable", "LossWeighting", "descriptor_loss", "pose_loss", "evaluate_network",
    "init_distributed", "average_gradients", "map_view_features",
]
