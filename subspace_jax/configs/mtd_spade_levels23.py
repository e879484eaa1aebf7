"""SPADE on levels 2+3 instead of 1-3 (K = 50): one of the comparison's two cheaper SPADE variants
(level 1 holds most of the matching work)."""

from subspace_jax.methods.spade import SpadeConfig


def get_config() -> SpadeConfig:
    return SpadeConfig(levels=(2, 3))
