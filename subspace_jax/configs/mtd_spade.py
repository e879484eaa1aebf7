"""SPADE's own setting (K = 50 nearest images, levels 1-3, sigma 4): the MTD comparison's "SPADE" row.

At 256 px it matches every level-1 vector against 50 x 64 x 64 gallery vectors: more than 2.2 s per
image on a 2-core CPU, so the comparison runs the two cheaper variants by default.
"""

from subspace_jax.methods.spade import SpadeConfig


def get_config() -> SpadeConfig:
    return SpadeConfig()
