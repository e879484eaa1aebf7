"""SPADE with a gallery of K = 10 nearest images instead of 50 (levels 1-3): one of the comparison's two
cheaper SPADE variants."""

from subspace_jax.methods.spade import SpadeConfig


def get_config() -> SpadeConfig:
    return SpadeConfig(top_k_images=10)
