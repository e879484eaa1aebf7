"""CPU end-to-end throughput of two checkouts of subspace-jax, side by side in one run.

Each checkout runs in its own worker process that imports that checkout's ``subspace_jax``
(``PYTHONPATH``), so any two versions compare, however their insides are laid out: the workers only
use what every version has had, ``sj.fit(images, config)`` and ``model.score(images, batch_size,
timings=...)``. Both fit the named config (default ``mtd_default``, efficientnet_lite0's real weights)
on the same training images, then the parent alternates between them: every round, each worker scores
the same test images once per batch size

- fused (what a user's ``model.score`` runs: one jitted function per batch, backbone included):
  images/s from wall-clock time and CPU ms/image from the worker's CPU time (all its threads), which a
  shared machine's load disturbs far less (the median over rounds, and the best round: load only adds);
- staged (``timings=``: the stages as separately jitted calls): backbone and scorer (sampling +
  reconstruction + maps) ms/image and their ratio, the measure of issue 21.

The idle worker waits on its pipe, so the two never run at once and load hits both alike. Figures are
medians over rounds, each round after a warm-up call per batch size (compilation excluded). The first
fused call's maps of both checkouts are compared and the largest difference reported.

    git worktree add --detach ../before e97876f
    python benchmarks/cpu_throughput.py --before ../before --data-root ../shared/data/mtd \\
        --batch-sizes 8 32 --rounds 5 --out benchmarks/cpu_throughput.json

Without ``--data-root`` the images are random (N = 761 training images, MTD's count): the scorer's
cost depends on the shapes, not on the pixels.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

import subspace_jax as sj
from subspace_jax.data import MTD, load_samples

HERE = Path(__file__).resolve()
SCORER_STAGES = ("sampling", "reconstruction", "maps")
# Since 5b5b83b the input transfer is timed as its own stage; before, it was inside "backbone".
BACKBONE_STAGES = ("backbone", "input")
RESULT = "RESULT "


# ---------------------------------------------------------------------------------------------
# Worker: runs inside the checkout under test


def load_config(root: Path, name: str, backbone: str):
    """``name`` as this checkout defines it: the packaged configs, or (before they moved into the
    package, 18) ``experiments/configs/<name>.py``'s ``get_config()``."""
    if hasattr(sj, "configs"):
        config = sj.configs.load(name)
    else:
        spec = importlib.util.spec_from_file_location(name, root / "experiments" / "configs" / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        config = module.get_config()
    return dataclasses.replace(config, backbone=backbone)


def worker(root: Path, data: Path, config_name: str, backbone: str, batch_sizes: list[int]) -> None:
    """Fit, warm up, then answer one JSON request per line of stdin ({"batch", "staged", "save"})."""
    train, test = np.load(data / "train.npy"), np.load(data / "test.npy")
    config = load_config(root, config_name, backbone)
    model = sj.fit(train, config, batch_size=16, progress=False)
    for batch in batch_sizes:  # compile both paths at every batch size
        model.score(test[:batch], batch, progress=False)
        model.score(test[:batch], batch, progress=False, timings={})
    print(RESULT + json.dumps({"ready": True, "package": sj.__file__}), flush=True)
    for line in sys.stdin:
        request = json.loads(line)
        timings = {} if request["staged"] else None
        start, cpu = time.perf_counter(), time.process_time()
        maps, _ = model.score(test, request["batch"], progress=False, timings=timings)
        reply = {"wall": time.perf_counter() - start, "cpu": time.process_time() - cpu, "timings": timings}
        if request.get("save"):
            np.save(request["save"], maps)
        print(RESULT + json.dumps(reply), flush=True)


# ---------------------------------------------------------------------------------------------
# Parent


class Worker:
    """One checkout's worker process and its request/reply pipe."""

    def __init__(self, name: str, root: Path, data: Path, args: argparse.Namespace) -> None:
        self.name = name
        env = dict(os.environ, PYTHONPATH=str(root))
        command = [sys.executable, str(HERE), "--worker", str(root), "--data", str(data)]
        command += ["--config", args.config, "--backbone", args.backbone, "--batch-sizes"]
        command += [str(b) for b in args.batch_sizes]
        self.process = subprocess.Popen(
            command, cwd=root, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )

    def reply(self) -> dict:
        for line in self.process.stdout:
            if line.startswith(RESULT):
                return json.loads(line[len(RESULT) :])
        raise RuntimeError(f"{self.name}: the worker exited ({self.process.wait()}) before replying")

    def ask(self, **request) -> dict:
        self.process.stdin.write(json.dumps(request) + "\n")
        self.process.stdin.flush()
        return self.reply()

    def close(self) -> None:
        self.process.stdin.close()
        self.process.wait()


def prepare_images(args: argparse.Namespace, folder: Path) -> tuple[int, str]:
    """train.npy and test.npy (uint8 (N, 256, 256, 3)) in ``folder``; returns (test count, source)."""
    if args.data_root is not None:
        dataset = MTD(args.data_root)
        train = load_samples(dataset.samples("train"), 256, None, False).images
        test = load_samples(dataset.samples("test")[: args.n_test], 256, None, False).images
        source = f"MTD ({args.data_root}): {len(train)} training images, the first {len(test)} test images"
    else:
        rng = np.random.default_rng(0)
        train = rng.integers(0, 256, (args.n_train, 256, 256, 3), dtype=np.uint8)
        test = rng.integers(0, 256, (args.n_test, 256, 256, 3), dtype=np.uint8)
        source = f"random uint8 images: {len(train)} training, {len(test)} test"
    np.save(folder / "train.npy", train)
    np.save(folder / "test.npy", test)
    return len(test), source


def summarise(name: str, batch: int, n_test: int, fused: list[dict], staged: list[dict]) -> dict:
    def per_image(seconds: list[float]) -> float:
        return 1e3 * statistics.median(seconds) / n_test

    backbone = [sum(r["timings"].get(s, 0.0) for s in BACKBONE_STAGES) for r in staged]
    scorer = [sum(r["timings"].get(s, 0.0) for s in SCORER_STAGES) for r in staged]
    return {
        "batch": batch,
        "code": name,
        "images_per_s": n_test / statistics.median([r["wall"] for r in fused]),
        "cpu_ms_per_image": per_image([r["cpu"] for r in fused]),
        "best_cpu_ms_per_image": 1e3 * min(r["cpu"] for r in fused) / n_test,
        "backbone_ms_per_image": per_image(backbone),
        "scorer_ms_per_image": per_image(scorer),
        "scorer_over_backbone": statistics.median(s / b for s, b in zip(scorer, backbone)),
        "fused_wall_seconds": [r["wall"] for r in fused],
        "fused_cpu_seconds": [r["cpu"] for r in fused],
        "stage_seconds": [r["timings"] for r in staged],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", type=Path, help="checkout of the code before the change")
    parser.add_argument("--after", type=Path, default=HERE.parents[1], help="default: this checkout")
    parser.add_argument("--config", default="mtd_default", help="a config name both checkouts define")
    parser.add_argument("--backbone", default="efficientnet_lite0")
    parser.add_argument("--data-root", type=Path, help="MTD's folder; random images without it")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[8, 32])
    parser.add_argument("--n-train", type=int, default=761, help="random training images (MTD: 761)")
    parser.add_argument("--n-test", type=int, default=128, help="test images scored per call")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", type=Path, help="also write the table as JSON")
    parser.add_argument("--worker", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker is not None:
        worker(args.worker, args.data, args.config, args.backbone, args.batch_sizes)
        return
    if args.before is None:
        parser.error("--before: give the checkout to compare with (e.g. a git worktree)")
    for flag, root in (("--before", args.before), ("--after", args.after)):
        if not (root / "subspace_jax" / "__init__.py").is_file():
            parser.error(f"{flag} {root}: expected a checkout of subspace-jax (no subspace_jax/__init__.py)")

    with tempfile.TemporaryDirectory(prefix="cpu_throughput_") as tmp:
        folder = Path(tmp)
        n_test, source = prepare_images(args, folder)
        print(f"images: {source}", file=sys.stderr, flush=True)
        roots = (("before", args.before), ("after", args.after))
        workers = [Worker(name, root.resolve(), folder, args) for name, root in roots]
        for w in workers:  # both fit at once: only the rounds below are timed
            print(f"{w.name}: {w.reply()['package']} fitted and compiled", file=sys.stderr, flush=True)
        results: dict[tuple[str, int, bool], list[dict]] = {}
        for round_index in range(args.rounds):
            for batch in args.batch_sizes:
                for w in workers:
                    for staged in (False, True):
                        save = str(folder / f"{w.name}_maps.npy") if round_index == 0 and not staged else None
                        results.setdefault((w.name, batch, staged), []).append(
                            w.ask(batch=batch, staged=staged, save=save)
                        )
            print(f"round {round_index + 1} of {args.rounds} done", file=sys.stderr, flush=True)
        for w in workers:
            w.close()
        before_maps, after_maps = (np.load(folder / f"{n}_maps.npy") for n in ("before", "after"))

    difference = np.abs(before_maps - after_maps) / np.abs(after_maps).max()
    rows = []
    print(
        "| batch | code | end to end images/s | end to end CPU ms/image | best of rounds "
        "| backbone ms/image | scorer ms/image | scorer / backbone |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for batch in args.batch_sizes:
        for w in workers:
            fused, staged = results[(w.name, batch, False)], results[(w.name, batch, True)]
            row = summarise(w.name, batch, n_test, fused, staged)
            rows.append(row)
            print(
                f"| {batch} | {w.name} | {row['images_per_s']:.1f} | {row['cpu_ms_per_image']:.2f} | "
                f"{row['best_cpu_ms_per_image']:.2f} | "
                f"{row['backbone_ms_per_image']:.2f} | {row['scorer_ms_per_image']:.2f} | "
                f"{row['scorer_over_backbone']:.2f} |"
            )
        b, a = rows[-2], rows[-1]
        print(
            f"| {batch} | after / before (speed) | {a['images_per_s'] / b['images_per_s']:.2f} | "
            f"{b['cpu_ms_per_image'] / a['cpu_ms_per_image']:.2f} | "
            f"{b['best_cpu_ms_per_image'] / a['best_cpu_ms_per_image']:.2f} | "
            f"{b['backbone_ms_per_image'] / a['backbone_ms_per_image']:.2f} | "
            f"{b['scorer_ms_per_image'] / a['scorer_ms_per_image']:.2f} | |"
        )
    print(
        f"\nmaps, before against after: max |difference| / max |map| = {difference.max():.2e}, "
        f"99.9th percentile {np.quantile(difference, 0.999):.2e}"
    )
    if args.out:
        summary = {"source": source, "config": args.config, "rows": rows}
        summary["maps_max_relative_difference"] = float(difference.max())
        tmp_out = args.out.with_name(args.out.name + ".tmp")
        tmp_out.write_text(json.dumps(summary, indent=1) + "\n")
        tmp_out.replace(args.out)


if __name__ == "__main__":
    main()
