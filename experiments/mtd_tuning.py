"""Issue 14: choose on half A of MTD's test set, report on half B, with the library's own configs.

    python experiments/mtd_tuning.py config NAME [--half A|B|full] [--data-root PATH] [--out DIR]
    python experiments/mtd_tuning.py options NAME --set k=10,lam=20 [--set ...] [--half A] [--jsonl FILE]
    python experiments/mtd_tuning.py table [--rows DIR]
    python experiments/mtd_tuning.py frontier [--rows DIR] --out PNG

``config`` fits a packaged config (``mtd_default``, ``mtd_paper``, ``mtd_dictionary``, ``mtd_pixel_ap``,
``mtd_patchcore``, ``mtd_spade_levels23``, ...) with efficientnet_lite0 on MTD's training features (the
runner's feature cache), scores the whole test set, saves ``OUT/NAME_{maps,scores}.npy``, ``NAME.json``
(config, bank bytes) and ``NAME_report.json``: ``subspace_jax.runner.halves.halves_report`` (metrics in %
on the full set, the halves A and B, per defect type). ``options`` scores config overrides (fields of
the config; tuples joined by "+", e.g. ``levels=2+3,projection=pca,projection_channels=8+32+64``; the
input normalisation as ``backbone=efficientnet_lite0:imagenet``) on one half and appends one JSON line
each: the four metrics (%), ``model.nbytes`` and the seconds. ``table`` and ``frontier`` (PRO against
pixel AP, PatchCore's half-A point from ``patchcore_report.json``) read the rows in ``--rows``
(default: the recorded ``docs/results/mtd_tuning_efficientnet_lite0/optionsA*.jsonl``).

Until commit e97876f this script was a tuning tool of its own, with options that did not earn a place
in the library and are no longer here: residual standardisation per level or per pixel by held-out
nominal training images, the plain and offset relative residual ("rel", "blendX"), level weights, the
pooled and max+pooled image scores, and the fusion of image-atom and pixel-atom maps (``modes``). Their
rows stay in the recorded JSONL files; the code is in the history at e97876f.
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import sys
import time
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from subspace_jax import backbones, configs
from subspace_jax.data.mtd import MTD, MTDNotFoundError, find_root
from subspace_jax.runner import evaluation, halves
from subspace_jax.runner.workbench import Workbench

BACKBONE = "efficientnet_lite0"
ROWS = Path(__file__).resolve().parents[1] / "docs" / "results" / "mtd_tuning_efficientnet_lite0"
BANK_BUDGET = 47e6  # bytes: a tenth of the paper bank (issue 14)
FRONTIER_LABELS = {  # recorded rows -> the packaged config they became
    ("tf L234 k20 lam50 pca-2:8,3:32,4:64 bfloat16", "none"): "mtd_default",
    ("tf L234 k5 lam50", "none"): "mtd_paper",
    ("tf L23 k5 lam50 agg3 coreset300 bfloat16 pixel", "none"): "mtd_pixel_ap",
    ("tf L234 k20 lam50 pca-2:8,3:32,4:64 bfloat16 dict256-modx5", "none"): "mtd_dictionary",
}


def score_name(config) -> str:
    """The image score of ``config`` as the recorded rows name it: "max" or "top<percent>%"."""
    fraction = getattr(config, "score_fraction", 0.0)
    return f"top{100 * fraction:g}%" if fraction else "max"


def open_bench(config, args) -> Workbench:
    limits = {"train": args.limit, "test": args.limit} if args.limit else None  # evenly spaced subsets
    backbone, cache = backbones.load_cached(config.backbone), args.feature_cache
    size = {"image_size": config.image_size, "crop": config.crop}
    return Workbench(
        MTD(args.data_root), "mtd", backbone, cache_dir=cache, limits=limits, progress=False, **size
    )


def fit_and_score(config, bench: Workbench, index: np.ndarray | None = None):
    """Fit on all training features, score the test features (``index``: those images only)."""
    method = evaluation.resolve_method(config.method)
    test = bench.features("test")
    if index is not None:
        test = {key: np.asarray(value[index]) for key, value in test.items()}
    start = time.perf_counter()
    model, maps, scores, _ = evaluation.fit_and_score(
        method, config, bench.features("train"), test, backbone=bench.backbone, progress=False
    )
    return model, maps, scores, time.perf_counter() - start


def run_config(name: str, args) -> dict:
    config = configs.load(name, backbone=args.backbone)
    bench = open_bench(config, args)
    model, maps, scores, _ = fit_and_score(config, bench)
    test = bench.split("test")
    report = halves.halves_report(maps, scores, test.masks, test.labels, test.defect_types)
    args.out.mkdir(parents=True, exist_ok=True)
    np.save(args.out / f"{name}_maps.npy", maps)
    np.save(args.out / f"{name}_scores.npy", scores)
    info = {"config": config.to_dict(), "bank_bytes": model.nbytes}
    (args.out / f"{name}.json").write_text(json.dumps(info) + "\n")
    (args.out / f"{name}_report.json").write_text(json.dumps(report, indent=1))
    print(name, info, flush=True)
    return report


def run_option(name: str, overrides: str, args) -> dict:
    base = configs.load(name, backbone=args.backbone)
    config = dataclasses.replace(base, **configs.parse_overrides(overrides, base))
    bench = open_bench(config, args)
    index = halves.set_indices(bench.split("test").defect_types, args.half)
    model, maps, scores, seconds = fit_and_score(config, bench, index)
    test = bench.split("test")
    measured = halves.four_metrics(maps, scores, test.masks[index], test.labels[index])
    return {
        "variant": f"{name} {overrides}".strip(),
        "fusion": "none",
        "score": score_name(config),
        "half": args.half,
        **{key: round(100 * value, 2) for key, value in measured.items()},
        "bank_bytes": model.nbytes,
        "fit_score_seconds": round(seconds, 1),
    }


def read_rows(paths: list[Path]) -> list[dict]:
    return [json.loads(line) for path in paths for line in path.read_text().splitlines() if line.strip()]


def markdown_table(rows: list[dict]) -> str:
    """One markdown row per (bank variant, fusion): pixel metrics, image AUROC per image score, bank MB."""
    scores = list(dict.fromkeys(r["score"] for r in rows))
    groups: dict[tuple[str, str], dict] = {}
    for r in rows:
        group = groups.setdefault((r["variant"], r["fusion"]), {"row": r, "image": {}})
        group["image"].setdefault(r["score"], r["image_auroc"])
    lines = [
        "| bank variant | fusion | pixel AUROC | PRO | pixel AP | image AUROC: "
        + " / ".join(scores)
        + " | bank MB |",
        "|---|---|---:|---:|---:|---|---:|",
    ]
    for (variant, fusion), group in groups.items():
        r = group["row"]
        image = " / ".join(f"{group['image'][k]:.2f}" if k in group["image"] else "-" for k in scores)
        lines.append(
            f"| {variant} | {fusion} | {r['pixel_auroc']:.2f} | {r['pro']:.2f} | {r['pixel_ap']:.2f} "
            f"| {image} | {r['bank_bytes'] / 1e6:.1f} |"
        )
    return "\n".join(lines)


def frontier_figure(rows: list[dict], reference: dict, path: Path, labels=FRONTIER_LABELS) -> Path:
    """PRO against pixel AP, one point per (bank variant, fusion) (filled: bank within ``BANK_BUDGET``),
    with the reference's point and the issue's targets (its PRO + 2, its pixel AP)."""
    points = {(r["variant"], r["fusion"]): (r["pro"], r["pixel_ap"], r["bank_bytes"]) for r in rows}
    fig = Figure(figsize=(6.5, 4.5))
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    for small, label in ((False, "bank > 47 MB"), (True, "bank <= 47 MB")):
        xy = np.array([(pro, ap) for pro, ap, b in points.values() if (b <= BANK_BUDGET) == small])
        face = "C0" if small else "none"
        xy = xy.reshape(-1, 2)
        ax.scatter(xy[:, 0], xy[:, 1], s=18, label=label, facecolors=face, edgecolors="C0")
    pro, ap = reference["pro"], reference["pixel_ap"]
    ax.scatter([pro], [ap], marker="*", s=160, c="C3", label=reference["name"])
    ax.axvline(pro + 2, color="C3", lw=0.8, ls="--", label="target: PRO > reference + 2")
    ax.axhline(ap, color="C3", lw=0.8, ls=":", label="target: pixel AP > reference")
    for key, text in labels.items():
        if key in points:
            ax.annotate(text, points[key][:2], xytext=(4, -10), textcoords="offset points", fontsize=7)
    ax.set(xlabel="PRO (%)", ylabel="pixel AP (%)")
    ax.set_title("MTD half A: every option (one point per bank variant and fusion)", fontsize=9)
    ax.legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    png = io.BytesIO()
    fig.savefig(png, format="png", dpi=110)
    path.write_bytes(png.getvalue())  # only once the figure is complete
    return path


def main(argv: list[str] | None = None) -> int:
    raw = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=raw)
    parser.add_argument("command", choices=("config", "options", "table", "frontier"))
    parser.add_argument("name", nargs="?", help="config, options: a packaged config name")
    parser.add_argument("--data-root", type=Path, help="MTD folder (default: find_root())")
    parser.add_argument("--feature-cache", type=Path, default=Path("results/cache"))
    parser.add_argument("--backbone", default=BACKBONE)
    parser.add_argument("--limit", type=int, help="at most this many training and test images (quick runs)")
    parser.add_argument("--half", choices=halves.SETS, help="set shown (config) or scored (options)")
    parser.add_argument("--set", action="append", default=[], help="options: FIELD=VALUE,... (repeatable)")
    parser.add_argument("--jsonl", type=Path, default=Path("results/mtd_tuning/options.jsonl"))
    parser.add_argument("--rows", type=Path, default=ROWS, help="table, frontier: folder of optionsA*.jsonl")
    parser.add_argument("--out", type=Path, help="config: folder (results/mtd_tuning); frontier: PNG")
    args = parser.parse_args(argv)
    if args.command in ("config", "options"):
        if args.name is None:
            parser.error(f"{args.command}: give a config name ({', '.join(configs.names())})")
        if args.data_root is None:
            try:
                args.data_root = find_root()
            except MTDNotFoundError as error:
                parser.error(f"--data-root: not given, and {error}")
    start = time.perf_counter()
    if args.command == "config":
        args.out = args.out or Path("results/mtd_tuning")
        half = args.half or "full"
        print(f"{half}/all", run_config(args.name, args)[f"{half}/all"])
    elif args.command == "options":
        args.half = args.half or "A"
        args.jsonl.parent.mkdir(parents=True, exist_ok=True)
        for overrides in args.set or [""]:
            row = run_option(args.name, overrides, args)
            with args.jsonl.open("a") as f:
                f.write(json.dumps(row) + "\n")
            print(json.dumps(row), flush=True)
    elif args.command == "table":
        print(markdown_table(read_rows(sorted(args.rows.glob("optionsA*.jsonl")))))
    else:
        if args.out is None:
            parser.error("frontier: --out PNG is required")
        reference = json.loads((args.rows / "patchcore_report.json").read_text())["A/all"]
        rows = read_rows(sorted(args.rows.glob("optionsA*.jsonl")))
        print(frontier_figure(rows, {"name": "PatchCore (1% coreset)", **reference}, args.out))
    print(f"done in {time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
