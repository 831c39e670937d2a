"""Experiment protocols: they compose mapping and localization (and the metrics of
:mod:`hloc_bpnp.evaluation`) into the benchmarks the pipelines run.

* :mod:`.leave_one_out` — every image localized against a map of the others (Strecha,
  Middlebury, ablations of mapping / localization presets);
* :mod:`.datasets` — train/test datasets (7-Scenes, Cambridge, Aachen) and query lists;
* :mod:`.limited` — each pose refined from a fixed small number of inliers, so that keypoint
  precision, not the count of matches, limits it;
* :mod:`.keypoint_precision` — paired Sampson errors of a fixed match set under known poses;
* :mod:`.gt_consistency` — the corrections a bundle adjustment asks of a scene's ground-truth
  poses, and whether two feature presets agree on them (can the scene rank two methods?);
* :mod:`.summary` — per-method summaries (errors, recalls, timings) written as strict JSON.

``hloc_bpnp.evaluation`` keeps the metrics and plots, which depend on geometry only.
"""
