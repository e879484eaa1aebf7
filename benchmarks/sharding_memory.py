"""Per-device memory of the compiled scorer with the bank sharded over 4 (fake CPU) devices.

    python benchmarks/sharding_memory.py

Compiles ``subspace_jax.sharding.score_features`` on a (data=1, bank=4) mesh and the one-device
``subspace_jax.score_features`` for banks of N = 16 and 64 images (levels 2 and 3 of 8·8·16 and 4·4·32
floats, pooled sampling on 64 floats, λ = 3, k = 2, 4 test images) and prints
``compiled.memory_analysis()`` per device next to the bank's size, plus the all-gathers of the HLO.
"""

from __future__ import annotations

import re

import jax

jax.config.update("jax_num_cpu_devices", 4)

import numpy as np  # noqa: E402

import subspace_jax as sj  # noqa: E402
from subspace_jax import sharding  # noqa: E402
from subspace_jax.ops.execution import Execution  # noqa: E402


def main() -> None:
    rng = np.random.default_rng(0)
    shapes = {"level2": (8, 8, 16), "level3": (4, 4, 32), "pooled": (64,)}

    def feats(n):
        return {k: np.abs(rng.standard_normal((n,) + s)).astype(np.float32) for k, s in shapes.items()}

    mesh = sharding.make_mesh(1, 4)
    print(
        "| sampling | N | bank bytes | Gram bytes | test feature bytes | one device: arguments | "
        "4-way bank: arguments per device | (arguments − Grams − features) / bank | temp per device | "
        "largest all-gather |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for sampling in ("subspace", "none"):
        for n in (16, 64):
            config = sj.Config(
                backbone="efficientnet_lite0",
                image_size=32,
                levels=(2, 3),
                sampling_level="pooled",
                sampling=sampling,
                lam=3,
                k=2,
                sigma=1.0,
            )
            model, test = sj.fit_features(feats(n), config), feats(4)
            one = jax.jit(sj.score_features).lower(model, test).compile().memory_analysis()
            fn = jax.jit(lambda m, f: sharding.score_features(m, f, mesh, execution=Execution(1)))
            compiled = fn.lower(sharding.shard_model(model, mesh), test).compile()
            mem = compiled.memory_analysis()
            banks = [*model.banks.values(), *[b for b in [model.sampling_bank] if b is not None]]
            grams = [*model.grams.values(), *[g for g in [model.sampling_gram] if g is not None]]
            bank = sum(b.nbytes for b in banks)
            gram = sum(g.nbytes for g in grams)
            feat = sum(v.nbytes for v in test.values())
            gathers = [
                4 * int(np.prod([int(v) for v in m.group(1).split(",") if v]))
                for m in re.finditer(r"= f32\[([0-9,]*)\][^\n]*all-gather\(", compiled.as_text())
            ]
            share = (mem.argument_size_in_bytes - gram - feat) / bank
            print(
                f"| {sampling} | {n} | {bank} | {gram} | {feat} | {one.argument_size_in_bytes} | "
                f"{mem.argument_size_in_bytes} | {share:.3f} | {mem.temp_size_in_bytes} | "
                f"{max(gathers, default=0)} B |"
            )


if __name__ == "__main__":
    main()
