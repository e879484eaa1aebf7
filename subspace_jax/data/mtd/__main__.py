"""``python -m subspace_jax.data.mtd download [--dest DIR] [--url URL]``: see :func:`.fetch.main`."""

from __future__ import annotations

import sys

from subspace_jax.data.mtd.fetch import main

sys.exit(main())
