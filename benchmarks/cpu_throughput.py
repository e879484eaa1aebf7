"""CPU throughput of the scorer before and after a change, side by side in one process.

"before" is ``subspace_jax/model.py`` of another checkout (``--before``, e.g. a worktree of the
commit before the change) loaded as a separate module next to this checkout's package: its scorer
runs on the same backbone, OMP kernels (``omp.py`` is unchanged) and inputs. Every round times each
implementation once per batch size, in alternation, so load on a shared machine hits both alike.

- ``scorer``: ``jit(score_features)`` on synthetic features of the default MTD setting's shapes
  (efficientnet_lite0 at 256 px: levels 2-4, pooled sampling, N = 761 training images, λ = 50,
  k = 5); the cost depends on the shapes only.
- ``end to end``: ``jit(score_images)``, the backbone (efficientnet_lite0's real weights) included,
  on random uint8 images.

    git -C /work/main worktree add --detach /work/w-before-shard 09c7182
    python benchmarks/cpu_throughput.py --before /work/w-before-shard --batch-sizes 8 32 --rounds 5

Images/s are medians over rounds of wall-clock time (each round: one timed call after the warm-up
compilation); CPU ms/image are medians of the process's CPU time (all threads), which a shared
machine's load disturbs far less than wall-clock time.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

import subspace_jax as sj
from subspace_jax import backbones
from subspace_jax.methods.subspace import model as after


def load_before(root: Path):
    """``model.py`` of the checkout at ``root`` as the module ``before_model``."""
    spec = importlib.util.spec_from_file_location("before_model", root / "subspace_jax" / "model.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["before_model"] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", type=Path, required=True, help="checkout of the code before the change")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[8, 32])
    parser.add_argument("--n-train", type=int, default=761, help="bank size N (MTD: 761)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", type=Path, help="also write the table as JSON")
    args = parser.parse_args()
    before = load_before(args.before)
    backbone = backbones.load("efficientnet_lite0")
    apply_fn, params = backbone.pure()
    probe = jax.eval_shape(apply_fn, params, jnp.zeros((1, 256, 256, 3), jnp.uint8))
    settings = dict(backbone="efficientnet_lite0", levels=(2, 3, 4), sampling_level="pooled", lam=50, k=5)
    rng = np.random.default_rng(0)
    keys = sj.Config(**settings).feature_keys

    def synthetic(n: int) -> dict[str, np.ndarray]:
        return {k: np.abs(rng.standard_normal((n,) + probe[k].shape[1:])).astype(np.float32) for k in keys}

    train = synthetic(args.n_train)
    impls = {}
    for name, module in (("before", before), ("after", after)):
        model = module.fit_features(train, module.Config(**settings))
        scorer = jax.jit(lambda m, f, module=module: module.score_features(m, f))
        e2e = jax.jit(lambda m, p, x, module=module: module.score_images(m, apply_fn, p, x))
        impls[name] = (model, scorer, e2e)
    inputs = {}
    for batch in args.batch_sizes:
        feats = {k: jnp.asarray(v) for k, v in synthetic(batch).items()}
        images = jnp.asarray(rng.integers(0, 256, (batch, 256, 256, 3), dtype=np.uint8))
        inputs[batch] = (feats, images)
        for model, scorer, e2e in impls.values():  # compile
            jax.block_until_ready(scorer(model, feats))
            jax.block_until_ready(e2e(model, params, images))

    times: dict[tuple[str, int, str], list[float]] = {}
    cpu_times: dict[tuple[str, int, str], list[float]] = {}
    for round_index in range(args.rounds):
        for batch, (feats, images) in inputs.items():
            for name, (model, scorer, e2e) in impls.items():
                for kind, call in (
                    ("scorer", lambda: scorer(model, feats)),
                    ("e2e", lambda: e2e(model, params, images)),
                ):
                    start, cpu = time.perf_counter(), time.process_time()
                    jax.block_until_ready(call())
                    times.setdefault((name, batch, kind), []).append(time.perf_counter() - start)
                    cpu_times.setdefault((name, batch, kind), []).append(time.process_time() - cpu)
        print(f"round {round_index + 1} done", file=sys.stderr, flush=True)

    rows = []
    print(
        "| batch | code | scorer images/s | end to end images/s | scorer CPU ms/image "
        "| end to end CPU ms/image |"
    )
    print("| --- | --- | --- | --- | --- | --- |")
    for batch in args.batch_sizes:
        for name in impls:
            row = {"batch": batch, "code": name}
            for kind in ("scorer", "e2e"):
                row[f"{kind}_images_per_s"] = batch / statistics.median(times[(name, batch, kind)])
                row[f"{kind}_seconds"] = times[(name, batch, kind)]
                cpu = cpu_times[(name, batch, kind)]
                row[f"{kind}_cpu_ms_per_image"] = 1e3 * statistics.median(cpu) / batch
                row[f"{kind}_cpu_seconds"] = cpu
            rows.append(row)
            print(
                f"| {batch} | {name} | {row['scorer_images_per_s']:.1f} | {row['e2e_images_per_s']:.1f} | "
                f"{row['scorer_cpu_ms_per_image']:.2f} | {row['e2e_cpu_ms_per_image']:.2f} |"
            )
        b, a = rows[-2], rows[-1]
        ratios = [a[k] / b[k] for k in ("scorer_images_per_s", "e2e_images_per_s")]
        ratios += [b[k] / a[k] for k in ("scorer_cpu_ms_per_image", "e2e_cpu_ms_per_image")]
        print(f"| {batch} | after / before (speed) | " + " | ".join(f"{r:.2f}" for r in ratios) + " |")
    if args.out:
        args.out.write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
