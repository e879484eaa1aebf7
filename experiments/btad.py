"""BTAD: fit and evaluate every category; write results.json / results.md with the paper's numbers.

    python experiments/btad.py --data-root PATH [--backbone efficientnet_lite0] [--out DIR] [--resume] ...

`--data-root` defaults to $SUBSPACE_JAX_BTAD. `--help` lists every flag (one per Config field).
"""

from __future__ import annotations

import sys

from subspace_jax.runner import main

if __name__ == "__main__":
    sys.exit(main("btad"))
