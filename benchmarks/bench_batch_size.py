"""End-to-end scoring time per image against the batch size, the measurement behind
``subspace_jax.ops.execution.DEFAULT_BATCH_SIZE``.

One fitted model (the named config, efficientnet_lite0's real weights, on MTD's training images or on
random ones), then ``model.score`` on the same test images at every batch size, the sizes in
alternation within every round (load on a shared machine hits them alike), each after a compiling call.
Medians and best rounds of wall-clock and CPU time (all threads) per image:

    python benchmarks/bench_batch_size.py --data-root ../shared/data/mtd --batch-sizes 8 16 32 64
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import time
from pathlib import Path

import numpy as np

import subspace_jax as sj
from subspace_jax.data import MTD, load_samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="mtd_default")
    parser.add_argument("--backbone", default="efficientnet_lite0")
    parser.add_argument("--data-root", type=Path, help="MTD's folder; random images without it")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[8, 16, 32, 64])
    parser.add_argument("--n-train", type=int, default=761, help="random training images (MTD: 761)")
    parser.add_argument("--n-test", type=int, default=128, help="test images scored per call")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    if args.data_root is not None:
        dataset = MTD(args.data_root)
        train = load_samples(dataset.samples("train"), 256, None, False).images
        test = load_samples(dataset.samples("test")[: args.n_test], 256, None, False).images
    else:
        rng = np.random.default_rng(0)
        train = rng.integers(0, 256, (args.n_train, 256, 256, 3), dtype=np.uint8)
        test = rng.integers(0, 256, (args.n_test, 256, 256, 3), dtype=np.uint8)
    config = dataclasses.replace(sj.configs.load(args.config), backbone=args.backbone)
    model = sj.fit(train, config, progress=False)
    for batch in args.batch_sizes:
        model.score(test[:batch], batch, progress=False)
    wall: dict[int, list[float]] = {batch: [] for batch in args.batch_sizes}
    cpu: dict[int, list[float]] = {batch: [] for batch in args.batch_sizes}
    for round_index in range(args.rounds):
        for batch in args.batch_sizes:
            start, start_cpu = time.perf_counter(), time.process_time()
            model.score(test, batch, progress=False)
            wall[batch].append(1e3 * (time.perf_counter() - start) / len(test))
            cpu[batch].append(1e3 * (time.process_time() - start_cpu) / len(test))
        print(f"round {round_index + 1} of {args.rounds} done", file=sys.stderr, flush=True)
    print(f"{args.config}, {len(train)} training images, {len(test)} test images per call")
    print("| batch | wall ms/image | best round | CPU ms/image | best round | wall vs. the first size |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: |")
    first = statistics.median(wall[args.batch_sizes[0]])
    for batch in args.batch_sizes:
        median_wall = statistics.median(wall[batch])
        print(
            f"| {batch} | {median_wall:.2f} | {min(wall[batch]):.2f} | {statistics.median(cpu[batch]):.2f} "
            f"| {min(cpu[batch]):.2f} | {median_wall / first:.2f} |"
        )


if __name__ == "__main__":
    main()
