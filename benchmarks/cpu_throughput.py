"""CPU throughput of the scorer before and after a change, side by side in one process.

"before" is the pursuit kernels (``subspace_jax/methods/subspace/pursuit.py``: sampling and
reconstruction) of another checkout (``--before``, e.g. a worktree of the commit before the change),
loaded as a separate module next to this checkout's package (it imports this checkout's lower layers,
so the checkout must have the same layout: one from before the layers, ae75485, has no such file).
Both kernels run on the same fitted model, backbone and inputs, each composed into the scorer as
``subspace_jax.methods.subspace.scorer.score_features`` composes them (sampling -> reconstruction ->
maps). Every round times each implementation once per batch size, in alternation, so load on a shared
machine hits both alike.

- ``scorer``: the jitted scorer on synthetic features of the default MTD setting's shapes
  (efficientnet_lite0 at 256 px: levels 2-4, pooled sampling, N = 761 training images, λ = 50,
  k = 5); the cost depends on the shapes only.
- ``end to end``: the jitted backbone (efficientnet_lite0's real weights) and scorer on random uint8
  images.

    git worktree add --detach ../before HEAD~1
    python benchmarks/cpu_throughput.py --before ../before --batch-sizes 8 32 --rounds 5

(``cpu_throughput.md`` was measured before the layers, when "before" was a checkout's ``model.py``.)

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
from subspace_jax.methods.subspace import pursuit as after
from subspace_jax.ops import maps as maps_lib

PURSUIT = Path("subspace_jax") / "methods" / "subspace" / "pursuit.py"


def load_before(root: Path):
    """The pursuit kernels of the checkout at ``root`` as the module ``before_pursuit``."""
    spec = importlib.util.spec_from_file_location("before_pursuit", root / PURSUIT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["before_pursuit"] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


def scorer_of(kernels):
    """The pure scorer with ``kernels``' sampling and reconstruction: (model, features) -> (maps, scores)."""

    def score_features(model, features):
        cfg = model.config
        candidates = kernels.sample_candidates(model, features)
        level_maps = kernels.reconstruct_levels(model, features, candidates)
        size = (cfg.output_size, cfg.output_size)
        fusion = {"fusion": cfg.fusion, "sigma": cfg.sigma, "score_fraction": cfg.score_fraction}
        return maps_lib.maps_and_scores(level_maps, size, **fusion)

    return score_features


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

    model = sj.fit_features(synthetic(args.n_train), sj.Config(**settings))
    impls = {}
    for name, kernels in (("before", before), ("after", after)):
        score = scorer_of(kernels)
        scorer = jax.jit(score)
        e2e = jax.jit(
            lambda m, p, x, score=score: score(m, {k: v for k, v in apply_fn(p, x).items() if k in keys})
        )
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
