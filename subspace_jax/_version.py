"""The package version, in one place (``subspace_jax.__version__``, checkpoint metadata)."""

__version__ = "0.1.0"
