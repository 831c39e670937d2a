"""Ray execution of batch localization and map feature extraction (the ``distributed`` extra:
``pip install 'hloc_bpnp[distributed]'``).

* :func:`localize_distributed`: actors each load the map once from its folder, queries go out
  in chunks, results come back in order into the sequential path's results file and JSON log
  (atomic, resumable); dead workers are replaced and their chunk retried, a query that keeps
  killing workers is recorded as failed (``worker_died``).
* :func:`extract_features_distributed`: map feature extraction across actors; the driver alone
  writes the per-image cache and (through ``Map.save``) the HDF5 store.

Importing this package does not import Ray; the functions raise ImportError naming the extra
when it is missing.
"""
from ._ray import INSTALL_HINT, require_ray
from .extract import extract_features_distributed
from .localize import LocalizationWorker, localize_distributed

__all__ = ["localize_distributed", "extract_features_distributed", "LocalizationWorker", "require_ray",
           "INSTALL_HINT"]
