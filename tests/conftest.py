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


def pytest_runtest_setup(item):
    """``@pytest.mark.cuda`` tests run where CUDA is present and skip elsewhere; with
    ``HLOC_BPNP_REQUIRE_CUDA=1`` (a GPU machine's check) they fail instead of skipping."""
    if "cuda" not in item.keywords or torch.cuda.is_available():
        return
    import os

    if os.environ.get("HLOC_BPNP_REQUIRE_CUDA") == "1":
        pytest.fail("HLOC_BPNP_REQUIRE_CUDA=1 but CUDA is not available (torch.cuda.is_available() is False)",
                    pytrace=False)
    pytest.skip("needs a CUDA GPU")
