"""Scoring time of subspace, random and no sampling on MTD, side by side in one process, from cached features

    python experiments/mtd_sampling_speed.py --data-root /data/mtd --feature-cache DIR \\
        [--config mtd_paper] [--rounds 3] [--k 5 --lam 50]

Reads the backbone features through the runner's ``Workbench`` and feature cache (``experiments/mtd.py
--feature-cache DIR`` fills the same entries), computing and storing them when it lacks them. The three
settings are fitted once and scored in interleaved rounds (so a busy machine slows all of them alike);
prints the median seconds per stage over the rounds and the ratios to "none".
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
from pathlib import Path

from subspace_jax import backbones, configs, fit_features
from subspace_jax.data.mtd import MTD
from subspace_jax.engine.scorer import score_in_batches
from subspace_jax.methods.subspace import SubspaceConfig
from subspace_jax.runner.workbench import Workbench


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-root", type=Path, required=True)
    parser.add_argument("--feature-cache", type=Path, required=True)
    parser.add_argument(
        "--config",
        default="mtd_paper",
        help="a subspace config: packaged name or .py/.json file (default: %(default)s); its sampling varies",
    )
    parser.add_argument("--backbone", default="efficientnet_lite0")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--k", type=int, default=None)
    parser.add_argument("--lam", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=16)
    args = parser.parse_args(argv)

    try:
        base = configs.load(
            args.config,
            backbone=args.backbone,
            **{name: value for name, value in (("k", args.k), ("lam", args.lam)) if value is not None},
        )
    except ValueError as exc:
        parser.error(f"--config: {exc}")
    if not isinstance(base, SubspaceConfig):
        parser.error(f"--config: {args.config} holds no subspace config")
    bench = Workbench(
        MTD(args.data_root),
        "mtd",
        backbones.load_cached(args.backbone),
        cache_dir=args.feature_cache,
        image_size=base.image_size,
        crop=base.crop,
        batch_size=args.batch_size,
    )
    split_features = {split: bench.features(split) for split in ("train", "test")}

    settings = {name: dataclasses.replace(base, sampling=name) for name in ("subspace", "random", "none")}
    models = {name: fit_features(split_features["train"], config) for name, config in settings.items()}
    n_test = next(iter(split_features["test"].values())).shape[0]
    for model in models.values():  # compile every scorer before timing
        score_in_batches(
            model,
            {k: v[: args.batch_size] for k, v in split_features["test"].items()},
            batch_size=args.batch_size,
            timings={},
            progress=False,
        )
    times: dict[str, list[dict]] = {name: [] for name in settings}
    for _ in range(args.rounds):
        for name, model in models.items():
            timings: dict[str, float] = {}
            score_in_batches(
                model,
                split_features["test"],
                batch_size=args.batch_size,
                timings=timings,
                progress=False,
            )
            times[name].append(timings)

    stages = ("sampling", "reconstruction", "maps")
    print(
        f"MTD, {args.backbone}, k={base.k}, lam={base.lam}, levels {base.levels}, sampling level "
        f"{base.sampling_level}: median seconds over {args.rounds} interleaved rounds, {n_test} test images"
    )
    none_total = statistics.median(sum(t[s] for s in stages) for t in times["none"])
    print("| sampling | " + " | ".join(stages) + " | total | total / none |")
    print("|---" * (len(stages) + 3) + "|")
    for name in settings:
        medians = [statistics.median(t[s] for t in times[name]) for s in stages]
        total = statistics.median(sum(t[s] for s in stages) for t in times[name])
        print(
            f"| {name} | "
            + " | ".join(f"{m:.2f}" for m in medians)
            + f" | {total:.2f} | {total / none_total:.2f} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
