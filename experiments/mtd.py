"""MTD (Magnetic Tile Defect): fit and evaluate every category, write results.json / results.md, print the paper's numbers beside ours.

    python experiments/mtd.py --data-root PATH [--backbone efficientnet_lite0] [--out DIR] [--resume] ...

`--data-root` defaults to $SUBSPACE_JAX_MTD. `--help` lists every flag (one per Config field).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from subspace_jax.runner import main  # noqa: E402
from subspace_jax.runner.datasets import MTD  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(MTD))
