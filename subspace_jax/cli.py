"""The ``subspace-jax`` command: argument parsing and printing over the library.

    subspace-jax fit TRAIN... --out MODEL_DIR [--config NAME|FILE] [--method M] [--backbone ...]
    subspace-jax predict MODEL_DIR INPUT... --out DIR [--batch-size N] [--false-alarm-rate R]
    subspace-jax export MODEL_DIR FILE [--batch-size N] [--platforms cpu,cuda,tpu]
    subspace-jax evaluate MODEL_DIR --dataset mvtec|btad|mtd|folder --data-root ROOT [--category C]

The work is done by ``subspace_jax.methods`` (fit), ``subspace_jax.serving`` (checkpoints, predict,
export, evaluate) and ``subspace_jax.data`` (files, datasets). Errors are one line on stderr with exit
status 1 (``--debug`` shows the traceback instead).
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from subspace_jax import backbones, configs
from subspace_jax.configs import flags
from subspace_jax.data import registry as datasets
from subspace_jax.data.files import collect_images
from subspace_jax.eval import calibration
from subspace_jax.methods import fitting, registry
from subspace_jax.serving import checkpoint, export, predict
from subspace_jax.serving.evaluate import evaluate_model, open_dataset

__all__ = ["build_parser", "main"]

PROG = "subspace-jax"


class UsageError(ValueError):
    """A bad command line or input, reported as one line."""


# --- fit --------------------------------------------------------------------------------------------


def method_and_base(argv: Sequence[str]) -> tuple[registry.Method, Any]:
    """The method and its starting config from ``--config`` and ``--method`` in ``argv`` (before the
    full parser exists: the config flags depend on the method)."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config", default=None)
    pre.add_argument("--method", default=None, choices=registry.names())
    known, _ = pre.parse_known_args(argv)
    if known.config is None:
        method = registry.get(known.method or "subspace")
        return method, method.config_cls()
    config = configs.load(known.config)
    method = registry.for_config(config)
    if known.method is not None and known.method != method.name:
        raise UsageError(f"--method {known.method}: --config {known.config} holds a {method.name} config")
    return method, config


def cmd_fit(args: argparse.Namespace, base: Any, config_names: list[str]) -> int:
    config = flags.config_from_namespace(base, args, config_names)
    paths = collect_images(args.train, "TRAIN")
    backbone = _load_backbone(config.backbone)
    fraction = args.val_fraction
    n_val = 0 if fraction == 0 else min(len(paths) - 1, max(1, round(fraction * len(paths))))
    print(
        f"fit: {len(paths)} images ({len(paths) - n_val} in the bank, {n_val} held out to calibrate), "
        f"{config.method} with {config.backbone}, {config.output_size} px",
        file=sys.stderr,
    )
    model = fitting.fit(
        [str(p) for p in paths],
        config,
        backbone,
        batch_size=args.batch_size,
        progress=not args.quiet,
        validation_fraction=fraction,
        false_alarm_rate=args.false_alarm_rate,
        seed=args.split_seed,
    )
    out = checkpoint.save(model, args.out)
    message = f"saved {out}"
    if model.thresholds is not None:
        t = model.thresholds
        message += (
            f" (image threshold {t.image:.4g}, pixel threshold {t.pixel:.4g} at rate {t.false_alarm_rate:g})"
        )
    print(message)
    return 0


def _load_backbone(name: str) -> Any:
    try:
        return backbones.load_cached(name)
    except (FileNotFoundError, OSError) as error:
        raise UsageError(
            f"cannot load the {name} backbone ({error}); --backbone efficientnet_lite0 runs offline"
        ) from error


def _load_model(model_dir: str, rate: float | None) -> Any:
    model = checkpoint.load(model_dir, backbone=None)
    _load_backbone(model.backbone_name)  # a missing backbone is reported before any work
    if rate is not None:
        thresholds = calibration.require_thresholds(model)
        model = model.with_thresholds(thresholds.at_rate(rate))
    return model


# --- predict, export, evaluate ----------------------------------------------------------------------


def cmd_predict(args: argparse.Namespace) -> int:
    model = _load_model(args.model_dir, args.false_alarm_rate)
    paths = collect_images(args.inputs, "INPUT")
    result = predict.predict_files(
        model,
        paths,
        Path(args.out),
        batch_size=args.batch_size,
        report_limit=args.report_limit,
        progress=not args.quiet,
        model_dir=args.model_dir,
    )
    print(
        f"{result['anomalous']} of {result['images']} images anomalous "
        f"({result['images'] / result['seconds']:.1f} images/s); wrote predictions.csv, masks/, overlays/ "
        f"and report.html in {args.out}"
    )
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    platforms = tuple(p.strip() for p in args.platforms.split(",") if p.strip())
    model = checkpoint.load(args.model_dir)
    exported = export.export_model(model, batch_size=args.batch_size, platforms=platforms)
    path = export.save_exported(exported, args.file)
    batch = "any batch size" if args.batch_size is None else f"batch size {args.batch_size}"
    size = model.config.output_size
    print(
        f"wrote {path} ({path.stat().st_size / 2**20:.1f} MiB; {', '.join(platforms)}; "
        f"uint8 (B, {size}, {size}, 3) -> maps (B, {size}, {size}), scores (B,); {batch})"
    )
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    model = _load_model(args.model_dir, args.false_alarm_rate)
    calibration.require_thresholds(model)
    spec = datasets.get(args.dataset)
    root = args.data_root or os.environ.get(spec.env_var)
    if not root:
        raise UsageError(f"--data-root: required (or set {spec.env_var})")
    dataset = open_dataset(args.dataset, Path(root), args.category)
    out = Path(args.out)
    result = evaluate_model(
        model,
        dataset,
        out,
        batch_size=args.batch_size,
        report_limit=args.report_limit,
        progress=not args.quiet,
        labels_text={"model_dir": args.model_dir, "dataset": f"{args.dataset} ({root})"},
    )
    keys = (
        "false_alarm_rate",
        "recall",
        "f1",
        "f1_max_oracle",
        "pixel_precision",
        "pixel_recall",
        "pixel_iou",
    )
    print(" ".join(f"{k}={result[k]:.4f}" for k in keys if k in result))
    print(f"wrote {out / 'metrics.json'} and {out / 'report.html'}")
    return 0


# --- parser -----------------------------------------------------------------------------------------


def _rate(text: str) -> float:
    value = float(text)
    if not 0.0 < value < 1.0:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1), got {text}")
    return value


def _fraction(text: str) -> float:
    value = float(text)
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1), got {text}")
    return value


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an int >= 1, got {text}")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an int >= 0, got {text}")
    return value


def build_parser(method: registry.Method, base: Any) -> tuple[argparse.ArgumentParser, list[str]]:
    """The parser, with ``fit`` taking one flag per field of ``method``'s config (``base`` feeds the
    defaults shown in the help), and the names of those fields."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks on errors"
    )
    common.add_argument("--quiet", action="store_true", default=argparse.SUPPRESS, help="no progress bars")
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Training-free anomaly detection and localisation: fit on defect-free images, "
        "predict, export, evaluate.",
        parents=[common],
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="{fit,predict,export,evaluate}")
    formatter = argparse.ArgumentDefaultsHelpFormatter

    fit = sub.add_parser(
        "fit",
        parents=[common],
        formatter_class=formatter,
        help="fit a model on defect-free images and calibrate its thresholds",
        description="Fit a model on defect-free images (no training: their features are the bank), hold a "
        "seeded fraction out to calibrate the thresholds, and save it. " + predict.CALIBRATION_NOTE,
    )
    fit.add_argument(
        "train", nargs="+", metavar="TRAIN", help="folders (recursive), globs or files of defect-free images"
    )
    fit.add_argument("--out", required=True, metavar="MODEL_DIR", help="checkpoint folder to write")
    fit.add_argument(
        "--config",
        metavar="NAME|FILE",
        help=f"a packaged config ({', '.join(configs.names())}) or a config file (.py with get_config(), or "
        "JSON); the config flags below override its fields",
    )
    fit.add_argument(
        "--method", choices=registry.names(), default=None, help="the method, when no --config names it"
    )
    fit.add_argument(
        "--val-fraction", type=_fraction, default=0.1, help="fraction held out to calibrate (0: none)"
    )
    fit.add_argument("--false-alarm-rate", type=_rate, default=0.01, help="calibrated false-alarm rate r")
    fit.add_argument("--split-seed", type=int, default=0, help="seed of the hold-out draw")
    fit.add_argument("--batch-size", type=_positive_int, default=8, help="images per backbone call")
    names = flags.add_config_flags(fit, method.config_cls, base, f"{method.name} configuration")

    predict_parser = sub.add_parser(
        "predict",
        parents=[common],
        formatter_class=formatter,
        help="score images: CSV, masks, overlays and an HTML report",
        description="Score images with a fitted model, streaming them (constant memory): writes "
        "DIR/predictions.csv (path,score,normalized_score,anomalous in input order), DIR/masks/ (binary "
        "PNG at each input's size), DIR/overlays/ and DIR/report.html.",
    )
    predict_parser.add_argument("model_dir", metavar="MODEL_DIR")
    predict_parser.add_argument(
        "inputs", nargs="+", metavar="INPUT", help="folders (recursive), globs or image files"
    )
    predict_parser.add_argument("--out", required=True, metavar="DIR")
    predict_parser.add_argument("--batch-size", type=_positive_int, default=8)
    predict_parser.add_argument(
        "--false-alarm-rate",
        type=_rate,
        default=None,
        help="re-threshold at this rate (default: the calibrated one)",
    )
    predict_parser.add_argument(
        "--report-limit",
        type=_non_negative_int,
        default=200,
        help="highest-scoring images shown in the report",
    )

    export_parser = sub.add_parser(
        "export",
        parents=[common],
        formatter_class=formatter,
        help="write the whole scorer as a jax.export artifact",
        description="Serialize the whole scorer (backbone, bank and Gram matrices inside) with jax.export: "
        "uint8 (B, S, S, 3) in, (maps, scores) out. Run it with "
        "jax.export.deserialize(open(FILE, 'rb').read()).call(images), with only jax and numpy installed.",
    )
    export_parser.add_argument("model_dir", metavar="MODEL_DIR")
    export_parser.add_argument("file", metavar="FILE")
    export_parser.add_argument(
        "--batch-size", type=_positive_int, default=None, help="fixed batch size (default: symbolic)"
    )
    export_parser.add_argument(
        "--platforms", default="cpu", help="comma-separated lowering platforms, e.g. cpu,cuda,tpu"
    )

    evaluate = sub.add_parser(
        "evaluate",
        parents=[common],
        formatter_class=formatter,
        help="metrics and a report on a labelled test set",
        description="Score a labelled test set: pixel/image AUROC, PRO, AP, and the false-alarm rate, "
        "recall, F1 (against the F1-max oracle) and pixel precision/recall/IoU at the calibrated thresholds.",
    )
    evaluate.add_argument("model_dir", metavar="MODEL_DIR")
    evaluate.add_argument("--dataset", required=True, choices=tuple(datasets.DATASETS))
    evaluate.add_argument("--data-root", help="dataset root (default: $SUBSPACE_JAX_<DATASET>)")
    evaluate.add_argument("--category", help="MVTec AD / BTAD category")
    evaluate.add_argument("--out", default="evaluation", metavar="DIR")
    evaluate.add_argument("--batch-size", type=_positive_int, default=8)
    evaluate.add_argument("--false-alarm-rate", type=_rate, default=None, help="re-threshold at this rate")
    evaluate.add_argument("--report-limit", type=_non_negative_int, default=100)
    return parser, names


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    try:
        method, base = method_and_base(argv) if argv[:1] == ["fit"] else (registry.get("subspace"), None)
    except ValueError as error:
        if debug:
            raise
        print(f"{PROG} fit: error: {' '.join(str(error).split())}", file=sys.stderr)
        return 2
    parser, config_names = build_parser(method, base if base is not None else method.config_cls())
    args = parser.parse_args(argv)
    args.debug = getattr(args, "debug", False)
    args.quiet = getattr(args, "quiet", False)
    previous_format = warnings.formatwarning
    if not args.debug:  # warnings as one line each, like the errors
        warnings.formatwarning = lambda message, category, *_, **__: f"{PROG}: warning: {message}\n"
    try:
        if args.command == "fit":
            return cmd_fit(args, base, config_names)
        return {"predict": cmd_predict, "export": cmd_export, "evaluate": cmd_evaluate}[args.command](args)
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    except (ValueError, OSError, TypeError, RuntimeError) as error:
        if args.debug:
            raise
        message = " ".join(str(error).split()) or type(error).__name__
        print(f"{PROG} {args.command}: error: {message}", file=sys.stderr)
        return 1
    finally:
        warnings.formatwarning = previous_format


if __name__ == "__main__":
    sys.exit(main())
