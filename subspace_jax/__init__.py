"""subspace-jax: training-free anomaly localization by subspace-guided feature reconstruction.

Layout:
  omp          orthogonal matching pursuit kernels (pure JAX, jit/vmap-able)
  backbones    Flax NNX ports of ImageNet CNNs returning multi-level feature maps
  model        Config, fit, Model.score and the pure scoring function
  baselines    PatchCore and SPADE with the same API
  methods      the registry of methods (subspace, patchcore, spade)
  config_fields  the config fields and checks every method shares
  maps         map post-processing: upsample, fuse, blur; the image score
  scoring      the staged scorer in padded batches, with per-stage timings
  execution    vectorisation widths from a memory budget; gathered vs masked, by backend
  sharding     meshes, bank-sharded models, scoring on many devices and hosts
  batching     batches, padding and backbone binding
  checkpoint   orbax save/load of fitted models
  data         MVTec AD, BTAD, MTD, folder and synthetic datasets
  metrics      pixel/image AUROC, PRO, AP, F1-max
  calibration  thresholds from defect-free images (calibrate, Thresholds, predict)
  export       the whole scorer as a serialized jax.export artifact
  cli          the ``subspace-jax`` console command (fit, predict, export, evaluate)
"""

__version__ = "0.1.0"

from subspace_jax import sharding  # noqa: E402,F401  (sj.sharding.make_mesh, ...)
from subspace_jax.eval.calibration import Prediction, Thresholds, calibrate  # noqa: E402
from subspace_jax.methods.subspace.model import Config, Model, fit, fit_features  # noqa: E402
from subspace_jax.ops import execution  # noqa: E402,F401  (sj.sharding.make_mesh, ...)

__all__ = ["Config", "Model", "Prediction", "Thresholds", "calibrate", "fit", "fit_features", "__version__"]
