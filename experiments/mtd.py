"""MTD (Magnetic Tile Defect, one category): fit on the 761 canonical training images, test on the 583 others.

    python experiments/mtd.py --data-root PATH [--backbone efficientnet_lite0] [--out DIR] [--resume] ...

Defaults are the paper's MTD setting, experiments/configs/mtd_paper.py: reconstruction at levels 2, 3 and 4,
subspace sampling on the pooled last level (override with --levels / --sampling-level, or start from another
file with --config FILE). `--data-root` defaults to $SUBSPACE_JAX_MTD, else ../shared/data/mtd beside the
checkout, else the cache `python -m subspace_jax.data.mtd download` fills. `--help` lists every flag (one
per Config field). Results with efficientnet_lite0: docs/results/mtd_efficientnet_lite0.md.
"""

from __future__ import annotations

import sys

from subspace_jax.runner import main
from subspace_jax.runner.datasets import MTD

if __name__ == "__main__":
    sys.exit(main(MTD))
