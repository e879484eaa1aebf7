"""MTD (Magnetic Tile Defect, one category): fit on the 761 canonical training images, evaluate on the other 583.

    python experiments/mtd.py --data-root PATH [--backbone efficientnet_lite0] [--out DIR] [--resume] ...

Defaults are the paper's MTD setting: reconstruction at levels 2, 3 and 4, subspace sampling on the pooled
last level (override with --levels / --sampling-level). `--data-root` defaults to $SUBSPACE_JAX_MTD.
`--help` lists every flag (one per Config field). Results with efficientnet_lite0:
docs/results/mtd_efficientnet_lite0.md.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from subspace_jax.runner import main  # noqa: E402
from subspace_jax.runner.datasets import MTD  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(MTD))
