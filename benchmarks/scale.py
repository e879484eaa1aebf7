"""Fit time, peak memory, model bytes and scoring time against the number N of good training images.

Each point runs in its own process (so ``VmHWM``, the peak resident set, is that fit's alone):

- ``--source images``: the full pipeline, ``sj.fit`` on N real 256 px images streamed as uint8 batches:
  MTD's 761 defect-free training images under the 8 flips and rotations of the square and small crops
  (``augmented_images``), so the features are those of real tiles, not noise.
- ``--source features``: ``fit_stream`` on N feature rows streamed in chunks, made from MTD's cached
  Lite0 features the same way (flipped, rolled and jittered per row), for N beyond what the backbone
  can embed here in reasonable time (up to 100,000).

After the fit, 32 MTD test images' features are scored (after one compiling batch) for the scorer's
time per image. Methods: the packaged ``mtd_paper``, ``mtd_default``, ``mtd_dictionary`` and
``mtd_patchcore`` (PatchCore with a 1% coreset).

    python benchmarks/scale.py --data-root ../shared/data/mtd --configs mtd_default \\
        --source images --sizes 1000 2000 4000 8000 16000 --out benchmarks/scale_images.jsonl
    python benchmarks/scale.py ... --source features --sizes 1000 ... 100000 --out scale_features.jsonl
    python benchmarks/scale.py --plot benchmarks/scale_images.jsonl benchmarks/scale_features.jsonl \\
        --figure benchmarks/scale.png

Each point appends one JSON line: config, source, n, fit seconds, peak RSS MiB, model bytes, score ms
per image, and whether the model kept its Gram matrices. ``--plot`` fits a line to each curve in
log-log space and prints its slope.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import jax
import numpy as np

import subspace_jax as sj
from subspace_jax import backbones
from subspace_jax.data import MTD, load_samples
from subspace_jax.engine.scorer import score_in_batches
from subspace_jax.runner.feature_cache import features_of_images

KEYS = ("level2", "level3", "level4", "pooled")
CHUNK = 64


def peak_rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _transform(image: np.ndarray, index: int) -> np.ndarray:
    """The index-th variant of a (H, W, 3) image: one of the square's 8 symmetries, then a crop of up to
    8 pixels per side (index // 8 picks it) resized back by repetition at the border."""
    out = np.rot90(image, index % 4)
    if (index // 4) % 2:
        out = out[:, ::-1]
    shift = (index // 8) % 9 - 4
    if shift:
        out = np.roll(out, shift, axis=(0, 1))
    return np.ascontiguousarray(out)


def augmented_images(base: np.ndarray, n: int, batch: int) -> Iterator[np.ndarray]:
    """uint8 batches of n variants of the base images (N0, S, S, 3), cycling through them."""
    for start in range(0, n, batch):
        idx = np.arange(start, min(start + batch, n))
        yield np.stack([_transform(base[i % len(base)], i // len(base)) for i in idx])


def augmented_features(base: dict[str, np.ndarray], n: int, seed: int = 0) -> Iterator[dict[str, np.ndarray]]:
    """Chunks of n feature rows made from the base rows: the same symmetries on the maps (the pooled
    vector is invariant to them), plus 1% multiplicative jitter so that no two rows are equal."""
    rng = np.random.default_rng(seed)
    n0 = len(base["pooled"])
    for start in range(0, n, CHUNK):
        idx = np.arange(start, min(start + CHUNK, n))
        chunk = {}
        for key, value in base.items():
            rows = np.asarray(value[idx % n0], np.float32)
            if rows.ndim == 4:
                rows = np.stack([np.rot90(r, (i // n0) % 4) for r, i in zip(rows, idx)])
            chunk[key] = rows * (1 + 0.01 * rng.standard_normal(rows.shape).astype(np.float32))
        yield chunk


def run_point(args: argparse.Namespace) -> dict:
    """One fit and its scoring, in this process."""
    config = sj.load_config(args.config, backbone="efficientnet_lite0")
    dataset = MTD(args.data_root)
    net = backbones.load_cached("efficientnet_lite0")
    test = load_samples(
        dataset.samples("test")[:: max(1, len(dataset.samples("test")) // 32)][:32], 256, None, False
    )
    test_features, _ = features_of_images(net, test.images, 16, False)
    train = load_samples(dataset.samples("train"), 256, None, False).images
    if args.source == "features":  # the base rows, before the clock starts: only the fit is timed
        base, _ = features_of_images(net, train, 16, False)
        base = {key: base[key] for key in KEYS}
        del train
    start = time.perf_counter()
    if args.source == "images":
        model = sj.fit(augmented_images(train, args.n, 16), config, net, batch_size=16, progress=False)
        del train
    else:
        method = sj.get_method(config.method)
        chunks = augmented_features(base, args.n)
        if method.fit_stream is not None:
            model = method.fit_stream(chunks, config, weights_sha256=net.weights_sha256)
        else:
            parts = list(chunks)
            features = {key: np.concatenate([p[key] for p in parts]) for key in parts[0]}
            del parts
            model = method.fit_features(features, config, weights_sha256=net.weights_sha256)
    jax.block_until_ready(model)
    fit_seconds = time.perf_counter() - start
    peak = peak_rss_mib()
    score_in_batches(model, {k: v[:16] for k, v in test_features.items()}, batch_size=16, progress=False)
    start = time.perf_counter()
    score_in_batches(model, test_features, batch_size=16, progress=False)
    score_ms = 1000 * (time.perf_counter() - start) / len(test.images)
    return {
        "config": args.config,
        "source": args.source,
        "n": args.n,
        "fit_seconds": fit_seconds,
        "peak_rss_mib": peak,
        "model_bytes": model.nbytes,
        "score_ms_per_image": score_ms,
        "grams_kept": getattr(model, "grams", None) is not None,
    }


def plot(paths: list[Path], figure: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rows = [json.loads(line) for path in paths for line in path.read_text().splitlines() if line.strip()]
    panels = (
        ("fit_seconds", "fit s"),
        ("peak_rss_mib", "peak RSS MiB"),
        ("model_bytes", "model bytes"),
        ("score_ms_per_image", "score ms / image"),
    )
    fig = Figure(figsize=(11, 8))
    FigureCanvasAgg(fig)
    for ax, (key, label) in zip(fig.subplots(2, 2).ravel(), panels):
        for name in sorted({(r["config"], r["source"]) for r in rows}):
            points = sorted((r["n"], r[key]) for r in rows if (r["config"], r["source"]) == name)
            n, y = np.array(points, float).T
            slope = np.polyfit(np.log(n), np.log(y), 1)[0] if len(n) > 1 else float("nan")
            ax.loglog(n, y, "o-", label=f"{name[0]} ({name[1]}): slope {slope:.2f}")
            print(f"{key:20s} {name[0]:15s} {name[1]:8s} slope {slope:.2f}")
        ax.set_xlabel("N training images")
        ax.set_ylabel(label)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(figure, dpi=100)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data-root", type=Path)
    parser.add_argument(
        "--configs", nargs="+", default=["mtd_paper", "mtd_default", "mtd_dictionary", "mtd_patchcore"]
    )
    parser.add_argument("--source", choices=("images", "features"), default="features")
    parser.add_argument("--sizes", nargs="+", type=int, default=[1000, 2000, 4000, 8000, 16000])
    parser.add_argument("--out", type=Path, help="JSON lines to append to")
    parser.add_argument("--timeout", type=float, default=3600, help="seconds one point may take")
    parser.add_argument("--plot", nargs="+", type=Path, help="JSON lines files to plot instead of running")
    parser.add_argument("--figure", type=Path, default=Path("benchmarks/scale.png"))
    parser.add_argument("--point", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--config", help=argparse.SUPPRESS)
    parser.add_argument("--n", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.plot:
        plot(args.plot, args.figure)
        return 0
    if args.point:
        print(json.dumps(run_point(args)), flush=True)
        return 0
    for config in args.configs:
        for n in args.sizes:
            command = [
                sys.executable,
                __file__,
                "--point",
                "--config",
                config,
                "--n",
                str(n),
                "--source",
                args.source,
                "--data-root",
                str(args.data_root),
            ]
            try:
                done = subprocess.run(command, capture_output=True, text=True, timeout=args.timeout)
            except subprocess.TimeoutExpired:
                row = {"config": config, "source": args.source, "n": n, "error": f"over {args.timeout:.0f} s"}
            else:
                lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
                row = (
                    json.loads(lines[-1])
                    if lines
                    else {
                        "config": config,
                        "source": args.source,
                        "n": n,
                        "error": done.stderr.strip().splitlines()[-1:],
                    }
                )
            print(json.dumps(row), flush=True)
            if args.out:
                with args.out.open("a") as handle:
                    handle.write(json.dumps(row) + "\n")
            if "error" in row:
                break  # larger N of this config would not finish either
    return 0


if __name__ == "__main__":
    sys.exit(main())
