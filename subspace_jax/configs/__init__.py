"""Configs inside the package: the named configs (``mtd_default``, ``mtd_paper``, ...), the one loader
(``load``: a name or a file), and command-line flags generated from config dataclasses (``flags``)."""

from __future__ import annotations

from subspace_jax.configs import flags
from subspace_jax.configs.loading import CONFIG_DIR, from_dict, load, names, parse_overrides

__all__ = ["CONFIG_DIR", "flags", "from_dict", "load", "names", "parse_overrides"]
