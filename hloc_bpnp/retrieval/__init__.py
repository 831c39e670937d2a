"""Global descriptors (VLAD, a learned GeM/NetVLAD head), the FAISS index and pair generation."""
from .factory import build_global_descriptor, build_index, load_retrieval_config
from .global_head import GeM, GlobalHead, NetVLADPool, load_global_head
from .index import GlobalIndex, faiss_num_gpus
from .pairs import (covisibility_counts, pairs_exhaustive, pairs_from_covisibility, pairs_from_poses,
                    pairs_from_retrieval, write_pairs)
from .vlad import VLAD, rootsift, vlad_from_store

__all__ = [
    "build_global_descriptor", "build_index", "load_retrieval_config",
    "GeM", "GlobalHead", "NetVLADPool", "load_global_head",
    "GlobalIndex", "faiss_num_gpus",
    "covisibility_counts", "pairs_exhaustive", "pairs_from_covisibility", "pairs_from_poses",
    "pairs_from_retrieval", "write_pairs",
    "VLAD", "rootsift", "vlad_from_store",
]
