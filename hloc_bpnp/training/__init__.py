"""End-to-end fine-tuning of local features against pose error through BPnP.

* the trainable networks live in :mod:`hloc_bpnp.features` (``networks.build_network``: the
  trainable net, pretrained XFeat / ALIKED; ``refiner``: the sub-pixel keypoint refiner);
* :mod:`.localization` — the differentiable query -> pose path (dual-softmax, RANSAC start,
  weighted BPnP);
* :mod:`.losses` — descriptor, score and pose losses, fixed or homoscedastic weighting;
* :mod:`.data` — scenes with known poses (synthetic, with exact depth); :mod:`.real` — real
  posed scenes (points triangulated with the known poses); :mod:`.scenes` — both from a config;
* :mod:`.refiner_data`, :mod:`.refiner_train` — the keypoint refiner's cached training data
  and its training (Sampson, BPnP-posterior NLL and pose losses);
* :mod:`.trainer` — the loop (checkpoints/resume, CSV logs, NaN guard, clipping, data parallel);
* :mod:`.evaluate` — held-out evaluation through the hard localization path, and the keypoint
  accuracy diagnostic (query keypoints vs the exact projection of their matched surface points).
"""
from .data import TrainScene, TrainView, load_synthetic_scenes, make_view
from .scenes import scenes_from_config
from .distributed import average_gradients, init_distributed
from .evaluate import evaluate_network, keypoint_errors, localization_errors
from .localization import MapView, dual_softmax, localize_differentiable, subset_indices
from .losses import LossWeighting, descriptor_loss, pose_loss
from ..features.trainable_net import TrainableFeatureNet
from .trainer import FinetuneModel, Trainer, default_conf, map_view_features

__all__ = [
    "TrainableFeatureNet", "Trainer", "FinetuneModel", "default_conf", "TrainScene", "TrainView",
    "load_synthetic_scenes", "make_view", "scenes_from_config", "MapView", "dual_softmax",
    "localize_differentiable", "subset_indices", "LossWeighting", "descriptor_loss", "pose_loss",
    "evaluate_network", "keypoint_errors", "localization_errors",
    "init_distributed", "average_gradients", "map_view_features",
]
