"""subspace-jax: training-free anomaly localization by subspace-guided feature reconstruction.

Layout:
  omp          orthogonal matching pursuit kernels (pure JAX, jit/vmap-able)
  backbones    Flax NNX ports of ImageNet CNNs returning multi-level feature maps
  model        Config, fit, Model.score and the pure scoring function
  checkpoint   orbax save/load of fitted models
  data         MVTec AD, BTAD, MTD, folder and synthetic datasets
  metrics      pixel/image AUROC, PRO, AP, F1-max
"""

__version__ = "0.1.0"

from subspace_jax.model import Config, Model, fit, fit_features  # noqa: E402

__all__ = ["Config", "Model", "fit", "fit_features", "__version__"]
