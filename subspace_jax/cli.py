"""The ``subspace-jax`` command: ``fit``, ``predict``, ``export``, ``evaluate``.

    subspace-jax fit TRAIN... --out MODEL_DIR [--config FILE] [--backbone ...] [--val-fraction 0.1]
    subspace-jax predict MODEL_DIR INPUT... --out DIR [--batch-size N] [--false-alarm-rate R]
    subspace-jax export MODEL_DIR FILE [--batch-size N] [--platforms cpu,cuda,tpu]
    subspace-jax evaluate MODEL_DIR --dataset mvtec|btad|mtd|folder --data-root ROOT [--category C]

Errors are one line on stderr with exit status 1 (``--debug`` shows the traceback instead).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import csv
import glob
import importlib.util
import json
import math
import os
import sys
import time
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

PROG = "subspace-jax"
CALIBRATION_NOTE = (
    "Thresholds were set on defect-free images only: they bound the false-alarm rate on parts like "
    "the calibration images, not the recall of defects."
)


class UsageError(ValueError):
    """A bad command line or input, reported as one line."""


# --- inputs -----------------------------------------------------------------------------------------


def collect_images(specs: Sequence[str], what: str) -> list[Path]:
    """Image files named by ``specs``: folders (recursive, sorted by relative path), globs (sorted) or
    files, in the order given; a file met twice is kept once (the first time)."""
    from subspace_jax.data.images import is_image_file

    found: list[Path] = []
    seen: set[str] = set()

    def add(path: Path) -> None:
        key = os.path.abspath(path)
        if key not in seen:
            seen.add(key)
            found.append(path)

    def add_folder(folder: Path) -> None:
        files = [p for p in folder.rglob("*") if is_image_file(p)]
        files = [p for p in files if not any(part.startswith(".") for part in p.relative_to(folder).parts)]
        for path in sorted(files, key=lambda p: p.relative_to(folder).as_posix()):
            add(path)

    for spec in specs:
        path = Path(spec)
        if path.is_dir():
            before = len(found)
            add_folder(path)
            if len(found) == before:
                raise UsageError(f"{what}: no image files in the folder {spec}")
        elif path.is_file():
            add(path)
        elif glob.has_magic(spec):
            matches = sorted(glob.glob(spec, recursive=True))
            if not matches:
                raise UsageError(f"{what}: the pattern {spec!r} matches nothing")
            for match in matches:
                match_path = Path(match)
                if match_path.is_dir():
                    add_folder(match_path)
                elif is_image_file(match_path):
                    add(match_path)
        else:
            raise UsageError(f"{what}: {spec} is neither a file, a folder nor a glob pattern that matches")
    if not found:
        raise UsageError(f"{what}: no image files found in {' '.join(specs)}")
    return found


def output_names(paths: Sequence[Path]) -> list[str]:
    """Relative output names (``sub/dir/name.png``) mirroring each input's path below the inputs'
    common folder; a name already taken gets ``_<index>`` before its suffix."""
    folders = [os.path.dirname(os.path.abspath(p)) for p in paths]
    root = os.path.commonpath(folders)
    names, taken = [], set()
    for index, path in enumerate(paths):
        relative = Path(os.path.relpath(os.path.abspath(path), root)).with_suffix(".png").as_posix()
        if relative in taken:
            relative = Path(relative).with_name(f"{Path(relative).stem}_{index}.png").as_posix()
        taken.add(relative)
        names.append(relative)
    return names


def load_config(path: str | None, namespace: argparse.Namespace, names: list[str]) -> Any:
    """The model Config: defaults, then ``--config FILE`` (JSON, or a .py with ``get_config()``
    returning a Config or a dict), then the flags given."""
    from subspace_jax import Config
    from subspace_jax.configs import flags as flags

    base = Config()
    if path is not None:
        file = Path(path)
        if not file.is_file():
            raise UsageError(f"--config: {path} does not exist")
        if file.suffix == ".py":
            spec = importlib.util.spec_from_file_location(f"_subspace_jax_config_{file.stem}", file)
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
            if not hasattr(module, "get_config"):
                raise UsageError(f"--config: {path} defines no get_config()")
            loaded = module.get_config()
        else:
            try:
                loaded = json.loads(file.read_text(encoding="utf-8"))
            except json.JSONDecodeError as error:
                raise UsageError(f"--config: {path} is not valid JSON ({error})") from error
        base = loaded if isinstance(loaded, Config) else Config.from_dict(loaded)
    return flags.config_from_namespace(base, namespace, names)


# --- fit --------------------------------------------------------------------------------------------


def cmd_fit(args: argparse.Namespace, config_names: list[str]) -> int:
    import subspace_jax as sj
    from subspace_jax.serving import checkpoint

    config = load_config(args.config, args, config_names)
    paths = collect_images(args.train, "TRAIN")
    backbone = _load_backbone(config.backbone)
    fraction = args.val_fraction
    n_val = 0 if fraction == 0 else min(len(paths) - 1, max(1, round(fraction * len(paths))))
    print(
        f"fit: {len(paths)} images ({len(paths) - n_val} in the bank, {n_val} held out to calibrate), "
        f"{config.backbone}, {config.output_size} px",
        file=sys.stderr,
    )
    model = sj.fit(
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
    from subspace_jax.runner.core import load_backbone

    try:
        return load_backbone(name)
    except (FileNotFoundError, OSError) as error:
        raise UsageError(
            f"cannot load the {name} backbone ({error}); --backbone efficientnet_lite0 runs offline"
        ) from error


def _load_model(model_dir: str, rate: float | None) -> Any:
    from subspace_jax.serving import checkpoint

    model = checkpoint.load(model_dir)
    # The process-wide cached backbone: scoring compiles once per backbone object and batch shape.
    model = model.bind(_load_backbone(model.backbone_name))
    if rate is not None:
        if model.thresholds is None:
            raise UsageError(
                f"{model_dir}: the model has no calibration to re-threshold; refit with --val-fraction"
            )
        model = model.with_thresholds(model.thresholds.at_rate(rate))
    return model


# --- predict ----------------------------------------------------------------------------------------


def map_to_original(score_map: np.ndarray, config: Any, height: int, width: int) -> np.ndarray:
    """(S, S) map -> (height, width) float32 over the original image: undo the centre crop (the
    cropped-away border gets 0) and resize bilinearly."""
    from PIL import Image

    if config.crop is not None:
        canvas = np.zeros((config.image_size, config.image_size), np.float32)
        top = int(round((config.image_size - config.crop) / 2.0))
        canvas[top : top + config.crop, top : top + config.crop] = score_map
        score_map = canvas
    if score_map.shape == (height, width):
        return score_map.astype(np.float32)
    pil = Image.fromarray(np.asarray(score_map, np.float32), mode="F")
    return np.asarray(pil.resize((width, height), Image.Resampling.BILINEAR), dtype=np.float32)


def _save_png(array: np.ndarray, path: Path) -> None:
    from PIL import Image

    from subspace_jax._io import atomic_file

    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(path) as tmp:
        Image.fromarray(array).save(tmp, format="PNG", compress_level=1)


def _finish_image(
    image: np.ndarray, score_map: np.ndarray, score: float, thresholds: Any, config: Any, name: str, out: Path
) -> tuple[float, bool, str, str]:
    """Write one image's mask and overlay; returns (normalised score, decision, image and overlay
    thumbnails as data URIs)."""
    from subspace_jax.eval import calibration
    from subspace_jax.serving import report

    height, width = image.shape[:2]
    full = map_to_original(score_map, config, height, width)
    anomalous = bool(score > thresholds.image)
    mask = (full > thresholds.pixel) & anomalous
    picture = report.overlay(image, calibration.normalize(full, thresholds.pixel), mask)
    _save_png(mask.astype(np.uint8) * 255, out / "masks" / name)
    _save_png(picture, out / "overlays" / name)
    normalized = float(calibration.normalize(np.float32(score), thresholds.image))
    return (
        normalized,
        anomalous,
        report.data_uri(report.thumbnail(image)),
        report.data_uri(report.thumbnail(picture)),
    )


def _decoded_batches(
    paths: Sequence[Path], batch_size: int, pool: Any
) -> Iterator[tuple[int, list[np.ndarray]]]:
    """(start index, original images) per batch, decoding the next batch while the caller works."""
    from subspace_jax.data.images import read_image

    pending = None
    for start in range(0, len(paths), batch_size):
        futures = [pool.submit(read_image, p) for p in paths[start : start + batch_size]]
        if pending is not None:
            yield pending[0], [f.result() for f in pending[1]]
        pending = (start, futures)
    if pending is not None:
        yield pending[0], [f.result() for f in pending[1]]


def predict_files(
    model: Any,
    paths: Sequence[Path],
    out: Path,
    *,
    batch_size: int = 8,
    report_limit: int = 200,
    progress: bool = True,
    model_dir: str = "",
) -> dict[str, Any]:
    """Stream ``paths`` through ``model``: predictions.csv, masks/, overlays/ and report.html in ``out``.

    Memory holds one batch of images and maps, the gallery's ``report_limit`` thumbnails and one float
    per image (for the histogram), whatever the number of images.
    """
    from tqdm.auto import tqdm

    from subspace_jax._io import atomic_file
    from subspace_jax.data.images import resize_image
    from subspace_jax.engine.batches import pad_batch
    from subspace_jax.serving import report

    thresholds = model.thresholds
    if thresholds is None:
        raise UsageError(f"{model_dir or 'model'}: it has no thresholds; refit it with --val-fraction > 0")
    config = model.config
    names = output_names(paths)
    out.mkdir(parents=True, exist_ok=True)
    top = report.TopK(report_limit)
    all_scores = np.empty(len(paths), np.float32)
    n_anomalous = 0
    start_time = time.perf_counter()
    workers = min(4, (os.cpu_count() or 1) + 1)
    with (
        concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool,
        atomic_file(out / "predictions.csv") as csv_tmp,
        open(csv_tmp, "w", newline="", encoding="utf-8") as handle,
        tqdm(total=len(paths), desc="predict", unit="img", disable=not progress) as bar,
    ):
        writer = csv.writer(handle)
        writer.writerow(["path", "score", "normalized_score", "anomalous"])
        for start, originals in _decoded_batches(paths, batch_size, pool):
            batch = np.stack([resize_image(image, config.image_size, config.crop) for image in originals])
            n = batch.shape[0]
            maps, scores = model.score(pad_batch(batch, batch_size), batch_size=batch_size, progress=False)
            jobs = [
                pool.submit(
                    _finish_image,
                    originals[i],
                    maps[i],
                    float(scores[i]),
                    thresholds,
                    config,
                    names[start + i],
                    out,
                )
                for i in range(n)
            ]
            for i, job in enumerate(jobs):
                index = start + i
                normalized, anomalous, image_uri, overlay_uri = job.result()
                score = float(scores[i])
                all_scores[index] = score
                n_anomalous += anomalous
                writer.writerow(
                    [str(paths[index]), f"{score:.9g}", f"{normalized:.6f}", "true" if anomalous else "false"]
                )
                top.offer(
                    score,
                    index,
                    lambda: report.GalleryItem(
                        path=str(paths[index]),
                        score=score,
                        normalized_score=normalized,
                        anomalous=anomalous,
                        image_uri=image_uri,
                        overlay_uri=overlay_uri,
                        overlay_href=f"overlays/{names[index]}",
                        mask_href=f"masks/{names[index]}",
                    ),
                )
            bar.update(n)
    seconds = time.perf_counter() - start_time
    summary = {
        "model": model_dir,
        "images": str(len(paths)),
        "anomalous": f"{n_anomalous} ({100 * n_anomalous / len(paths):.1f}%)",
        "image threshold": f"{thresholds.image:.4g}",
        "pixel threshold": f"{thresholds.pixel:.4g}",
        "false-alarm rate": f"{thresholds.false_alarm_rate:g} (calibrated on {thresholds.n_images} images)",
        "time": f"{seconds:.1f} s, compilation included ({len(paths) / seconds:.1f} images/s)",
    }
    report.write_report(
        out / "report.html",
        title=f"subspace-jax predictions: {n_anomalous} of {len(paths)} anomalous",
        items=top.items(),
        scores=all_scores,
        threshold=thresholds.image,
        summary=summary,
        note=CALIBRATION_NOTE
        + " Normalised score = clip(score / (2 × threshold), 0, 1): 0.5 is the threshold.",
        nominal_scores=thresholds.nominal_scores,
    )
    return {"images": len(paths), "anomalous": n_anomalous, "seconds": seconds}


def cmd_predict(args: argparse.Namespace) -> int:
    model = _load_model(args.model_dir, args.false_alarm_rate)
    paths = collect_images(args.inputs, "INPUT")
    result = predict_files(
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


# --- export -----------------------------------------------------------------------------------------


def cmd_export(args: argparse.Namespace) -> int:
    from subspace_jax.serving import checkpoint, export

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


# --- evaluate ---------------------------------------------------------------------------------------


def threshold_metrics(
    maps: np.ndarray, scores: np.ndarray, masks: np.ndarray, labels: np.ndarray, thresholds: Any
) -> dict:
    """Image false-alarm rate, recall, precision and F1 at the image threshold, the F1-max oracle (the
    best F1 over all thresholds, i.e. with the labels), pixel precision, recall, IoU and false-alarm
    rate of the predicted masks (map > pixel threshold in images decided anomalous) and of the ungated
    masks (map > pixel threshold), and the ungated pixel false-alarm rate on defect-free images."""
    from subspace_jax.eval import metrics

    labels = np.asarray(labels).astype(bool)
    decisions = scores > thresholds.image
    out: dict[str, Any] = {"image_threshold": thresholds.image, "pixel_threshold": thresholds.pixel}
    out["false_alarm_rate_target"] = thresholds.false_alarm_rate
    out["false_alarm_rate"] = float(decisions[~labels].mean()) if (~labels).any() else math.nan
    tp = int((decisions & labels).sum())
    fp = int((decisions & ~labels).sum())
    out["recall"] = tp / max(int(labels.sum()), 1)
    out["precision"] = tp / max(tp + fp, 1)
    out["f1"] = 2 * tp / max(tp + fp + int(labels.sum()), 1)
    if labels.any() and (~labels).any():
        out["f1_max_oracle"] = metrics.f1_max(scores[:, None, None], labels[:, None, None])
    for name, predicted in (
        ("pixel", (maps > thresholds.pixel) & decisions[:, None, None]),
        ("pixel_ungated", maps > thresholds.pixel),
    ):
        ptp = int((predicted & masks).sum())
        pfp = int((predicted & ~masks).sum())
        pfn = int((~predicted & masks).sum())
        out[f"{name}_precision"] = ptp / max(ptp + pfp, 1)
        out[f"{name}_recall"] = ptp / max(ptp + pfn, 1)
        out[f"{name}_iou"] = ptp / max(ptp + pfp + pfn, 1)
        out[f"{name}_false_alarm_rate"] = pfp / max(int((~masks).sum()), 1)
    # What the pixel threshold controls: the fraction of pixels of defect-free images above it (pixels
    # around defects in defective images are not like the calibration pixels: smoothing spreads the defect).
    if (~labels).any():
        out["pixel_false_alarm_rate_nominal_images"] = float((maps[~labels] > thresholds.pixel).mean())
    return out


def _open_dataset(name: str, root: str, category: str | None) -> Any:
    from subspace_jax.data import FolderDataset
    from subspace_jax.runner import datasets

    if name == "folder":
        return FolderDataset(root, require_masks=False)
    spec = {"mvtec": datasets.MVTEC, "btad": datasets.BTAD, "mtd": datasets.MTD}[name]
    if category is None:
        if len(spec.categories) > 1:
            raise UsageError(f"--category: {spec.title} needs one of {', '.join(spec.categories)}")
        category = spec.categories[0]
    if category not in spec.categories:
        raise UsageError(f"--category: expected one of {', '.join(spec.categories)}, got {category!r}")
    return spec.open(Path(root), category)


def cmd_evaluate(args: argparse.Namespace) -> int:
    from subspace_jax._io import atomic_write_text
    from subspace_jax.eval import calibration, metrics
    from subspace_jax.runner.results import jsonable
    from subspace_jax.serving import report

    model = _load_model(args.model_dir, args.false_alarm_rate)
    if model.thresholds is None:
        raise UsageError(f"{args.model_dir}: the model has no thresholds; refit it with --val-fraction > 0")
    root = args.data_root or os.environ.get(f"SUBSPACE_JAX_{args.dataset.upper()}")
    if not root:
        raise UsageError(f"--data-root: required (or set SUBSPACE_JAX_{args.dataset.upper()})")
    dataset = _open_dataset(args.dataset, root, args.category)
    config = model.config
    test = dataset.load("test", image_size=config.image_size, crop=config.crop, progress=not args.quiet)
    start = time.perf_counter()
    maps, scores = model.score(test.images, args.batch_size, progress=not args.quiet)
    seconds = time.perf_counter() - start
    labels = test.labels.astype(bool)
    result: dict[str, Any] = {"model_dir": args.model_dir, "dataset": args.dataset, "n_test": len(labels)}
    result["n_defective"] = int(labels.sum())
    result["score_seconds_per_image"] = seconds / len(labels)
    if labels.any() and (~labels).any():
        result["image_auroc"] = metrics.image_auroc(scores, labels)
    if test.masks.any():
        result["pixel_auroc"] = metrics.pixel_auroc(maps, test.masks)
        result["pro"] = metrics.pro(maps, test.masks)
        result["pixel_ap"] = metrics.pixel_ap(maps, test.masks)
        result["pixel_f1_max"] = metrics.f1_max(maps, test.masks)
    result |= threshold_metrics(maps, scores, test.masks, labels, model.thresholds)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "metrics.json", json.dumps(jsonable(result), indent=2) + "\n")
    thresholds = model.thresholds
    top = report.TopK(args.report_limit)
    for i in range(len(labels)):

        def build(i: int = i) -> Any:
            heat = calibration.normalize(maps[i], thresholds.pixel)
            mask = (maps[i] > thresholds.pixel) & (scores[i] > thresholds.image)
            picture = report.overlay(test.images[i], heat, mask)
            truth = test.defect_types[i] if labels[i] else "good"
            return report.GalleryItem(
                path=str(test.paths[i]) if test.paths[i] is not None else f"test image {i}",
                score=float(scores[i]),
                normalized_score=float(calibration.normalize(scores[i], thresholds.image)),
                anomalous=bool(scores[i] > thresholds.image),
                image_uri=report.data_uri(report.thumbnail(test.images[i])),
                overlay_uri=report.data_uri(report.thumbnail(picture)),
                note=f"ground truth: {truth}",
            )

        top.offer(float(scores[i]), i, build)
    shown = {k: f"{v:.4f}" if isinstance(v, float) else str(v) for k, v in result.items()}
    report.write_report(
        out / "report.html",
        title=f"subspace-jax evaluation on {args.dataset}",
        items=top.items(),
        scores=scores,
        threshold=thresholds.image,
        summary={
            "model": args.model_dir,
            "dataset": f"{args.dataset} ({root})",
            "test images": str(len(labels)),
        },
        note=CALIBRATION_NOTE,
        nominal_scores=thresholds.nominal_scores,
        metrics=shown,
        defective=labels,
        full_list=None,
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


def build_parser() -> tuple[argparse.ArgumentParser, list[str]]:
    """The parser and the Config field names that ``fit`` takes as flags."""
    from subspace_jax import Config
    from subspace_jax.configs import flags as flags

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
        "seeded fraction out to calibrate the thresholds, and save it. " + CALIBRATION_NOTE,
    )
    fit.add_argument(
        "train", nargs="+", metavar="TRAIN", help="folders (recursive), globs or files of defect-free images"
    )
    fit.add_argument("--out", required=True, metavar="MODEL_DIR", help="checkpoint folder to write")
    fit.add_argument(
        "--config", metavar="FILE", help="JSON Config, or a .py file with get_config(); flags override it"
    )
    fit.add_argument(
        "--val-fraction", type=_fraction, default=0.1, help="fraction held out to calibrate (0: none)"
    )
    fit.add_argument("--false-alarm-rate", type=_rate, default=0.01, help="calibrated false-alarm rate r")
    fit.add_argument("--split-seed", type=int, default=0, help="seed of the hold-out draw")
    fit.add_argument("--batch-size", type=_positive_int, default=8, help="images per backbone call")
    names = flags.add_config_flags(fit, Config, Config(), "model configuration (subspace_jax.Config)")

    predict = sub.add_parser(
        "predict",
        parents=[common],
        formatter_class=formatter,
        help="score images: CSV, masks, overlays and an HTML report",
        description="Score images with a fitted model, streaming them (constant memory): writes "
        "DIR/predictions.csv (path,score,normalized_score,anomalous in input order), DIR/masks/ (binary "
        "PNG at each input's size), DIR/overlays/ and DIR/report.html.",
    )
    predict.add_argument("model_dir", metavar="MODEL_DIR")
    predict.add_argument(
        "inputs", nargs="+", metavar="INPUT", help="folders (recursive), globs or image files"
    )
    predict.add_argument("--out", required=True, metavar="DIR")
    predict.add_argument("--batch-size", type=_positive_int, default=8)
    predict.add_argument(
        "--false-alarm-rate",
        type=_rate,
        default=None,
        help="re-threshold at this rate (default: the calibrated one)",
    )
    predict.add_argument(
        "--report-limit",
        type=_non_negative_int,
        default=200,
        help="highest-scoring images shown in the report",
    )

    export = sub.add_parser(
        "export",
        parents=[common],
        formatter_class=formatter,
        help="write the whole scorer as a jax.export artifact",
        description="Serialize the whole scorer (backbone, bank and Gram matrices inside) with jax.export: "
        "uint8 (B, S, S, 3) in, (maps, scores) out. Run it with "
        "jax.export.deserialize(open(FILE, 'rb').read()).call(images), with only jax and numpy installed.",
    )
    export.add_argument("model_dir", metavar="MODEL_DIR")
    export.add_argument("file", metavar="FILE")
    export.add_argument(
        "--batch-size", type=_positive_int, default=None, help="fixed batch size (default: symbolic)"
    )
    export.add_argument(
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
    evaluate.add_argument("--dataset", required=True, choices=("mvtec", "btad", "mtd", "folder"))
    evaluate.add_argument("--data-root", help="dataset root (default: $SUBSPACE_JAX_<DATASET>)")
    evaluate.add_argument("--category", help="MVTec AD / BTAD category")
    evaluate.add_argument("--out", default="evaluation", metavar="DIR")
    evaluate.add_argument("--batch-size", type=_positive_int, default=8)
    evaluate.add_argument("--false-alarm-rate", type=_rate, default=None, help="re-threshold at this rate")
    evaluate.add_argument("--report-limit", type=_non_negative_int, default=100)
    return parser, names


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser, config_names = build_parser()
    args = parser.parse_args(argv)
    args.debug = getattr(args, "debug", False)
    args.quiet = getattr(args, "quiet", False)
    previous_format = warnings.formatwarning
    if not args.debug:  # warnings as one line each, like the errors
        warnings.formatwarning = lambda message, category, *_, **__: f"{PROG}: warning: {message}\n"
    try:
        if args.command == "fit":
            return cmd_fit(args, config_names)
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


__all__ = ["collect_images", "main", "output_names", "predict_files", "threshold_metrics"]
