"""The MTD comparison's pixel-atom row: the paper's MTD setting with each pixel's feature vector rebuilt
from the candidate images' vectors in its 3x3 window (``reconstruction="pixel"``)."""

from pathlib import Path

from subspace_jax.configs import loading as config_files


def get_config():
    return config_files.load(Path(__file__).with_name("mtd_paper.py"), reconstruction="pixel")
