"""Files in, decisions out: the prediction pipeline behind ``subspace-jax predict``.

``predict_files(model, paths, out)`` streams image files through a calibrated model (constant memory)
and writes, in ``out``:

- ``predictions.csv``: ``path,score,normalized_score,anomalous``, one row per image in input order;
- ``masks/``: binary PNG masks at each input's own size (``map_to_original``);
- ``overlays/``: the image with its anomaly map and mask outline;
- ``report.html``: the images sorted by score, their overlays and decisions, and a histogram.

``predict_files`` owns ``out``: a run is written into a hidden sibling and swapped in whole at the end,
so a killed run leaves the previous run complete and no stale masks survive a shorter run; a folder it
did not write (``OWNER_FILE`` is its mark) is refused unless ``overwrite``; and it never reads its own
outputs (input images inside ``out`` are refused). Decisions are ``subspace_jax.eval.calibration.decide``:
the one decision rule.
"""

from __future__ import annotations

import concurrent.futures
import csv
import json
import os
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from subspace_jax._io import atomic_directory, atomic_file, atomic_write_text
from subspace_jax.data.images import read_image, resize_image, shown
from subspace_jax.engine.batches import pad_batch
from subspace_jax.eval import calibration
from subspace_jax.ops.execution import DEFAULT_BATCH_SIZE
from subspace_jax.serving import report

__all__ = [
    "CALIBRATION_NOTE",
    "OWNER_FILE",
    "check_output_folder",
    "map_to_original",
    "output_names",
    "predict_files",
]

OWNER_FILE = ".subspace-jax-predictions.json"  # marks a folder predict_files wrote

CALIBRATION_NOTE = (
    "Thresholds were set on defect-free images only: they bound the false-alarm rate on parts like "
    "the calibration images, not the recall of defects."
)


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


def map_to_original(score_map: np.ndarray, config: Any, height: int, width: int) -> np.ndarray:
    """(S, S) map -> (height, width) float32 over the original image: undo the centre crop (the
    cropped-away border gets 0) and resize bilinearly."""
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
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(path) as tmp:
        Image.fromarray(array).save(tmp, format="PNG", compress_level=1)


def _finish_image(
    image: np.ndarray, score_map: np.ndarray, score: float, thresholds: Any, config: Any, name: str, out: Path
) -> tuple[float, bool, str, str]:
    """Write one image's mask and overlay; returns (normalised score, decision, image and overlay
    thumbnails as data URIs)."""
    height, width = image.shape[:2]
    full = map_to_original(score_map, config, height, width)
    decided = calibration.decide(full[None], np.float32([score]), thresholds)
    anomalous, mask = bool(decided.decisions[0]), decided.masks[0]
    picture = report.overlay(image, calibration.normalize(full, thresholds.pixel), mask)
    _save_png(mask.astype(np.uint8) * 255, out / "masks" / name)
    _save_png(picture, out / "overlays" / name)
    return (
        float(decided.normalized_scores[0]),
        anomalous,
        report.data_uri(report.thumbnail(image)),
        report.data_uri(report.thumbnail(picture)),
    )


def _decoded_batches(
    paths: Sequence[Path], batch_size: int, pool: Any
) -> Iterator[tuple[int, list[np.ndarray]]]:
    """(start index, original images) per batch, decoding the next batch while the caller works."""
    pending = None
    for start in range(0, len(paths), batch_size):
        futures = [pool.submit(read_image, p) for p in paths[start : start + batch_size]]
        if pending is not None:
            yield pending[0], [f.result() for f in pending[1]]
        pending = (start, futures)
    if pending is not None:
        yield pending[0], [f.result() for f in pending[1]]


def check_output_folder(out: Path, inputs: Sequence[Path] = (), *, overwrite: bool = False) -> None:
    """ValueError unless predict may write ``out``: absent, empty, written by predict before, or
    ``overwrite``; never a file, and never a folder holding any of the ``inputs``."""
    out = Path(os.path.abspath(out))
    for path in inputs:
        resolved = os.path.abspath(path)
        if resolved == str(out) or resolved.startswith(str(out) + os.sep):
            raise ValueError(
                f"--out {out}: the input {shown(path)} is inside it; predict never writes where it reads "
                "(choose another folder)"
            )
    if not os.path.lexists(out):
        return
    if out.is_symlink() or not out.is_dir():
        raise ValueError(f"--out {out}: exists and is not a folder")
    entries = list(out.iterdir())
    if not entries or (out / OWNER_FILE).is_file() or overwrite:
        return
    raise ValueError(
        f"--out {out}: holds files predict did not write (e.g. {entries[0].name}); pass --overwrite to "
        "replace the whole folder, or choose another one"
    )


def predict_files(
    model: Any,
    paths: Sequence[Path],
    out: Path,
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
    report_limit: int = 200,
    progress: bool = True,
    model_dir: str = "",
    overwrite: bool = False,
) -> dict[str, Any]:
    """Stream ``paths`` through ``model``: predictions.csv, masks/, overlays/ and report.html in ``out``.

    Memory holds one batch of images and maps, the gallery's ``report_limit`` thumbnails and one float
    per image (for the histogram), whatever the number of images. ``out`` is checked first
    (``check_output_folder``) and replaced whole at the end. The report shows each image by its path
    below the inputs' common folder; the CSV keeps the path as given.
    """
    thresholds = calibration.require_thresholds(model)
    out = Path(os.path.abspath(out))
    check_output_folder(out, paths, overwrite=overwrite)
    with atomic_directory(
        out, still_replaceable=lambda p: check_output_folder(p, overwrite=overwrite)
    ) as tmp:
        result = _predict_into(model, thresholds, paths, tmp, batch_size, report_limit, progress, model_dir)
        atomic_write_text(
            tmp / OWNER_FILE,
            json.dumps({"written_by": "subspace-jax predict", "model": model_dir, "images": len(paths)})
            + "\n",
        )
    return result


def _predict_into(
    model: Any,
    thresholds: Any,
    paths: Sequence[Path],
    out: Path,
    batch_size: int,
    report_limit: int,
    progress: bool,
    model_dir: str,
) -> dict[str, Any]:
    config = model.config
    names = output_names(paths)
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
                    [
                        shown(paths[index]),
                        f"{score:.9g}",
                        f"{normalized:.6f}",
                        "true" if anomalous else "false",
                    ]
                )
                top.offer(
                    score,
                    index,
                    # TopK calls the builder at once, so the loop variables are read before they change.
                    lambda: report.GalleryItem(
                        path=names[index].removesuffix(".png") + Path(os.fsdecode(paths[index])).suffix,
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
        "false-alarm rate": thresholds.describe_rate(),
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
