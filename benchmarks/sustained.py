"""Sustained use: memory over many batches, and a multi-category run killed and resumed.

1. **Memory over 20,000 images.** One fitted model (efficientnet_lite0, 64 px, 16 training images)
   scores ``--images`` synthetic images in one process, in chunks of ``--chunk`` images fed as an
   iterator of ``--batch-size`` batches: first through ``Model.score``, then through the runner's
   scorer (``subspace_jax.engine.scorer.score_in_batches`` with stage timings, as
   ``subspace_jax.runner.evaluation.fit_and_score`` calls it). Only the scores are kept. The resident
   set size (VmRSS) and its peak (VmHWM) are read from ``/proc/self/status`` after the first chunk
   (compilation done) and after the last: they must not grow with the number of batches
   (``--max-growth-mib``). ``--gc-collect`` runs Python's cycle collector after each chunk, to tell
   garbage awaiting collection from memory that is held.
2. **Kill and resume.** A synthetic MVTec-layout tree of ``--categories`` categories is run once
   uninterrupted (the reference), then again in a child process killed with SIGKILL at ``--kills``
   random points (uniform over start-up and the next category, or over the category after that, as
   timed in the reference run), each time restarted with ``--resume``, and finally run to completion.
   After every kill ``results.json`` must parse; every category entry, once written, must stay
   byte-identical (canonical JSON) through the later restarts; the final file must hold every
   category, with metrics equal to the reference run's.

    python benchmarks/sustained.py --images 20000 --kills 5 --json sustained.json

Exit status 0 when every check passes, 1 otherwise.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

import subspace_jax as sj
from subspace_jax import backbones
from subspace_jax.data import synthetic
from subspace_jax.engine.scorer import score_in_batches

METRICS = ("pixel_auroc", "pro", "image_auroc", "pixel_ap", "f1_max")
CHILD = (
    "import dataclasses, sys\n"
    "from subspace_jax.data import registry\n"
    "from subspace_jax.runner import main\n"
    "spec = dataclasses.replace(registry.get('mvtec'), categories=tuple(sys.argv[1].split(',')))\n"
    "sys.exit(main(spec, sys.argv[2:]))\n"
)


def memory_mib() -> dict[str, float]:
    """Current (VmRSS) and peak (VmHWM) resident set size of this process, MiB."""
    fields = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            fields[name] = int(value.split()[0]) / 1024.0
    return {"rss_mib": round(fields["VmRSS"], 1), "peak_mib": round(fields["VmHWM"], 1)}


def image_batches(base: np.ndarray, n: int, batch_size: int, seed: int) -> Iterator[np.ndarray]:
    """``n`` images in batches: rows of ``base`` with fresh noise, made on the fly (nothing is kept)."""
    rng = np.random.default_rng(seed)
    for start in range(0, n, batch_size):
        rows = rng.integers(0, base.shape[0], size=min(batch_size, n - start))
        noise = rng.integers(-6, 7, size=(rows.size, *base.shape[1:]), dtype=np.int16)
        yield np.clip(base[rows].astype(np.int16) + noise, 0, 255).astype(np.uint8)


def sustained(args: argparse.Namespace) -> dict:
    backbone = backbones.load("efficientnet_lite0")
    train, test = synthetic.generate("weave", n_train=16, n_test=16, image_size=args.image_size, seed=0)
    config = sj.Config(
        backbone="efficientnet_lite0",
        image_size=args.image_size,
        levels=(2, 3),
        sampling_level="pooled",
        lam=8,
        k=3,
        sigma=1.0,
    )
    model = sj.fit(train.images, config, backbone, progress=False)
    n_chunks = -(-args.images // args.chunk)
    out = {
        "config": config.to_dict(),
        "images": args.images,
        "chunk": args.chunk,
        "batch_size": args.batch_size,
    }
    for mode in ("model.score", "runner scorer"):
        timings: dict[str, float] = {}
        trace, checksum, scored = [], 0.0, 0
        start = time.perf_counter()
        for index in range(n_chunks):
            n = min(args.chunk, args.images - index * args.chunk)
            batches = image_batches(test.images, n, args.batch_size, seed=index)
            if mode == "model.score":
                maps, scores = model.score(batches, batch_size=args.batch_size, progress=False)
            else:
                maps, scores = score_in_batches(
                    model, batches, batch_size=args.batch_size, timings=timings, progress=False
                )
            if not np.isfinite(scores).all() or maps.shape != (n, args.image_size, args.image_size):
                raise RuntimeError(
                    f"{mode}: chunk {index} gave non-finite scores or maps of shape {maps.shape}"
                )
            checksum += float(scores.sum())
            scored += n
            del maps, scores
            if args.gc_collect:
                gc.collect()
            trace.append({**memory_mib(), "seconds": round(time.perf_counter() - start, 1)})
            print(f"{mode}: {scored}/{args.images} images, {trace[-1]}", flush=True)
        seconds = time.perf_counter() - start
        first, last = trace[0], trace[-1]
        growth = last["rss_mib"] - first["rss_mib"]
        out[mode] = {
            "seconds": round(seconds, 1),
            "images_per_second": round(scored / seconds, 1),
            "after_first_chunk": first,
            "end": last,
            "rss_growth_mib": round(growth, 1),
            "peak_growth_mib": round(last["peak_mib"] - first["peak_mib"], 1),
            "rss_trace_mib": [t["rss_mib"] for t in trace],
            "score_checksum": checksum,
            "ok": growth <= args.max_growth_mib
            and last["peak_mib"] - first["peak_mib"] <= args.max_growth_mib,
        }
        if timings:
            out[mode]["stage_seconds"] = {k: round(v, 2) for k, v in timings.items()}
    return out


def _canonical(entry: dict) -> str:
    return json.dumps(entry, sort_keys=True, separators=(",", ":"))


def _read_results(out_dir: Path) -> dict | None:
    path = out_dir / "results.json"
    if not path.exists():
        return None
    return json.loads(path.read_text(encoding="utf-8"))  # a torn write would fail here


def _count_finished(out_dir: Path) -> int:
    try:
        document = _read_results(out_dir)
    except (OSError, json.JSONDecodeError):
        return 0
    return len(document["categories"]) if document else 0


def _child(categories: list[str], argv: list[str]) -> list[str]:
    return [sys.executable, "-c", CHILD, ",".join(categories), *argv]


def kill_resume(args: argparse.Namespace, workdir: Path) -> dict:
    if not 1 <= args.categories <= len(synthetic.CATEGORIES):
        raise ValueError(f"--categories: expected 1..{len(synthetic.CATEGORIES)}, got {args.categories}")
    names = list(synthetic.CATEGORIES[: args.categories])
    tree = synthetic.write_mvtec_tree(
        workdir / "tree",
        categories=tuple(names),
        n_train=args.n_train,
        n_test=args.n_test,
        image_size=args.image_size,
        seed=0,
    )
    common = [
        "--data-root",
        str(tree),
        "--backbone",
        "efficientnet_lite0",
        "--image-size",
        str(args.image_size),
        "--k",
        "2",
        "--lam",
        "4",
        "--batch-size",
        "8",
        "--no-progress",
    ]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}

    # The reference run, polled to learn when each category finishes (for the kill points below).
    start = time.perf_counter()
    reference = subprocess.Popen(
        _child(names, [*common, "--out", str(workdir / "reference")]),
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    finish_times: list[float] = []
    while reference.poll() is None:
        count = _count_finished(workdir / "reference")
        while len(finish_times) < count:
            finish_times.append(time.perf_counter() - start)
        time.sleep(0.05)
    reference_seconds = time.perf_counter() - start
    if reference.returncode != 0:
        raise RuntimeError(f"reference run failed:\n{reference.stderr.read()[-3000:]}")
    expected = _read_results(workdir / "reference")["categories"]
    gaps = np.diff([0.0, *finish_times]) if finish_times else np.array([reference_seconds])
    per_category = float(np.median(gaps[1:])) if gaps.size > 1 else float(gaps[0])

    out_dir = workdir / "killed"
    rng = random.Random(args.seed)
    first_seen: dict[str, str] = {}
    kills, problems = [], []
    for attempt in range(args.kills):
        # A random point of the run: once a random target count of finished categories is reached
        # (those already done, or one more; never the last category unless it is all that is left),
        # after a random delay; at once if one more category finishes first.
        done = len(first_seen)
        last = len(names) - 1
        target = rng.randint(done, min(done + 1, last - 1)) if done < last else last
        # Counted from the launch (the target is already reached): anywhere in start-up and the first
        # category; counted from the target category's write: anywhere in the next category.
        first_finish = finish_times[0] if finish_times else reference_seconds
        extra = rng.uniform(0.0, 0.9 * first_finish if target == done else 0.8 * per_category)
        proc = subprocess.Popen(
            _child(names, [*common, "--out", str(out_dir), "--resume"]),
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        started, reached = time.perf_counter(), None
        while proc.poll() is None:
            count = _count_finished(out_dir)
            if reached is None and count >= target:
                reached = time.perf_counter()
            if reached is not None and (time.perf_counter() - reached >= extra or count > target):
                proc.send_signal(signal.SIGKILL)
                break
            time.sleep(0.02)
        killed = proc.wait() == -signal.SIGKILL
        elapsed = time.perf_counter() - started
        try:
            document = _read_results(out_dir)
        except json.JSONDecodeError as error:
            problems.append(f"kill {attempt}: results.json does not parse ({error})")
            document = None
        finished = sorted(document["categories"]) if document else []
        for name in finished:
            entry = _canonical(document["categories"][name])
            if first_seen.setdefault(name, entry) != entry:
                problems.append(f"kill {attempt}: category {name!r} changed after it was written")
        kills.append(
            {
                "after_seconds": round(elapsed, 1),
                "target_finished": target,
                "extra_seconds": round(extra, 1),
                "killed": killed,
                "finished": finished,
            }
        )
        print(f"kill {attempt}: {kills[-1]}", flush=True)

    final = subprocess.run(
        _child(names, [*common, "--out", str(out_dir), "--resume"]), env=env, capture_output=True, text=True
    )
    document = _read_results(out_dir)
    if final.returncode != 0 or document is None:
        problems.append(f"final --resume failed ({final.returncode}): {final.stderr[-2000:]}")
    else:
        if sorted(document["categories"]) != sorted(names):
            problems.append(f"final results hold {sorted(document['categories'])}, expected {sorted(names)}")
        for name, entry in document["categories"].items():
            if name in first_seen and _canonical(entry) != first_seen[name]:
                problems.append(f"category {name!r} changed by the final --resume")
            for key in METRICS:
                if entry.get(key) != expected[name].get(key):
                    problems.append(
                        f"category {name!r}: {key} {entry.get(key)} != reference {expected[name][key]}"
                    )
    leftovers = (
        sorted(p.name for p in out_dir.iterdir() if p.name.startswith(".")) if out_dir.exists() else []
    )
    return {
        "categories": names,
        "reference_seconds": round(reference_seconds, 1),
        "reference_category_finished_at_seconds": [round(t, 1) for t in finish_times],
        "kills": kills,
        "finished_before_final_resume": sorted(first_seen),
        "hidden_leftovers_in_out": leftovers,
        "problems": problems,
        "ok": not problems,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=20000, help="images scored per mode (default 20000)")
    parser.add_argument("--chunk", type=int, default=1000, help="images per Model.score call")
    parser.add_argument("--batch-size", type=int, default=50)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--max-growth-mib", type=float, default=64.0, help="allowed RSS growth after chunk 1")
    parser.add_argument(
        "--gc-collect", action="store_true", help="run Python's cycle collector after every chunk"
    )
    parser.add_argument("--categories", type=int, default=4, help="categories in the kill/resume tree")
    parser.add_argument("--n-train", type=int, default=16)
    parser.add_argument("--n-test", type=int, default=48)
    parser.add_argument("--kills", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0, help="seeds the kill times")
    parser.add_argument("--skip", choices=("memory", "kills"), default=None, help="run only the other part")
    parser.add_argument("--workdir", type=Path, default=None, help="keep the trees and results here")
    parser.add_argument("--json", type=Path, default=None, help="write the figures here")
    args = parser.parse_args(argv)

    report: dict = {
        "command": " ".join(["python", "benchmarks/sustained.py", *(sys.argv[1:] if argv is None else argv)]),
        "host": {
            "machine": platform.machine(),
            "cpu_count": os.cpu_count(),
            "python": platform.python_version(),
        },
    }
    if args.skip != "memory":
        report["memory"] = sustained(args)
    if args.skip != "kills":
        with tempfile.TemporaryDirectory() as tmp:
            workdir = args.workdir or Path(tmp)
            workdir.mkdir(parents=True, exist_ok=True)
            report["kill_resume"] = kill_resume(args, workdir)
    ok = all(
        part.get("ok", True)
        for part in [
            *(v for k, v in report.get("memory", {}).items() if isinstance(v, dict) and "ok" in v),
            report.get("kill_resume", {}),
        ]
    )
    report["ok"] = ok
    text = json.dumps(report, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
