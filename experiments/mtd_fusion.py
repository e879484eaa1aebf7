"""Issue 22: the fusion method on MTD, chosen on half A of the test set, reported on half B and in full.

    python experiments/mtd_fusion.py members SPEC [SPEC ...]   # fit one-member fusions, cache their maps
    python experiments/mtd_fusion.py sweep SUBSPACE_SPEC PATCHCORE_SPEC [--jsonl FILE]
    python experiments/mtd_fusion.py report NAME [NAME ...] [--out DIR]

A SPEC is a packaged config with optional overrides, ``mtd_patchcore:coreset_ratio=0.02``. ``members``
fits each one as the only member of a ``FusionConfig`` (the same seeded held-out images as any fusion
with that ``--holdout``, so one-member fusions combine into exactly the fusion of both), scores the
whole test set once per normalisation and saves the normalised maps and scores under
``--cache/members/`` (``<spec>_<normalization>.npy``, ``<spec>.json``: config, bank bytes, seconds).
``sweep`` combines two cached members (``fusion.combine``) over map weights, normalisations and image
score rules and weights, on half A only, one JSON line per point. ``report`` fits each packaged config
on all training features, scores the whole test set (``runner.evaluation.evaluate``: the same run
measures fit time, time per image and bank bytes) and writes ``NAME_report.json`` (full / A / B) and
``NAME.json`` (config, bank bytes, seconds) to ``--out``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np

from subspace_jax import backbones, configs
from subspace_jax.data.mtd import MTD, MTDNotFoundError, find_root
from subspace_jax.eval import metrics
from subspace_jax.methods import fusion
from subspace_jax.runner import evaluation, halves
from subspace_jax.runner.workbench import Workbench

BACKBONE = "efficientnet_lite0"
OUT = Path(__file__).resolve().parents[1] / "docs" / "results" / "mtd_fusion_efficientnet_lite0"
# One pass per normalisation; its image-score rule: the level pass records the z-scored image scores.
PASSES = (("zscore", "ratio"), ("quantile", "ratio"), ("level_zscore", "zscore"))
WEIGHTS = tuple(round(0.1 * i, 1) for i in range(11))  # the subspace member's share w; PatchCore's 1 - w


def parse_spec(spec: str):
    """``NAME[:field=value,...][+refit]`` -> (slug, config with efficientnet_lite0); "+refit" names the
    members cached with ``--refit``."""
    spec, refit, _ = spec.partition("+refit")
    name, _, overrides = spec.partition(":")
    config = configs.load(name, backbone=BACKBONE)
    changes = configs.parse_overrides(overrides, config)
    slug = spec.replace(":", "_").replace("=", "").replace(",", "_") + ("_refit" if refit else "")
    return slug, dataclasses.replace(config, **changes)


def open_bench(args, config) -> Workbench:
    backbone = backbones.load_cached(config.backbone)
    size = {"image_size": config.image_size, "crop": config.crop}
    return Workbench(
        MTD(args.data_root), "mtd", backbone, cache_dir=args.feature_cache, progress=False, **size
    )


def run_members(args) -> None:
    folder = args.cache / "members"
    folder.mkdir(parents=True, exist_ok=True)
    for spec in args.names:
        slug, member = parse_spec(spec + ("+refit" if args.refit else ""))
        config = fusion.FusionConfig(
            backbone=BACKBONE, members=(member,), holdout_fraction=args.holdout, refit=args.refit
        )
        bench = open_bench(args, config)
        start = time.perf_counter()
        model = fusion.fit_features(
            bench.features("train"),
            config,
            backbone_name=bench.backbone.name,
            weights_sha256=bench.backbone.weights_sha256,
        )
        info = {"spec": spec, "config": member.to_dict(), "fit_seconds": time.perf_counter() - start}
        info |= {"member_bytes": model.members[0].nbytes, "n_bank": model.members[0].n_train}
        test = bench.features("test")
        for normalization, rule in PASSES:
            scored = dataclasses.replace(
                model, config=dataclasses.replace(config, normalization=normalization, score_rule=rule)
            )
            start = time.perf_counter()
            maps, scores = scored.score(test, batch_size=16, progress=False)
            info[f"{normalization}_seconds"] = time.perf_counter() - start
            np.save(folder / f"{slug}_{normalization}.npy", maps)
            info[f"{normalization}_scores"] = scores.tolist()
        (folder / f"{slug}.json").write_text(json.dumps(info) + "\n")
        print(slug, {k: v for k, v in info.items() if not k.endswith("_scores")}, flush=True)


def pixel_metrics(maps: np.ndarray, masks: np.ndarray) -> dict:
    return {
        "pixel_auroc": metrics.pixel_auroc(maps, masks),
        "pro": metrics.pro(maps, masks),
        "pixel_ap": metrics.pixel_ap(maps, masks),
    }


def run_sweep(args) -> None:
    folder = args.cache / "members"
    (sub, _), (pc, _) = (parse_spec(spec) for spec in args.names)
    infos = [json.loads((folder / f"{slug}.json").read_text()) for slug in (sub, pc)]
    bench = open_bench(args, fusion.FusionConfig(backbone=BACKBONE))
    test = bench.split("test")
    index = halves.set_indices(test.defect_types, "A", args.seed_halves)
    masks, labels = np.asarray(test.masks)[index].astype(bool), np.asarray(test.labels)[index]
    base = {"members": args.names, "half": "A", "bank_bytes": sum(i["member_bytes"] for i in infos)}
    args.jsonl.parent.mkdir(parents=True, exist_ok=True)
    with args.jsonl.open("a") as out:
        for normalization, _ in PASSES:
            maps = [
                np.load(folder / f"{slug}_{normalization}.npy", mmap_mode="r")[index] for slug in (sub, pc)
            ]
            for w in WEIGHTS:
                fused, _ = fusion.combine(
                    [(maps[0], np.zeros(len(index))), (maps[1], np.zeros(len(index)))], (w, 1 - w), (0, 0)
                )
                row = {**base, "normalization": normalization, "map_weight": w}
                row |= {k: round(100 * v, 2) for k, v in pixel_metrics(np.asarray(fused), masks).items()}
                out.write(json.dumps(row) + "\n")
                print(json.dumps(row), flush=True)
        for normalization, rule in PASSES[::2]:  # the ratio and z-score image rules
            scores = [np.asarray(i[f"{normalization}_scores"])[index] for i in infos]
            for v in WEIGHTS:
                fused = v * scores[0] + (1 - v) * scores[1]
                row = {**base, "score_rule": rule, "score_weight": v}
                row["image_auroc"] = round(100 * metrics.image_auroc(fused, labels), 2)
                out.write(json.dumps(row) + "\n")
                print(json.dumps(row), flush=True)


def run_report(args) -> None:
    args.out.mkdir(parents=True, exist_ok=True)
    for name in args.names:
        config = configs.load(name, backbone=BACKBONE)
        bench = open_bench(args, config)
        bench.features("train"), bench.features("test")  # cached before anything is timed
        row, maps, scores = evaluation.evaluate(bench, config.method, config, progress=False)
        test = bench.split("test")
        report = halves.halves_report(maps, scores, test.masks, test.labels, test.defect_types)
        keep = ("bank_bytes", "bank_seconds", "fit_seconds", "method_seconds_per_image", "seconds_per_image")
        info = {
            "config": config.to_dict(),
            **{k: row[k] for k in keep},
            "stage_seconds": row["stage_seconds"],
        }
        (args.out / f"{name}.json").write_text(json.dumps(info, indent=1) + "\n")
        (args.out / f"{name}_report.json").write_text(json.dumps(report, indent=1) + "\n")
        print(name, {s: report[f"{s}/all"] for s in halves.SETS}, info, flush=True)


def main(argv: list[str] | None = None) -> int:
    raw = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=raw)
    parser.add_argument("command", choices=("members", "sweep", "report"))
    parser.add_argument("names", nargs="+", help="member specs (members, sweep) or packaged configs (report)")
    parser.add_argument("--data-root", type=Path, help="MTD folder (default: find_root())")
    parser.add_argument("--feature-cache", type=Path, default=Path("results/cache"))
    parser.add_argument("--cache", type=Path, default=Path("results/mtd_fusion"), help="member maps")
    parser.add_argument("--holdout", type=float, default=0.1, help="members: FusionConfig.holdout_fraction")
    parser.add_argument("--refit", action="store_true", help="members: FusionConfig.refit")
    parser.add_argument("--seed-halves", type=int, default=0, help="sweep: the seed of the halves A / B")
    parser.add_argument("--jsonl", type=Path, default=Path("results/mtd_fusion/sweepA.jsonl"))
    parser.add_argument("--out", type=Path, default=OUT, help="report: folder of the JSON results")
    args = parser.parse_args(argv)
    if args.command == "sweep" and len(args.names) != 2:
        parser.error("sweep: give two member specs, the subspace one first")
    if args.data_root is None:
        try:
            args.data_root = find_root()
        except MTDNotFoundError as error:
            parser.error(f"--data-root: not given, and {error}")
    start = time.perf_counter()
    {"members": run_members, "sweep": run_sweep, "report": run_report}[args.command](args)
    print(f"done in {time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
