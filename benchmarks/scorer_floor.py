"""The scorer against its floor: bytes moved and FLOPs done per image by each stage, from the shapes.

For a subspace config fitted on MTD's cached Lite0 features, per stage and image:

- sampling: read the batch's share of the sampling bank (N d_s, once per batch) and λ Gram columns
  (N each); correlate (2 N d_s) and run λ Batch-OMP steps (about 2 N λ each).
- reconstruction, per level l (gathered path): read the m = λ candidate rows (m d_l), their Gram
  submatrix (m²), the target (d_l) and the k chosen rows again (k d_l); correlate (2 m d_l), k Cholesky
  steps (about 2 k m + k³) and rebuild (2 k d_l).
- maps: per level, write the upsampled S x S map and read it back for the sum; blur (two passes of 8σ+1
  taps over S²).

The floor of a stage is max(bytes / bandwidth, FLOPs / FLOP rate), with this machine's bandwidth and FLOP
rate measured in the same run (a plain copy of a 256 MB float32 array and a 2048 x 2048 float32 matmul,
both through XLA). Beside it, the stage's measured time per image (the staged scorer on device arrays,
after a compiling batch) and the ratio.

    python benchmarks/scorer_floor.py --data-root ../shared/data/mtd --configs mtd_paper mtd_default \\
        --batch-sizes 8 32 --out benchmarks/scorer_floor.json
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

import subspace_jax as sj
from subspace_jax import backbones
from subspace_jax.data import MTD, load_samples
from subspace_jax.runner.feature_cache import features_of_images


def _best(fn, *args, repeats: int = 5) -> float:
    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - start)
    return min(times)


def machine() -> dict[str, float]:
    """Copy bandwidth (bytes/s: read + write) and matmul rate (FLOP/s), both through XLA on this device."""
    x = jnp.ones((64 << 20,), jnp.float32)  # 256 MB
    copy = jax.jit(lambda a: a * 1.0000001)
    bandwidth = 2 * x.nbytes / _best(copy, x)
    a = jnp.ones((2048, 2048), jnp.float32)
    matmul = jax.jit(lambda p: jnp.matmul(p, p, precision=jax.lax.Precision.HIGHEST))
    flops = 2 * 2048**3 / _best(matmul, a)
    return {"bandwidth_bytes_per_s": bandwidth, "flops_per_s": flops}


def floor_model(model, batch: int) -> dict[str, dict[str, float]]:
    """Bytes and FLOPs per image of each stage (module docstring)."""
    cfg = model.config
    n = model.n_train
    m = min(cfg.lam, n)
    k = min(cfg.k, m)
    size = cfg.output_size
    stages: dict[str, dict[str, float]] = {}
    if model.sampling_bank is not None:
        d_s = model.sampling_bank.shape[1]
        isz = model.sampling_bank.dtype.itemsize
        stages["sampling"] = {
            "bytes": n * d_s * isz / batch + d_s * 4 + m * n * 4,
            "flops": 2 * n * d_s + 2 * n * m * m / 2,
        }
    recon_bytes = recon_flops = 0.0
    for key, bank in model.banks.items():
        d = int(np.prod(bank.shape[1:]))
        isz = bank.dtype.itemsize
        recon_bytes += m * d * isz + m * m * 4 + d * 4 + k * d * isz
        recon_flops += 2 * m * d + 2 * k * m + k**3 + 2 * k * d + d
    stages["reconstruction"] = {"bytes": recon_bytes, "flops": recon_flops}
    levels = len(model.banks)
    taps = 2 * int(4 * cfg.sigma + 0.5) + 1 if cfg.sigma else 0
    stages["maps"] = {
        "bytes": size * size * 4 * (2 * levels + 4),
        "flops": size * size * (8 * levels + 4 * taps),
    }
    return stages


def measure(model, features: dict, batch: int) -> dict[str, float]:
    """Seconds per image of each stage on device arrays, after a compiling batch (best of 5 batches)."""
    scorer = model.scorer
    block = jax.device_put({key: value[:batch] for key, value in features.items()})
    out: dict[str, float] = {}
    carry = block
    for name, fn in scorer.stages:
        fn_now = fn
        args = (model, carry)
        out[name] = _best(lambda mdl, c, f=fn_now: f(mdl, c), *args) / batch
        carry = jax.block_until_ready(fn(model, carry))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data-root", type=Path, required=True)
    parser.add_argument("--configs", nargs="+", default=["mtd_paper", "mtd_default"])
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=[8, 32])
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    rates = machine()
    net = backbones.load_cached("efficientnet_lite0")
    dataset = MTD(args.data_root)
    train, _ = features_of_images(
        net, load_samples(dataset.samples("train"), 256, None, False).images, 16, False
    )
    test_images = load_samples(dataset.samples("test")[:64], 256, None, False).images
    test, _ = features_of_images(net, test_images, 16, False)
    backbone = jax.jit(net.pure()[0])
    params = net.pure()[1]
    rows = []
    for name in args.configs:
        model = sj.fit_features(train, sj.load_config(name, backbone="efficientnet_lite0"))
        for batch in args.batch_sizes:
            backbone_s = _best(backbone, params, jnp.asarray(test_images[:batch])) / batch
            measured = measure(model, test, batch)
            for stage, need in floor_model(model, batch).items():
                floor = max(
                    need["bytes"] / rates["bandwidth_bytes_per_s"], need["flops"] / rates["flops_per_s"]
                )
                rows.append(
                    {
                        "config": name,
                        "batch": batch,
                        "stage": stage,
                        "mbytes": need["bytes"] / 1e6,
                        "mflop": need["flops"] / 1e6,
                        "floor_ms": 1e3 * floor,
                        "measured_ms": 1e3 * measured[stage],
                        "ratio": measured[stage] / floor,
                        "backbone_ms": 1e3 * backbone_s,
                    }
                )
                print(json.dumps(rows[-1]), flush=True)
    result = {"machine": {**rates, "host": platform.machine(), "jax": jax.__version__}, "rows": rows}
    bandwidth, flops = rates["bandwidth_bytes_per_s"] / 1e9, rates["flops_per_s"] / 1e9
    print(f"bandwidth {bandwidth:.1f} GB/s, matmul {flops:.1f} GFLOP/s")
    print("| config | batch | stage | MB | MFLOP | floor ms | measured ms | ratio |")
    print("|---|---:|---|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['config']} | {r['batch']} | {r['stage']} | {r['mbytes']:.2f} | {r['mflop']:.1f} | "
            f"{r['floor_ms']:.3f} | {r['measured_ms']:.3f} | {r['ratio']:.1f} |"
        )
    if args.out:
        args.out.write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
