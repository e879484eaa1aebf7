"""The experiment runner behind ``experiments/mvtec.py``, ``btad.py`` and ``mtd.py``.

cli           command-line flags generated from a Config dataclass
config_files  experiment variants as config files (experiments/configs/*.py with get_config())
features      batched backbone features and their on-disk .npy cache
figures       image | ground truth | heat-map PNGs of the best and worst test images
results       results.json (keys in docs/method.md, "Results file") and results.md, with
              the paper's numbers beside ours
core          the per-category loop, resume, timings and peak memory
datasets      MVTec AD, BTAD and MTD as DatasetSpec values
"""

from __future__ import annotations

from subspace_jax.runner.core import DatasetSpec, RunSettings, main, run_category

__all__ = ["DatasetSpec", "RunSettings", "main", "run_category"]
