"""The benchmark runner behind ``experiments/*.py``, the notebooks and the comparison scripts.

command        the benchmark command: flags, resume, one line per error (``main("mtd", argv)``)
run            one category: features, fit, score, metrics, figures, timings, peak memory
evaluation     the one fit → score → metrics path; each dataset's default config per method
workbench      one category's splits and cached features (notebooks, comparisons, the runner)
feature_cache  backbone features as .npy files, keyed by content and backbone identity
results        results.json / results.md, with the paper's numbers beside ours
figures        image | ground truth | heat-map PNGs of the best and worst test images
published      the paper's published per-class numbers
"""

from __future__ import annotations

from subspace_jax.runner.command import main
from subspace_jax.runner.evaluation import default_config, evaluate, fit_and_score
from subspace_jax.runner.run import RunSettings, run_category
from subspace_jax.runner.workbench import Workbench

__all__ = ["RunSettings", "Workbench", "default_config", "evaluate", "fit_and_score", "main", "run_category"]
