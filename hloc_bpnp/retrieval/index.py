"""Nearest-neighbour search over global descriptors (FAISS, inner product).

``type: flat`` is exact (``IndexFlatIP``); ``type: ivfpq`` (``IndexIVFPQ`` with ``nlist``,
``m``, ``nbits``, ``nprobe``) trades recall for speed and memory on large maps. The index is
moved to a GPU when faiss has GPU support and one is visible (``use_gpu``).
Descriptors are expected L2-normalised, so scores are cosine similarities.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import faiss
import numpy as np

from ..features.feature_dict import as_numpy
from ..config import merge

logger = logging.getLogger(__name__)


def faiss_num_gpus() -> int:
    """GPUs usable by faiss (0 for faiss-cpu builds)."""
    try:
        return int(faiss.get_num_gpus()) if hasattr(faiss, "StandardGpuResources") else 0
    except Exception:  # pragma: no cover - depends on the faiss build
        return 0


class GlobalIndex:
    """Named vectors + a FAISS index.

    Args:
        dim: descriptor dimension D.
        conf: overrides of :attr:`default_conf`. For ``ivfpq``: ``nlist`` inverted lists
            (clamped to the training-set size), ``m`` sub-quantizers (must divide D),
            ``nbits`` per code, ``nprobe`` lists visited per query, ``train_size`` max
            vectors used to train (random subset), ``refine_factor`` (> 0: keep the full
            vectors too and re-rank ``refine_factor * k`` PQ candidates exactly, which fixes
            PQ's recall loss on dense clusters at D*4 bytes per vector).
    """

    default_conf = {
        "type": "flat",
        "nlist": 1024,
        "m": 16,
        "nbits": 8,
        "nprobe": 16,
        "train_size": 100_000,
        "refine_factor": 0,
        "use_gpu": True,
        "seed": 0,
    }

    def __init__(self, dim: int, conf: Optional[Dict] = None):
        self.conf = merge(self.default_conf, conf or {}, strict=True)
        if self.conf["type"] not in ("flat", "ivfpq"):
            raise ValueError(f"index type must be 'flat' or 'ivfpq', got {self.conf['type']!r}")
        if dim < 1:
            raise ValueError(f"dim must be positive, got {dim}")
        if self.conf["type"] == "ivfpq" and dim % int(self.conf["m"]) != 0:
            raise ValueError(f"ivfpq: m={self.conf['m']} must divide the dimension {dim}")
        self.dim = int(dim)
        self.names: List[str] = []
        self._cpu_index = None  # built lazily (IVF needs training data)
        self._index = None
        if self.conf["type"] == "flat":
            self._set_index(faiss.IndexFlatIP(self.dim))

    # ------------------------------------------------------------------ internals
    def _set_index(self, cpu_index):
        self._cpu_index = cpu_index
        self._index = cpu_index
        if self.conf["use_gpu"] and faiss_num_gpus() > 0:
            try:
                self._gpu_res = faiss.StandardGpuResources()
                self._index = faiss.index_cpu_to_gpu(self._gpu_res, 0, cpu_index)
                logger.info("FAISS index moved to GPU")
            except Exception as err:  # e.g. index types without a GPU version
                logger.warning("FAISS index stays on CPU (%s)", err)
                self._index = cpu_index
        self._apply_nprobe()

    def _apply_nprobe(self):
        if self.conf["type"] == "ivfpq" and self._index is not None:
            try:
                faiss.ParameterSpace().set_index_parameter(self._index, "nprobe", int(self.conf["nprobe"]))
            except Exception:  # GPU indexes expose nprobe as an attribute
                self._index.nprobe = int(self.conf["nprobe"])
        if isinstance(self._index, faiss.IndexRefine) and self.conf["refine_factor"]:
            self._index.k_factor = float(self.conf["refine_factor"])

    def set_refine_factor(self, factor: float) -> None:
        """Exact re-ranking of ``factor * k`` candidates (only for an index built with
        ``refine_factor > 0``; factor 1 returns PQ's own top-k, exactly re-scored)."""
        if not isinstance(self._cpu_index, faiss.IndexRefine):
            raise ValueError("set_refine_factor needs an ivfpq index built with refine_factor > 0")
        if factor < 1:
            raise ValueError(f"refine factor must be >= 1, got {factor}")
        self.conf["refine_factor"] = factor
        self._apply_nprobe()

    def _check(self, x, what: str) -> np.ndarray:
        x = as_numpy(x)
        if x.ndim == 1:
            x = x[None]
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"{what} must be (N, {self.dim}), got shape {x.shape}")
        return np.ascontiguousarray(x, dtype=np.float32)

    def train(self, vectors) -> None:
        """Train an IVF-PQ index (no-op for flat). Called by the first :meth:`add` if needed."""
        if self.conf["type"] == "flat":
            return
        x = self._check(vectors, "training vectors")
        rng = np.random.default_rng(self.conf["seed"])
        if x.shape[0] > int(self.conf["train_size"]):
            x = x[rng.choice(x.shape[0], int(self.conf["train_size"]), replace=False)]
        nbits = int(self.conf["nbits"])
        if x.shape[0] < 2 ** nbits:
            raise ValueError(f"ivfpq with nbits={nbits} needs >= {2 ** nbits} training vectors, got "
                             f"{x.shape[0]}: use type 'flat' for a map this small")
        nlist = min(int(self.conf["nlist"]), max(1, x.shape[0] // 39))
        if nlist != int(self.conf["nlist"]):
            logger.warning("ivfpq: nlist clamped from %d to %d for %d training vectors",
                           self.conf["nlist"], nlist, x.shape[0])
        quantizer = faiss.IndexFlatIP(self.dim)
        index = faiss.IndexIVFPQ(quantizer, self.dim, nlist, int(self.conf["m"]), nbits,
                                 faiss.METRIC_INNER_PRODUCT)
        index.cp.seed = int(self.conf["seed"])
        index.train(x)
        # the Python wrapper owns the quantizer: keep it alive as long as the index (setting
        # own_fields instead would free it twice at exit)
        self._quantizer = quantizer
        if int(self.conf["refine_factor"]) > 0:
            self._ivf = index
            index = faiss.IndexRefineFlat(self._ivf)
            index.k_factor = float(self.conf["refine_factor"])
        self._set_index(index)
        logger.info("Trained IVF-PQ (nlist=%d, m=%d, nbits=%d) on %d vectors", nlist, self.conf["m"], nbits, x.shape[0])

    # ------------------------------------------------------------------ API
    def set_nprobe(self, nprobe: int) -> None:
        """Inverted lists visited per query (IVF-PQ; recall vs speed). No-op for flat."""
        if nprobe < 1:
            raise ValueError(f"nprobe must be >= 1, got {nprobe}")
        self.conf["nprobe"] = int(nprobe)
        self._apply_nprobe()

    def __len__(self) -> int:
        return len(self.names)

    def add(self, names: Sequence[str], vectors) -> None:
        """Add named vectors.

        Args:
            names: B names (unique in the index).
            vectors: (B, D) float32, L2-normalised.
        """
        x = self._check(vectors, "vectors")
        names = list(names)
        if len(names) != x.shape[0]:
            raise ValueError(f"{len(names)} names for {x.shape[0]} vectors")
        new = set(names)
        if len(new) != len(names):
            raise ValueError(f"add(): {len(names) - len(new)} repeated names")
        known = self._name_set()
        dup = [n for n in names if n in known]
        if dup:
            raise ValueError(f"Names already in the index: {sorted(dup)[:5]}")
        if self._index is None:
            self.train(x)
        self._index.add(x)
        self.names.extend(names)
        known.update(names)

    def _name_set(self) -> set:
        """The set of indexed names, kept in step with ``names`` (so :meth:`add` costs
        O(new names), not O(index size))."""
        cache = getattr(self, "_names_cache", None)
        if cache is None or cache[0] is not self.names or len(cache[1]) != len(self.names):
            cache = (self.names, set(self.names))
            self._names_cache = cache
        return cache[1]

    def search_ids(self, queries, k: int) -> Tuple[np.ndarray, np.ndarray]:
        """Top-k scores (Q, k') float32 and indices (Q, k') int64, k' = min(k, len(index)).

        Missing results (possible with IVF and a small ``nprobe``) have index -1, score -inf.
        """
        if len(self.names) == 0:
            raise RuntimeError("The global index is empty: add() map vectors before searching")
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        q = self._check(queries, "queries")
        k = min(int(k), len(self.names))
        scores, ids = self._index.search(q, k)
        scores = np.where(ids < 0, -np.inf, scores).astype(np.float32)
        return scores, ids

    def search(self, queries, k: int) -> Tuple[np.ndarray, List[List[str]]]:
        """Top-k neighbours of each query.

        Args:
            queries: (Q, D) (or (D,)) float32.
            k: neighbours per query, clamped to the index size.
        Returns:
            scores (Q, k') float32 (descending), names: Q lists of up to k' names.
        """
        scores, ids = self.search_ids(queries, k)
        names = [[self.names[i] for i in row if i >= 0] for row in ids]
        return scores, names

    # ------------------------------------------------------------------ I/O
    def save(self, path: Union[str, Path]) -> Path:
        """Write ``path`` (faiss index, CPU copy) and ``path + '.json'`` (names, conf, dim)."""
        if self._index is None:
            raise RuntimeError("Cannot save an untrained, empty IVF index")
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        cpu = faiss.index_gpu_to_cpu(self._index) if self._index is not self._cpu_index else self._index
        faiss.write_index(cpu, str(path))
        meta = {"dim": self.dim, "conf": self.conf, "names": self.names}
        Path(str(path) + ".json").write_text(json.dumps(meta))
        return path

    @classmethod
    def load(cls, path: Union[str, Path], use_gpu: Optional[bool] = None) -> "GlobalIndex":
        path = Path(path)
        meta_path = Path(str(path) + ".json")
        for p in (path, meta_path):
            if not p.is_file():
                raise FileNotFoundError(f"Missing index file {p}")
        meta = json.loads(meta_path.read_text())
        conf = dict(meta["conf"])
        if use_gpu is not None:
            conf["use_gpu"] = use_gpu
        obj = cls(int(meta["dim"]), conf)
        index = faiss.read_index(str(path))
        if index.ntotal != len(meta["names"]):
            raise ValueError(f"{path} holds {index.ntotal} vectors but {meta_path} lists {len(meta['names'])} names")
        obj._set_index(index)
        obj.names = list(meta["names"])
        return obj
