"""Memory per training image and scoring time per image, split by stage, for the model.

Memory: bytes the banks hold per training image (reconstruction levels plus the sampling level),
in float32 and bfloat16, measured from the arrays of a fitted model; the Gram matrices add
4·N² bytes per level and are listed apart.

Speed: ``Model.score(..., timings=...)`` runs the four stages (backbone, sampling, reconstruction,
maps) as separately jitted functions with ``block_until_ready`` and sums their wall-clock seconds.
One warm-up call compiles everything first; the figures are the mean over ``--repeats`` timed calls,
divided by the number of test images. Every configuration is timed in the same run, side by side.
WRN50 uses random weights when no pretrained file is available: the timing does not depend on them.

    python benchmarks/bench_model.py --backbones efficientnet_lite0 wide_resnet50_2 --n-train 64
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import sys
import time
from pathlib import Path

import jax
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import subspace_jax as sj  # noqa: E402
from subspace_jax import backbones  # noqa: E402
from subspace_jax.data import synthetic  # noqa: E402
from subspace_jax.methods.base import level_key  # noqa: E402

STAGES = ("backbone", "sampling", "reconstruction", "maps")


def load_backbone(name: str) -> tuple[backbones.Backbone, str]:
    try:
        return backbones.load(name, progress=False), "pretrained"
    except (FileNotFoundError, OSError):
        return backbones.load(name, weights="random"), "random"


def bank_bytes_per_image(model: sj.Model) -> dict[str, int]:
    n = model.n_train
    per_level = {key: int(value.nbytes) // n for key, value in model.banks.items()}
    if model.sampling_bank is not None:
        per_level["sampling"] = int(model.sampling_bank.nbytes) // n
    per_level["total"] = sum(per_level.values())
    return per_level


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--backbones", nargs="+", default=["efficientnet_lite0", "wide_resnet50_2"])
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--n-train", type=int, default=64)
    parser.add_argument("--n-test", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=2)
    defaults = sj.Config()
    parser.add_argument("--lam", type=int, default=defaults.lam)
    parser.add_argument("--k", type=int, default=defaults.k)
    parser.add_argument("--pixel-k", type=int, default=defaults.pixel_k)
    parser.add_argument("--modes", nargs="+", default=["image", "pixel"])
    parser.add_argument("--out", type=Path, help="also write the figures as JSON here")
    args = parser.parse_args()

    train, test = synthetic.generate("shape", args.n_train, args.n_test, args.image_size, seed=0)
    report = {
        "command": " ".join(sys.argv),
        "machine": (
            f"{platform.processor() or platform.machine()}, "
            f"{jax.device_count()} {jax.default_backend()} device(s)"
        ),
        "jax": jax.__version__,
        "memory": {},
        "speed": {},
    }
    for name in args.backbones:
        backbone, weights = load_backbone(name)
        base = sj.Config(
            backbone=name, image_size=args.image_size, lam=args.lam, k=args.k, pixel_k=args.pixel_k
        )
        model = sj.fit(train.images, base, backbone, batch_size=args.batch_size, progress=False)
        features = {key: np.asarray(value) for key, value in model.banks.items()}
        features[level_key(base.sampling_level)] = np.asarray(model.sampling_bank)
        for dtype in ("float32", "bfloat16"):
            sized = sj.fit_features(features, dataclasses.replace(base, bank_dtype=dtype))
            report["memory"][f"{name}/{dtype}"] = bank_bytes_per_image(sized)
        report["memory"][f"{name}/gram_bytes"] = (
            f"4*N^2 per level ({len(base.levels) + 1} levels incl. sampling)"
        )
        for mode in args.modes:
            # Same banks, another scorer: only the static config changes.
            scored = dataclasses.replace(model, config=dataclasses.replace(base, reconstruction=mode))
            options = {"batch_size": args.batch_size, "backbone": backbone, "progress": False}
            scored.score(test.images, timings={}, **options)  # compile
            timings = {stage: 0.0 for stage in STAGES}
            start = time.perf_counter()
            for _ in range(args.repeats):
                scored.score(test.images, timings=timings, **options)
            wall = time.perf_counter() - start
            per_image = args.repeats * args.n_test
            row = {stage: timings[stage] / per_image for stage in STAGES}
            row["total"] = wall / per_image
            row["method_over_backbone"] = sum(row[s] for s in STAGES[1:]) / row["backbone"]
            report["speed"][f"{name}/{mode}"] = {"weights": weights, **row}
            print(
                f"{name:20s} {mode:5s} "
                + "  ".join(f"{s} {row[s] * 1e3:8.1f} ms" for s in (*STAGES, "total")),
                flush=True,
            )

    print()
    print(f"command: {report['command']}")
    print(f"machine: {report['machine']}, jax {report['jax']}")
    print(
        f"\nBank bytes per training image at {args.image_size} px "
        f"(levels {base.levels} + sampling level {base.sampling_level}):"
    )
    print(f"| backbone | dtype | {' | '.join(k for k in next(iter(report['memory'].values())))} |")
    for key, value in report["memory"].items():
        if isinstance(value, dict):
            backbone_name, dtype = key.split("/")
            print(
                f"| {backbone_name} | {dtype} | "
                + " | ".join(f"{v / 2**20:.3f} MiB" for v in value.values())
                + " |"
            )
    print(
        f"\nScoring time per image (N = {args.n_train}, lam = {args.lam}, k = {args.k}, "
        f"pixel_k = {args.pixel_k}, "
        f"batch {args.batch_size}, mean of {args.repeats} runs over {args.n_test} images):"
    )
    print(
        "| backbone | mode | weights | "
        + " | ".join(STAGES)
        + " | total | (sampling+reconstruction+maps) / backbone |"
    )
    for key, value in report["speed"].items():
        backbone_name, mode = key.split("/")
        cells = " | ".join(f"{value[s] * 1e3:.1f} ms" for s in (*STAGES, "total"))
        print(
            f"| {backbone_name} | {mode} | {value['weights']} | {cells} "
            f"| {value['method_over_backbone']:.2f} |"
        )
    if args.out:
        args.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
