"""MTD (Magnetic Tile Defect, one category): fit on the 761 canonical training images, test on the 583 others.

    python experiments/mtd.py --data-root PATH [--backbone efficientnet_lite0] [--out DIR] [--resume] ...

The default method is the fusion (packaged config mtd_fusion, subspace_jax/configs/mtd_fusion.py): the
subspace default and PatchCore on one backbone pass, their maps normalised by held-out training images
(docs/results/mtd_fusion_efficientnet_lite0.md). With --method subspace, the defaults are the packaged
config mtd_default (subspace_jax/configs/mtd_default.py): the paper's MTD
setting (reconstruction at levels 2, 3 and 4, subspace sampling on the pooled last level) with
PCA-projected bfloat16 banks (43 MB), k = 20 and a top-1% image score, chosen on half A of the test set
(docs/results/mtd_tuning_efficientnet_lite0.md). The paper's setting itself: --config mtd_paper; flags
override single fields.
`--data-root` defaults to $SUBSPACE_JAX_MTD, else ../shared/data/mtd beside the checkout, else the cache
`python -m subspace_jax.data.mtd download` fills. `--help` lists every flag (one per Config field).
Results with efficientnet_lite0: docs/results/mtd_efficientnet_lite0.md.
"""

from __future__ import annotations

import sys

from subspace_jax.runner import main

if __name__ == "__main__":
    sys.exit(main("mtd"))
