"""Shared pytest fixtures.

``shared_data`` points at ``../shared/data`` (real images with ground truth) and skips the
test cleanly when that folder is absent, as in a user's fresh clone.
"""
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"

# a small, fast mapping config (SIFT 1024, exhaustive pairs, 16-word VLAD, flat index) for the
# tests that build maps of the `small` synthetic scene (`from conftest import SMALL_MAP_CONF`)
SMALL_MAP_CONF = {
    "features": {"model": "sift", "max_keypoints": 1024},
    "matcher": "mnn_ratio",
    "pairs": {"method": "exhaustive"},
    "retrieval": {"global_descriptor": {"type": "vlad", "num_clusters": 16, "pca_dim": None},
                  "index": {"type": "flat", "use_gpu": False}},
}


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data not found at {SHARED_DATA}")
    return SHARED_DATA


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)
