"""Throughput of ``subspace-jax predict`` against ``Model.score`` on arrays, and the exported artifact
against the live model, in one process on the same images.

    python benchmarks/bench_cli.py MODEL_DIR IMAGES... [--n 200] [--batch-size 8] [--out DIR]

- predict: ``subspace_jax.serving.predict.predict_files`` (what ``subspace-jax predict`` runs) on N image
  files (decoding, scoring, resizing maps to each image's size, writing masks, overlays and the CSV,
  thumbnails, the report), after one warm-up batch;
- score: ``model.score`` on the same N images already decoded and resized in memory (uint8 array);
- export: the artifact of ``subspace_jax.serving.export`` (symbolic batch), its size, and ``exported.call`` on
  the same array in batches of ``--batch-size`` (after a warm-up call, which compiles it), beside the
  live model's time and the largest map difference.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import jax
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import subspace_jax as sj  # noqa: E402
from subspace_jax.data import load_images  # noqa: E402
from subspace_jax.data.files import collect_images  # noqa: E402
from subspace_jax.engine.batches import pad_batch  # noqa: E402
from subspace_jax.serving import export, predict  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("model_dir")
    parser.add_argument("images", nargs="+", help="folders, globs or files (the first --n are used)")
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--out", type=Path, default=None, help="predict output folder (default: a temp dir)")
    args = parser.parse_args(argv)

    model = sj.load(args.model_dir)
    paths = collect_images(args.images, "IMAGES")[: args.n]
    bs = args.batch_size
    out = Path(args.out or tempfile.mkdtemp(prefix="bench_cli_"))
    result: dict = {"n_images": len(paths), "batch_size": bs, "image_size": model.config.output_size}

    n = len(paths)

    def timed(name: str, fn):
        # Wall-clock and process CPU time (all threads): on a shared machine the CPU seconds per image
        # are the steadier comparison.
        start, cpu = time.perf_counter(), time.process_time()
        value = fn()
        result[f"{name}_images_per_s"] = n / (time.perf_counter() - start)
        result[f"{name}_cpu_ms_per_image"] = 1000 * (time.process_time() - cpu) / n
        return value

    predict.predict_files(model, paths[:bs], out / "warmup", batch_size=bs, progress=False)
    timed(
        "predict", lambda: predict.predict_files(model, paths, out / "predict", batch_size=bs, progress=False)
    )

    images = load_images(paths, model.config.image_size, model.config.crop, progress=False)
    model.score(images[:bs], batch_size=bs, progress=False)
    live_maps, _ = timed("score", lambda: model.score(images, batch_size=bs, progress=False))

    start = time.perf_counter()
    exported = export.export_model(model)
    blob = bytes(exported.serialize())
    result["export_seconds"] = time.perf_counter() - start
    result["artifact_mib"] = len(blob) / 2**20
    scorer = jax.export.deserialize(blob)
    jax.block_until_ready(scorer.call(images[:bs]))  # compiles for this batch shape

    def run_artifact():
        maps = []
        for lo in range(0, len(images), bs):
            batch = images[lo : lo + bs]
            maps.append(np.asarray(scorer.call(pad_batch(batch, bs))[0])[: len(batch)])
        return np.concatenate(maps)

    maps = timed("artifact", run_artifact)
    # The live model again after the artifact, so that neither gains from running second.
    timed("score_again", lambda: model.score(images, batch_size=bs, progress=False))
    result["artifact_max_abs_diff"] = float(np.abs(maps - live_maps).max())
    result["map_max"] = float(np.abs(live_maps).max())
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
