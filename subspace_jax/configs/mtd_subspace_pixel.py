"""The MTD comparison's pixel-atom row: the paper's MTD setting with each pixel's feature vector rebuilt
from the candidate images' vectors in its 3x3 window (``reconstruction="pixel"``)."""

import dataclasses

from subspace_jax.configs import mtd_paper
from subspace_jax.methods.subspace import SubspaceConfig


def get_config() -> SubspaceConfig:
    return dataclasses.replace(mtd_paper.get_config(), reconstruction="pixel")
