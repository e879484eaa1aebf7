"""The MTD default (``mtd_default.py``) with a learned dictionary of 256 atoms instead of the 761 training
images (issue 14): the same PCA projection (8, 32, 64 channels), bfloat16 banks, k = 20 and top-1% image
score, 12.5 MB instead of 42.7 MB. The atoms are learned at fit (``subspace_jax.methods.subspace.dictionary``:
the model's own pursuit for the codes, least squares for the atoms), about a minute on a 2-core CPU.
Results: ``docs/results/mtd_tuning_efficientnet_lite0.md``.
"""

import dataclasses

from subspace_jax.configs import mtd_default
from subspace_jax.methods.subspace import SubspaceConfig


def get_config() -> SubspaceConfig:
    return dataclasses.replace(mtd_default.get_config(), dictionary=256)
