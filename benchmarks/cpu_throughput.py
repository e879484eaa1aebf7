"""CPU throughput of the scorer, before and after a change, measured side by side.

Each implementation is a checkout (``--before`` and ``--after`` repository roots); every round starts
one fresh worker process per implementation, in alternation, so load on a shared machine hits both
alike. A worker imports ``subspace_jax`` from its checkout and times, per batch size:

- ``scorer``: ``jit(score_features)`` on synthetic features of the default MTD setting's shapes
  (efficientnet_lite0 at 256 px: levels 2-4, pooled sampling, N training images, λ = 50, k = 5);
- ``e2e``: ``jit(score_images)``, the backbone (real efficientnet_lite0 weights) included, on random
  uint8 images.

    python benchmarks/cpu_throughput.py --before /work/w-before-shard --after . --batch-sizes 8 32 \\
        --rounds 2 --out benchmarks/cpu_throughput.json

``--budgets`` adds rows of the after-checkout at other ``memory_budget_bytes`` (the vectorisation
width); the default row is the backend's default. Images/s are medians over rounds of the best of
``--repeats`` timed calls after one warm-up (compilation) call.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path


def worker(args: argparse.Namespace) -> None:
    sys.path.insert(0, str(Path(args.worker).resolve()))
    import jax
    import jax.numpy as jnp
    import numpy as np

    import subspace_jax as sj
    from subspace_jax import backbones
    from subspace_jax import model as model_lib

    assert Path(sj.__file__).resolve().is_relative_to(Path(args.worker).resolve()), sj.__file__
    config = sj.Config(
        backbone="efficientnet_lite0", levels=(2, 3, 4), sampling_level="pooled", lam=50, k=5
    )
    backbone = backbones.load("efficientnet_lite0")
    apply_fn, params = backbone.pure()
    probe = jax.eval_shape(apply_fn, params, jnp.zeros((1, 256, 256, 3), jnp.uint8))
    rng = np.random.default_rng(0)

    def synthetic(n: int) -> dict[str, np.ndarray]:
        # Non-negative like post-activation features; the cost depends on the shapes only.
        return {
            key: np.abs(rng.standard_normal((n,) + probe[key].shape[1:])).astype(np.float32)
            for key in config.feature_keys
        }

    model = sj.fit_features(synthetic(args.n_train), config)
    has_execution = hasattr(model_lib, "execution_lib")
    variants: list[tuple[str, dict]] = [("default", {})]
    if has_execution:
        from subspace_jax.execution import default_execution

        variants += [(f"budget={b}", {"execution": default_execution(b)}) for b in args.budgets]

    def best_of(fn, *fn_args) -> float:
        jax.block_until_ready(fn(*fn_args))  # compile
        times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            jax.block_until_ready(fn(*fn_args))
            times.append(time.perf_counter() - start)
        return min(times)

    rows = []
    for batch in args.batch_sizes:
        feats = {key: jnp.asarray(value) for key, value in synthetic(batch).items()}
        images = jnp.asarray(rng.integers(0, 256, (batch, 256, 256, 3), dtype=np.uint8))
        for name, kwargs in variants:
            scorer = jax.jit(lambda m, f, kw=kwargs: model_lib.score_features(m, f, **kw))
            seconds = best_of(scorer, model, feats)
            row = {"variant": name, "batch": batch, "scorer_ips": batch / seconds}
            if name == "default" or args.e2e_all:
                e2e = jax.jit(lambda m, p, x, kw=kwargs: model_lib.score_images(m, apply_fn, p, x, **kw))
                row["e2e_ips"] = batch / best_of(e2e, model, params, images)
            rows.append(row)
            print(json.dumps(row), file=sys.stderr, flush=True)
    print(json.dumps(rows))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", type=Path, help="checkout of the code before the change")
    parser.add_argument("--after", type=Path, default=Path(__file__).resolve().parents[1])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[8, 32])
    parser.add_argument("--budgets", type=int, nargs="*", default=[], help="extra memory budgets (after)")
    parser.add_argument("--n-train", type=int, default=761, help="bank size N (MTD: 761)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--e2e-all", action="store_true", help="time end to end for every budget")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    impls = {"after": args.after} if args.before is None else {"before": args.before, "after": args.after}
    common = ["--batch-sizes", *map(str, args.batch_sizes), "--n-train", str(args.n_train)]
    common += ["--repeats", str(args.repeats)] + (["--e2e-all"] if args.e2e_all else [])
    collected: dict[tuple[str, str, int], dict[str, list[float]]] = {}
    for round_index in range(args.rounds):
        for impl, root in impls.items():
            budgets = ["--budgets", *map(str, args.budgets)] if impl == "after" else []
            cmd = [sys.executable, __file__, "--worker", str(root), *common, *budgets]
            print(f"round {round_index + 1}: {impl}", file=sys.stderr, flush=True)
            out = subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True).stdout
            for row in json.loads(out.strip().splitlines()[-1]):
                entry = collected.setdefault((impl, row["variant"], row["batch"]), {})
                for key in ("scorer_ips", "e2e_ips"):
                    if key in row:
                        entry.setdefault(key, []).append(row[key])
    table = []
    for (impl, variant, batch), entry in collected.items():
        table.append(
            {"impl": impl, "variant": variant, "batch": batch}
            | {key: statistics.median(values) for key, values in entry.items()}
            | {f"{key}_rounds": values for key, values in entry.items()}
        )
    table.sort(key=lambda r: (r["batch"], r["impl"] != "before", r["variant"]))
    print("| batch | code | variant | scorer images/s | end to end images/s |")
    print("| --- | --- | --- | --- | --- |")
    for r in table:
        e2e = f"{r['e2e_ips']:.1f}" if "e2e_ips" in r else ""
        print(f"| {r['batch']} | {r['impl']} | {r['variant']} | {r['scorer_ips']:.1f} | {e2e} |")
    if args.out:
        args.out.write_text(json.dumps(table, indent=1) + "\n")


if __name__ == "__main__":
    main()
