"""How the scorer does on whatever device JAX finds: prints and writes ``device.json``.

    python benchmarks/device_check.py                     # full check, < 8 minutes on one GPU
    python benchmarks/device_check.py --tiny --out /tmp/d # seconds on a CPU (what the test runs)

Reports ``jax.devices()``; images/s end to end and per stage (backbone, sampling, reconstruction,
maps) for each backbone (efficientnet_lite0's shipped weights, random ones for the others: the
speed does not depend on them) at each batch size; image vs pixel mode; the gathered vs masked
reconstruction at several λ/N (the crossover ``subspace_jax.ops.execution`` chooses by); and the
largest bank (training images) whose scorer compiles and runs, on one device and with the bank
sharded over all devices.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

import subspace_jax as sj
from subspace_jax import backbones, sharding
from subspace_jax.ops import execution


def _best(fn, *args, repeats: int) -> float:
    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - start)
    return min(times)


def _synthetic(shapes: dict, n: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {k: np.abs(rng.standard_normal((n,) + s)).astype(np.float32) for k, s in shapes.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backbones", nargs="+", default=["efficientnet_lite0", "wide_resnet50_2"])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[8, 32, 128])
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--n-train", type=int, default=200, help="bank size of the throughput runs")
    parser.add_argument("--lams", type=int, nargs="+", default=[10, 50, 100, 150], help="λ of the crossover")
    parser.add_argument("--bank-limit", type=int, default=1 << 16, help="largest N tried for 'fits'")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--tiny", action="store_true", help="shrink everything (CPU smoke run)")
    parser.add_argument("--out", type=Path, default=Path("."))
    args = parser.parse_args()
    if args.tiny:
        args.backbones, args.batch_sizes, args.image_size = ["efficientnet_lite0"], [2], 64
        args.n_train, args.lams, args.bank_limit, args.repeats = 8, [2, 6], 32, 1
    report: dict = {"devices": [str(d) for d in jax.devices()], "backend": jax.default_backend()}
    report["default_execution"] = dataclasses.asdict(execution.default_execution())
    print(json.dumps(report, indent=1))
    rng = np.random.default_rng(0)
    size = args.image_size
    report["throughput"], report["crossover"], report["largest_bank"] = [], [], {}
    for name in args.backbones:
        backbone = backbones.load(name, None if name == "efficientnet_lite0" else "random")
        apply_fn, params = backbone.pure()
        probe = jax.eval_shape(apply_fn, params, jnp.zeros((1, size, size, 3), jnp.uint8))
        for mode in ("image", "pixel"):
            config = sj.Config(
                backbone=name,
                image_size=size,
                reconstruction=mode,
                lam=min(50, args.n_train // 2),
                k=min(5, args.n_train // 2),
            )
            shapes = {k: probe[k].shape[1:] for k in config.feature_keys}
            model = sj.fit_features(
                _synthetic(shapes, args.n_train, 1),
                config,
                backbone_name=backbone.name,
                weights_sha256=backbone.weights_sha256,
            )
            staged = {"backbone": backbone, "progress": False}
            for batch in args.batch_sizes:
                images = rng.integers(0, 256, (batch, size, size, 3), dtype=np.uint8)
                fused = jax.jit(sj.score_images, static_argnums=(1,))
                total = _best(fused, model, apply_fn, params, images, repeats=args.repeats)
                timings: dict[str, float] = {}
                model.score(images, batch, timings=timings, **staged)  # compile the stages
                timings.clear()
                for _ in range(args.repeats):
                    model.score(images, batch, timings=timings, **staged)
                row = {"backbone": name, "mode": mode, "batch": batch, "images_per_s": batch / total}
                row |= {f"{k}_ms_per_image": 1e3 * v / (args.repeats * batch) for k, v in timings.items()}
                report["throughput"].append(row)
                print(json.dumps(row))
        # Gathered vs masked image-mode reconstruction at several λ (the whole-bank product is forced
        # with gather_below=0, the gathered rows with gather_below=1).
        shapes = {k: probe[k].shape[1:] for k in ("level2", "level3", "pooled")}
        batch = max(args.batch_sizes)
        test = {k: jnp.asarray(v) for k, v in _synthetic(shapes, batch, 2).items()}
        for lam in args.lams:
            config = sj.Config(
                backbone=name,
                image_size=size,
                sampling_level="pooled",
                sampling="random",
                lam=lam,
                k=min(5, lam),
            )
            model = sj.fit_features(_synthetic(shapes, args.n_train, 1), config)
            row = {"backbone": name, "n_train": args.n_train, "lam": lam, "batch": batch}
            for label, below in (("gathered", 1.0), ("masked", 0.0)):
                ex = dataclasses.replace(execution.default_execution(), gather_below=below)
                fn = jax.jit(lambda m, f, ex=ex: sj.score_features(m, f, execution=ex))
                row[f"{label}_ms_per_image"] = 1e3 * _best(fn, model, test, repeats=args.repeats) / batch
            report["crossover"].append(row)
            print(json.dumps(row))
        # Largest bank that fits: double N until compiling or running fails (or --bank-limit).
        config = sj.Config(backbone=name, image_size=size, sampling_level="pooled", lam=2, k=2)
        fits = {}
        for label, bank in (("one_device", 1), ("sharded", len(jax.devices()))):
            mesh = sharding.make_mesh(1, bank)
            n, largest = 4, None
            while n <= args.bank_limit:
                try:
                    feats = {k: jnp.zeros((n,) + s, jnp.float32) + 1.0 for k, s in shapes.items()}
                    model = sj.fit_features(feats, config)
                    if bank > 1:
                        model = sharding.shard_model(model, mesh)
                    fn = jax.jit(lambda m, f, mesh=mesh: sharding.score_features(m, f, mesh))
                    jax.block_until_ready(fn(model, {k: v[:1] for k, v in feats.items()}))
                    largest = n
                    del model, feats
                except Exception as error:  # noqa: BLE001 - out of memory has backend-specific types
                    fits[f"{label}_error"] = f"{type(error).__name__} at N={n}"
                    break
                n *= 2
            fits[label] = largest
        report["largest_bank"][name] = fits
        print(json.dumps({name: fits}))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "device.json").write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote {args.out / 'device.json'}")


if __name__ == "__main__":
    main()
