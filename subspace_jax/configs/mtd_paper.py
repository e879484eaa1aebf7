"""The paper's MTD setting (Sec. IV-B3): reconstruction at levels 2, 3 and 4, subspace sampling on the
pooled last level (one vector per image); every other field is ``subspace_jax.Config``'s default.

The default of ``experiments/mtd.py`` (``--method subspace``), and the comparison's image-atom row.
"""

from subspace_jax.methods.subspace import SubspaceConfig


def get_config() -> SubspaceConfig:
    return SubspaceConfig(levels=(2, 3, 4), sampling_level="pooled")
