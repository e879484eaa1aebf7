"""The paper's MTD setting (Sec. IV-B3): reconstruction at levels 2, 3 and 4, subspace sampling on the
pooled last level (one vector per image); every other field is ``subspace_jax.Config``'s default.

The default of ``experiments/mtd.py`` (``--method subspace``), and the comparison's image-atom row.
"""

import subspace_jax as sj


def get_config() -> sj.Config:
    return sj.Config(levels=(2, 3, 4), sampling_level="pooled")
