"""Image-mode gathered reconstruction: one test image at a time (before) vs W images at once (after).

    PYTHONPATH=$PWD python benchmarks/bench_image_width.py --before ../before --batch 8

MTD's level-2 shapes (N = 761, λ = 50, d = 32·32·40), random non-negative rows; ``image_pursuit`` of
the ``--before`` checkout's ``subspace_jax/methods/subspace/pursuit.py`` (loaded next to this package,
whose lower layers it imports: the checkout needs the same layout) against this one's with budgets of
1, 2 and 4 blocks; best and median of 5 interleaved calls, ms per test image.
"""

import argparse
import importlib.util
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

import subspace_jax as sj
from subspace_jax.methods.subspace import pursuit as after
from subspace_jax.ops.execution import Execution

parser = argparse.ArgumentParser()
parser.add_argument("--before", type=Path, required=True)
parser.add_argument("--batch", type=int, default=8)
args = parser.parse_args()
path = args.before / "subspace_jax" / "methods" / "subspace" / "pursuit.py"
spec = importlib.util.spec_from_file_location("before_pursuit", str(path))
before = importlib.util.module_from_spec(spec)
sys.modules["before_pursuit"] = before
spec.loader.exec_module(before)
rng = np.random.default_rng(0)
N, B, lam, d = 761, args.batch, 50, 40960
atoms = jnp.asarray(np.abs(rng.standard_normal((N, d))).astype(np.float32))
gram = atoms @ atoms.T
y = jnp.asarray(np.abs(rng.standard_normal((B, d))).astype(np.float32))
idx = jnp.asarray(
    np.sort(np.stack([rng.choice(N, lam, replace=False) for _ in range(B)]), axis=1).astype(np.int32)
)
cand = after.Candidates(idx, jnp.ones((B, lam), bool))
cfg = sj.Config(backbone="efficientnet_lite0")


def run_before(a, g, t, c):
    with jax.default_matmul_precision("highest"):  # as the library's scorer runs it
        return before.image_pursuit(a, g, t, before.Candidates(*c), cfg)[1]


fns = {"before": jax.jit(run_before)}
for w in (1, 2, 4):

    def run_after(a, g, t, c, w=w):
        with jax.default_matmul_precision("highest"):
            return after.image_pursuit(a, g, t, c, cfg, Execution(w * 4 * lam * d))[1]

    fns[f"after W={w}"] = jax.jit(run_after)
for f in fns.values():
    jax.block_until_ready(f(atoms, gram, y, cand))
res = {k: [] for k in fns}
for r in range(5):
    for k, f in fns.items():
        t = time.perf_counter()
        jax.block_until_ready(f(atoms, gram, y, cand))
        res[k].append(time.perf_counter() - t)
for k, v in res.items():
    print(k, "min ms/img %.2f" % (1e3 * min(v) / B), "median %.2f" % (1e3 * np.median(v) / B))
