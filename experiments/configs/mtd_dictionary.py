"""The MTD default (``mtd_default.py``) with a learned dictionary of 256 atoms instead of the 761 training
images (issue 14): the same PCA projection (8, 32, 64 channels), bfloat16 banks, k = 20 and top-1% image
score, 12.5 MB instead of 42.7 MB. The atoms are learned at fit (``subspace_jax.dictionary``: the
model's own pursuit for the codes, least squares for the atoms), about a minute on a 2-core CPU.
Results: ``docs/results/mtd_tuning_efficientnet_lite0.md``.
"""

from pathlib import Path

from subspace_jax.configs import loading as config_files


def get_config():
    return config_files.load(Path(__file__).with_name("mtd_default.py"), dictionary=256)
