"""The MTD comparison's PatchCore row: the paper's defaults (levels 2+3, sigma 4) with a 1% coreset
instead of 10%: the greedy coreset's time grows with the patches it picks, and 10% takes hours on a CPU."""

from subspace_jax.methods.patchcore import PatchCoreConfig


def get_config() -> PatchCoreConfig:
    return PatchCoreConfig(coreset_ratio=0.01)
