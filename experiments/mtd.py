"""MTD (Magnetic Tile Defect, one category): fit on the 761 canonical training images, evaluate on the other 583.

    python experiments/mtd.py --data-root PATH [--backbone efficientnet_lite0] [--out DIR] [--resume] ...

Defaults are the paper's MTD setting, experiments/configs/mtd_paper.py: reconstruction at levels 2, 3 and 4,
subspace sampling on the pooled last level (override with --levels / --sampling-level, or start from another
file with --config FILE). `--data-root` defaults to $SUBSPACE_JAX_MTD.
`--help` lists every flag (one per Config field). Results with efficientnet_lite0:
docs/results/mtd_efficientnet_lite0.md.
"""

from __future__ import annotations

import sys

from subspace_jax.runner import main
from subspace_jax.runner.datasets import MTD

if __name__ == "__main__":
    sys.exit(main(MTD))
