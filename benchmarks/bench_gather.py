"""Image-mode reconstruction time with the λ sampled candidates gathered (the library) against the
whole-bank correlations masked to them (the implementation before, reproduced here as ``masked``).

Both scorers run on the same fitted model and features, in interleaved rounds in one process; the
figures are medians over the rounds in ms per test image, per stage. Cases:

- ``mtd``: efficientnet_lite0 features of MTD cached by ``experiments/mtd.py --feature-cache DIR``
  (``DIR/mtd/mtd/{train,test}/efficientnet_lite0-*-size256-cropnone-*/<key>.npy``), N = 761, levels
  2-4, pooled sampling, the first ``--n-test`` test images.
- ``wrn50``: random features of WRN50's shapes at 256 px (levels 2 and 3: 32·32·512 and 16·16·1024;
  pooled sampling, 2048), N = 200, λ = 30, k = 5.

    python benchmarks/bench_gather.py --mtd-cache /tmp/mtd/cache2 --rounds 3
"""

from __future__ import annotations

import argparse
import dataclasses
import platform
import statistics
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import subspace_jax as sj  # noqa: E402
from subspace_jax.methods.subspace import pursuit  # noqa: E402
from subspace_jax.ops import maps as maps_lib  # noqa: E402
from subspace_jax.ops import omp as omp_lib  # noqa: E402


@jax.jit
def masked_reconstruct_levels(model, features, candidates):
    """The pre-gathering image mode: α against all N rows, the pursuit masked to the candidates."""
    cfg = model.config
    n = model.n_train
    batch = candidates.indices.shape[0]
    rows = jnp.arange(batch)[:, None]
    mask = (
        jnp.zeros((batch, n), jnp.int32).at[rows, candidates.indices].max(candidates.valid.astype(jnp.int32))
        > 0
    )
    out = {}
    with jax.default_matmul_precision("highest"):
        for level in cfg.levels:
            key = f"level{level}"
            bank = model.banks[key]
            atoms = bank.reshape(n, -1).astype(jnp.float32)
            y = features[key].reshape(batch, -1).astype(jnp.float32)
            result = omp_lib.omp_gram(
                model.grams[key],
                y @ atoms.T,
                min(cfg.k, n),
                candidates=mask,
                tol=cfg.tol,
                target_norm_sq=jnp.sum(y * y, axis=-1),
                normalize_selection=cfg.normalize_selection,
            )
            residual = y - omp_lib.reconstruct(result.support, result.coef, atoms)
            out[key] = jnp.linalg.norm(residual.reshape(batch, *bank.shape[1:]), axis=-1)
    return out


def mtd_case(cache: Path, n_test: int) -> tuple[dict, dict, sj.Config]:
    def load(split: str, count: int | None) -> dict[str, np.ndarray]:
        (folder,) = sorted((cache / "mtd" / "mtd" / split).glob("efficientnet_lite0-*-size256-cropnone-*"))
        return {
            key: np.ascontiguousarray(np.load(folder / f"{key}.npy", mmap_mode="r")[:count])
            for key in ("level2", "level3", "level4", "pooled")
        }

    config = sj.Config(backbone="efficientnet_lite0", levels=(2, 3, 4), sampling_level="pooled", lam=50, k=5)
    return load("train", None), load("test", n_test), config


def wrn50_case(n_test: int) -> tuple[dict, dict, sj.Config]:
    shapes = {"level2": (32, 32, 512), "level3": (16, 16, 1024), "pooled": (2048,)}
    rng = np.random.default_rng(0)
    train = {key: rng.standard_normal((200, *shape), np.float32) for key, shape in shapes.items()}
    test = {key: rng.standard_normal((n_test, *shape), np.float32) for key, shape in shapes.items()}
    config = sj.Config(backbone="wide_resnet50_2", levels=(2, 3), sampling_level="pooled", lam=30, k=5)
    return train, test, config


def run_case(name: str, train: dict, test: dict, base: sj.Config, batch_size: int, rounds: int) -> list[str]:
    n_test = next(iter(test.values())).shape[0]
    batches = [
        {key: jnp.asarray(value[start : start + batch_size]) for key, value in test.items()}
        for start in range(0, n_test - batch_size + 1, batch_size)
    ]
    n_images = len(batches) * batch_size
    sample = jax.jit(pursuit.sample_candidates)
    gathered = jax.jit(pursuit.reconstruct_levels)
    size = (base.output_size, base.output_size)

    def fuse(level_maps, size, config):
        return maps_lib.maps_and_scores_jit(level_maps, size, fusion=config.fusion, sigma=config.sigma)

    lines = []
    for sampling in ("subspace", "random", "none"):
        model = sj.fit_features(train, dataclasses.replace(base, sampling=sampling))
        scorers = {"masked (before)": masked_reconstruct_levels, "gathered (after)": gathered}
        # Compile, and check the two give the same maps.
        candidates = sample(model, batches[0])
        outputs = {label: fn(model, batches[0], candidates) for label, fn in scorers.items()}
        diff = max(
            float(jnp.max(jnp.abs(outputs["masked (before)"][k] - outputs["gathered (after)"][k])))
            for k in outputs["masked (before)"]
        )
        scale = max(float(jnp.max(v)) for v in outputs["masked (before)"].values())
        fuse(outputs["gathered (after)"], size, model.config)
        times = {label: {"sampling": [], "reconstruction": [], "maps": []} for label in scorers}
        for _ in range(rounds):
            for label, fn in scorers.items():
                total = {"sampling": 0.0, "reconstruction": 0.0, "maps": 0.0}
                for batch in batches:
                    start = time.perf_counter()
                    candidates = jax.block_until_ready(sample(model, batch))
                    middle = time.perf_counter()
                    level_maps = jax.block_until_ready(fn(model, batch, candidates))
                    end = time.perf_counter()
                    jax.block_until_ready(fuse(level_maps, size, model.config))
                    total["sampling"] += middle - start
                    total["reconstruction"] += end - middle
                    total["maps"] += time.perf_counter() - end
                for stage, seconds in total.items():
                    times[label][stage].append(seconds / n_images * 1e3)
        medians = {
            label: {stage: statistics.median(v) for stage, v in stages.items()}
            for label, stages in times.items()
        }
        before, after = (
            medians["masked (before)"]["reconstruction"],
            medians["gathered (after)"]["reconstruction"],
        )
        for label, row in medians.items():
            line = (
                f"| {name} | {sampling} | {label} | {row['sampling']:.2f} | {row['reconstruction']:.2f} | "
                f"{row['maps']:.2f} | {sum(row.values()):.2f} |"
            )
            if label.startswith("gathered"):
                line += f" {before / after:.2f}× | {diff:.1e} (maps up to {scale:.1f}) |"
            else:
                line += " | |"
            print(line, flush=True)
            lines.append(line)
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--mtd-cache", type=Path, help="feature cache of experiments/mtd.py (efficientnet_lite0)"
    )
    parser.add_argument("--n-test", type=int, default=64, help="MTD test images timed")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--wrn50-n-test", type=int, default=8)
    parser.add_argument("--wrn50-batch-size", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--cases", nargs="+", default=["mtd", "wrn50"], choices=["mtd", "wrn50"])
    args = parser.parse_args()
    print(f"command: python {' '.join(sys.argv)}")
    print(
        f"machine: {platform.processor() or platform.machine()}, "
        f"{jax.device_count()} {jax.default_backend()} device(s), jax {jax.__version__}"
    )
    print(
        "| case | sampling | reconstruction | sampling ms/img | reconstruction ms/img | maps ms/img "
        "| total ms/img | reconstruction before / after | max |Δ level map| |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    if "mtd" in args.cases:
        if args.mtd_cache is None:
            parser.error("--mtd-cache is needed for the mtd case")
        train, test, config = mtd_case(args.mtd_cache, args.n_test)
        run_case("mtd lite0 N=761 λ=50 k=5", train, test, config, args.batch_size, args.rounds)
        del train, test
    if "wrn50" in args.cases:
        train, test, config = wrn50_case(args.wrn50_n_test)
        run_case("wrn50-shaped N=200 λ=30 k=5", train, test, config, args.wrn50_batch_size, args.rounds)


if __name__ == "__main__":
    main()
