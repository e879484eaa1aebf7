"""One benchmark category: load, features (cached), fit, score, metrics, figures, with timings and memory.

``run_category`` returns the category's entry of ``results.json`` (keys in ``docs/method.md``, "Results
file"). With several processes each one scores its share of the test images (``sharding.process_shares``)
and every process receives every row before the metrics.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import resource
import sys
import time
from pathlib import Path
from typing import Any, Mapping

import jax
import numpy as np

from subspace_jax import sharding
from subspace_jax._io import jsonable
from subspace_jax.data import load_samples
from subspace_jax.eval import metrics
from subspace_jax.ops.execution import default_execution
from subspace_jax.runner import figures
from subspace_jax.runner.evaluation import fit_and_score
from subspace_jax.runner.feature_cache import features_of_images
from subspace_jax.runner.workbench import Workbench

__all__ = ["RunSettings", "config_dict", "peak_memory_mib", "reset_peak_rss", "run_category"]


@dataclasses.dataclass(frozen=True)
class RunSettings:
    """The runner-side settings of one invocation (not part of a method's config)."""

    dataset: str
    data_root: Path
    out_dir: Path
    image_size: int
    crop: int | None
    batch_size: int = 16
    save_maps: int = 0
    feature_cache: Path | None = None
    progress: bool = True
    mesh: Any = None  # jax.sharding.Mesh of --mesh / --distributed, else None (one device)
    writer: bool = True  # process 0: the only one that writes results, figures and caches
    memory_budget_bytes: int | None = None


def config_dict(method: Any, config: Any, settings: Mapping[str, Any], weights_sha256: str) -> dict:
    """What identifies a run's results (stored in results.json and compared on --resume)."""
    return jsonable({"method": method.name, **settings, **config.to_dict(), "weights_sha256": weights_sha256})


def reset_peak_rss() -> None:
    """Reset the kernel's peak-RSS mark (Linux: VmHWM) so the next reading covers one category."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass  # not Linux or not permitted: the reading then covers the whole process so far


def peak_memory_mib() -> dict[str, float | None]:
    """Peak host RSS (MiB) since the last reset, and the accelerator's peak bytes in use (process
    lifetime; None on CPU, where JAX reports no device statistics)."""
    rss = None
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                rss = int(line.split()[1]) / 1024.0
    except OSError:
        pass
    if rss is None:
        scale = 1024.0 * 1024.0 if sys.platform == "darwin" else 1024.0
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / scale
    device = None
    try:
        stats = jax.local_devices()[0].memory_stats()
        if stats and "peak_bytes_in_use" in stats:
            device = stats["peak_bytes_in_use"] / 2**20
    except Exception:  # noqa: BLE001 - statistics are optional on every backend
        device = None
    return {"rss_mib": rss, "device_mib": device}


def run_category(
    spec: Any, method: Any, config: Any, backbone: Any, category: str, settings: RunSettings
) -> dict[str, Any]:
    """Fit and evaluate one category; returns its results entry (the keys of ``results.REQUIRED_KEYS``,
    described in ``docs/method.md``, "Results file", plus extras)."""
    reset_peak_rss()
    dataset = spec.open(settings.data_root, category)
    bench = Workbench(
        dataset,
        spec.name,
        backbone,
        category=category,
        cache_dir=settings.feature_cache,
        image_size=settings.image_size,
        crop=settings.crop,
        batch_size=settings.batch_size,
        progress=settings.progress,
    )
    timings: dict[str, float] = {}
    samples = dataset.samples("test")
    start = time.perf_counter()
    shares = sharding.process_shares(len(samples)) if settings.mesh is not None else None
    if shares is None or len(shares[0]) == 1:
        shares = None
        test = bench.split("test")
    else:  # this process reads only its share of the test images
        test = load_samples(
            [samples[i] for i in shares[1]],
            settings.image_size,
            settings.crop,
            settings.progress,
            desc=f"{category} test (share)",
            allow_missing_masks=getattr(dataset, "allow_missing_masks", False),
        )
    timings["load_test"] = time.perf_counter() - start

    def test_features() -> dict[str, np.ndarray]:
        if shares is None:
            features = bench.features("test")
            timings["backbone_test"] = bench.backbone_seconds["test"]
            return features
        features, timings["backbone_test"] = features_of_images(
            backbone, test.images, settings.batch_size, settings.progress, desc=f"{category} test backbone"
        )
        bench.cache_hits["test"] = False
        return features

    execution = (
        None if settings.memory_budget_bytes is None else default_execution(settings.memory_budget_bytes)
    )
    # The training features go in without a name here, so fit_and_score can drop them before the test
    # features are computed: the two never need to be in memory together.
    model, maps, scores, scored = fit_and_score(
        method,
        config,
        bench.features("train"),
        test_features,
        backbone=backbone,
        batch_size=settings.batch_size,
        progress=settings.progress,
        desc=f"{category} scoring",
        mesh=settings.mesh,
        execution=execution,
        warmup=True,
    )
    timings["load_train"] = bench.load_seconds["train"]
    timings["backbone_train"] = bench.backbone_seconds["train"]
    timings.update(scored)
    n_train = len(bench.samples("train"))

    masks = np.asarray(test.masks, dtype=bool)
    labels = np.asarray(test.labels)
    test_images = np.asarray(test.images) if settings.save_maps > 0 else None
    test_types, test_paths = list(test.defect_types), list(test.paths)
    if shares is not None:  # every process gets every process's rows, in the test set's order
        real = shares[0]
        maps, scores, masks, labels = (sharding.gather_shares(x, real) for x in (maps, scores, masks, labels))
        if test_images is not None:
            test_images = sharding.gather_shares(test_images, real)
        test_types, test_paths = [x.defect_type for x in samples], [x.image_path for x in samples]
    if maps.shape != masks.shape:
        raise ValueError(
            f"category {category!r}: the model returned maps of shape {maps.shape} for masks of shape "
            f"{masks.shape}; the maps must have the masks' size"
        )
    start = time.perf_counter()
    measured = metrics.evaluate(maps, scores, masks, labels)
    timings["metrics"] = time.perf_counter() - start
    entry: dict[str, Any] = {
        **measured,
        "n_train": n_train,
        "n_test": int(maps.shape[0]),
        "fit_seconds": timings["backbone_train"] + timings["fit"],
        "bank_bytes": model.nbytes,
        "score_seconds_per_image": (timings["backbone_test"] + timings["score_total"]) / maps.shape[0],
    }
    if settings.save_maps > 0 and settings.writer:
        start = time.perf_counter()
        written = figures.save_best_worst(
            settings.out_dir / "figures" / category,
            test_images,
            masks,
            maps,
            [f"{kind}/{Path(path).name}" for kind, path in zip(test_types, test_paths)],
            settings.save_maps,
        )
        timings["figures"] = time.perf_counter() - start
        entry["figures"] = [str(p.relative_to(settings.out_dir)) for p in written]
    entry["timings"] = timings
    entry["peak_memory"] = peak_memory_mib()
    entry["features_cached"] = {"train": bench.cache_hits["train"], "test": bench.cache_hits["test"]}
    entry["finished"] = _dt.datetime.now().astimezone().isoformat(timespec="seconds")
    return entry
