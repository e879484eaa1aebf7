"""Issue 14: tune the subspace model on one half of MTD's test set, report on the other.

    python experiments/mtd_tuning.py features --data-root PATH [--cache DIR]
    python experiments/mtd_tuning.py options --data-root PATH [--cache DIR] [--half A] [--out FILE]
    python experiments/mtd_tuning.py modes --data-root PATH [--cache DIR] [--half A] [--out FILE]
    python experiments/mtd_tuning.py frontier --data-root PATH [--cache DIR] [--maps-dir DIR] --out PNG

``features`` runs efficientnet_lite0 once over MTD's training and test images (256 px) with both input
normalisations (the TF builder's (x - 127) / 128, and ImageNet mean/std) and stores the levels as .npy
files. ``options`` scores every option of the issue on half A (``stratified_halves`` of the test set, seed
0, stratified by defect type) from those features and writes one JSON line per option: the four metrics
and the bytes of every array the fitted model holds. Statistics for residual standardisation come from
held-out nominal *training* images (a bank fit on the other training images scores them), never from
test images. ``modes`` scores a bank variant with image atoms and with pixel atoms and adds the two fused
maps, plainly or after z-scoring each with its held-out nominal maps. ``frontier`` plots PRO against
pixel AP of every option row on A beside PatchCore's point.

The variant ``dictionary=M`` (with ``dict_steps``) replaces the training images by M learned atoms
(``Config.dictionary``, ``subspace_jax.dictionary``), compared with ``coreset=M`` (its starting point) at
equal bank bytes. (Until commit c49fbc9 this script also learned the atoms with optax's Adam instead of
least squares, ``dict_update=adam``; both gave the same accuracy on half A, so only the library's
least-squares learning remains, and optax is no dependency.)
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np

from subspace_jax import _io
from subspace_jax.engine import batches as batching
from subspace_jax.ops import compress

KEYS = ("level1", "level2", "level3", "level4", "pooled")
NORMS = ("tf", "imagenet")
SEED = 0


def _backbone(norm: str):
    from subspace_jax import backbones

    return backbones.load("efficientnet_lite0", normalization=norm)


def compute_features(data_root: Path, cache: Path) -> None:
    from subspace_jax.data import MTD, load_samples
    from subspace_jax.runner.features import extract_features

    dataset = MTD(data_root)
    for split in ("train", "test"):
        images = None
        for norm in NORMS:
            folder = cache / norm / split
            if (folder / "pooled.npy").is_file():
                continue
            if images is None:
                loaded = load_samples(dataset.samples(split), 256, None, False)
                images = loaded.images
                (cache / "meta").mkdir(parents=True, exist_ok=True)
                np.save(cache / "meta" / f"{split}_masks.npy", loaded.masks)
                np.save(cache / "meta" / f"{split}_labels.npy", loaded.labels)
                (cache / "meta" / f"{split}_types.json").write_text(json.dumps(list(loaded.defect_types)))
            features, seconds = extract_features(_backbone(norm), images, 16, False)
            folder.mkdir(parents=True, exist_ok=True)
            for key in KEYS:
                np.save(folder / f"{key}.npy", features[key])
            print(f"{norm} {split}: {seconds:.1f} s", flush=True)


def load_features(cache: Path, norm: str, split: str) -> dict[str, np.ndarray]:
    """The cached levels of one normalisation and split (memory-mapped); a cache written before level 1
    was stored has no ``level1``."""
    folder = cache / norm / split
    return {
        key: np.load(folder / f"{key}.npy", mmap_mode="r")
        for key in KEYS
        if (folder / f"{key}.npy").is_file()
    }


# ---------------------------------------------------------------------------------------------
# Bank variants: feature transforms applied to training and test features alike


@dataclasses.dataclass(frozen=True)
class Variant:
    """One bank: input normalisation, feature transforms, levels and pursuit sizes."""

    norm: str = "tf"
    levels: tuple[int, ...] = (2, 3, 4)
    k: int = 5
    lam: int = 50
    aggregate: int = 1
    projection: str = "none"  # "none" | "pca" | "random"
    channels: tuple[tuple[int, int], ...] = ()  # (level, c') pairs; levels not listed keep all channels
    coreset: int = 0  # 0: all images; else k-center on pooled features to this many images
    bank_dtype: str = "float32"
    reconstruction: str = "image"
    radius: int = 1  # pixel atoms: neighbourhood radius in the sampled images' maps
    pixel_k: int = 5  # pixel atoms: atoms per feature vector
    dictionary: int = 0  # 0: training images as atoms; else M learned atoms (``Config.dictionary``)
    dict_steps: int = 5  # ``Config.dictionary_steps``

    def name(self) -> str:
        parts = [self.norm, "L" + "".join(map(str, self.levels)), f"k{self.k}", f"lam{self.lam}"]
        if self.aggregate > 1:
            parts.append(f"agg{self.aggregate}")
        if self.projection != "none":
            parts.append(self.projection + "-" + ",".join(f"{lv}:{c}" for lv, c in self.channels))
        if self.coreset:
            parts.append(f"coreset{self.coreset}")
        if self.bank_dtype != "float32":
            parts.append(self.bank_dtype)
        if self.dictionary:
            parts.append(f"dict{self.dictionary}-modx{self.dict_steps}")
        if self.reconstruction != "image":
            parts.append(self.reconstruction)
            if (self.radius, self.pixel_k) != (1, 5):
                parts.append(f"r{self.radius}k{self.pixel_k}")
        return " ".join(parts)


def transform(variant: Variant, train: dict, others: list[dict]) -> tuple[dict, list[dict], int]:
    """Apply the variant's aggregation and projection; returns (train, others, projection bytes)."""
    keys = [f"level{lv}" for lv in variant.levels]
    train = {k: np.asarray(v) for k, v in train.items() if k in keys or k == "pooled"}
    others = [{k: np.asarray(v) for k, v in o.items() if k in keys or k == "pooled"} for o in others]
    extra = 0
    if variant.aggregate > 1:
        for key in keys:
            train[key] = np.asarray(compress.aggregate(train[key], variant.aggregate))
            for o in others:
                o[key] = np.asarray(compress.aggregate(o[key], variant.aggregate))
    for level, channels in variant.channels:
        key = f"level{level}"
        if variant.projection == "pca":
            proj = compress.pca_projection(train[key], channels)
        else:
            proj = compress.random_projection(train[key].shape[-1], channels, seed=level)
        extra += proj.nbytes
        train[key] = train[key] @ proj
        for o in others:
            o[key] = o[key] @ proj
    return train, others, extra


def model_config(variant: Variant):
    from subspace_jax import Config

    return Config(
        backbone="efficientnet_lite0",
        levels=variant.levels,
        sampling_level="pooled",
        k=variant.k,
        lam=variant.lam,
        bank_dtype=variant.bank_dtype,
        reconstruction=variant.reconstruction,
        radius=variant.radius,
        pixel_k=variant.pixel_k,
        dictionary=variant.dictionary,
        dictionary_steps=variant.dict_steps,
    )


def score_levels(model, features: dict, batch: int = 16) -> tuple[dict, np.ndarray]:
    """Per level residual maps (B, h, w) and the pooled residual norm (B,) of k atoms among the candidates."""
    import jax
    import jax.numpy as jnp

    from subspace_jax.methods.subspace import model as model_lib

    @jax.jit
    def run(model, feats):
        with jax.default_matmul_precision("highest"):
            candidates = model_lib.sample_candidates(model, feats)
            maps = model_lib.reconstruct_levels(model, feats, candidates)
            target = feats["pooled"].astype(jnp.float32)
            _, res = model_lib.image_pursuit(
                model.sampling_bank, model.sampling_gram, target, candidates, model.config
            )
            return maps, jnp.linalg.norm(res, axis=-1)

    n = len(features["pooled"])
    out_maps, out_pooled = {}, []
    for start in range(0, n, batch):
        size = min(batch, n - start)
        chunk = {
            k: batching.pad_batch(np.asarray(v[start : start + batch]), batch) for k, v in features.items()
        }
        maps, pooled = run(model, chunk)
        for key, value in maps.items():
            out_maps.setdefault(key, []).append(np.asarray(value)[:size])
        out_pooled.append(np.asarray(pooled)[:size])
    return {k: np.concatenate(v) for k, v in out_maps.items()}, np.concatenate(out_pooled)


HOLDOUT_EVERY = 10  # every 10th training image scores the statistics of nominal residuals


def level_results(variant: Variant, cache: Path, test_index: np.ndarray) -> dict:
    """Fit the variant on all training images and score the chosen test images; fit it again without
    the held-out training images and score those (nominal statistics). Returns maps, pooled residuals
    and bank bytes."""
    from subspace_jax.methods.subspace.model import fit_features
    from subspace_jax.runner.workbench import bank_bytes

    train = load_features(cache, variant.norm, "train")
    test = {k: np.asarray(v[test_index]) for k, v in load_features(cache, variant.norm, "test").items()}
    n = len(train["pooled"])
    holdout = np.arange(0, n, HOLDOUT_EVERY)
    rest = np.setdiff1d(np.arange(n), holdout)
    train, (test,), proj_bytes = transform(variant, train, [test])
    config = model_config(variant)
    start = time.perf_counter()
    keep = compress.kcenter(train["pooled"], variant.coreset) if variant.coreset else np.arange(n)
    model = fit_features({k: v[np.sort(keep)] for k, v in train.items()}, config)
    test_maps, test_pooled = score_levels(model, test)
    seconds = time.perf_counter() - start
    rest_keep = (
        compress.kcenter(train["pooled"][rest], variant.coreset) if variant.coreset else np.arange(len(rest))
    )
    held_model = fit_features({k: v[rest[np.sort(rest_keep)]] for k, v in train.items()}, config)
    held_maps, held_pooled = score_levels(held_model, {k: v[holdout] for k, v in train.items()})

    def norms(feats, index=slice(None)):
        return {f"level{lv}": np.linalg.norm(feats[f"level{lv}"][index], axis=-1) for lv in variant.levels}

    return {
        "test_norms": norms(test),
        "held_norms": norms(train, holdout),
        "test_maps": test_maps,
        "test_pooled": test_pooled,
        "held_maps": held_maps,
        "held_pooled": held_pooled,
        "bank_bytes": bank_bytes(model) + proj_bytes,
        "seconds": seconds,
    }


# ---------------------------------------------------------------------------------------------
# Map and score post-processing (fusion of the level maps, image scores)


def standardise(maps: dict, held: dict, mode: str) -> dict:
    """Level maps -> (map - mean) / std with nominal statistics per level ("level") or per pixel ("pixel")."""
    if mode == "none":
        return maps
    out = {}
    for key, value in maps.items():
        ref = held[key]
        if mode == "level":
            mean, std = ref.mean(), ref.std()
        else:
            mean, std = ref.mean(axis=0), ref.std(axis=0) + 1e-6 * ref.std()
        out[key] = (value - mean) / std
    return out


def relative_residual(maps: dict, norms: dict) -> dict:
    """Level maps (B, h, w) -> each residual divided by the norm of the feature it reconstructs, at
    that pixel (``norms``: level -> (B, h, w)), so levels and pixels with large features do not dominate."""
    return {key: value / (norms[key] + 1e-6) for key, value in maps.items()}


def offset_relative_residual(maps: dict, norms: dict, held_norms: dict, offset: float) -> dict:
    """Level maps (B, h, w) -> residual / (feature norm + offset x the median feature norm of that level's
    nominal held-out pixels): ``offset`` 0 is ``relative_residual``, a large offset the plain residual up
    to one factor per level; in between, weak features do not blow up their relative residual."""
    return {key: value / (norms[key] + offset * np.median(held_norms[key])) for key, value in maps.items()}


def weight_levels(maps: dict, weights: tuple[float, ...]) -> dict:
    """Level maps -> each multiplied by its weight, levels in ascending order (weights[0] for the lowest)."""
    keys = sorted(maps, key=lambda key: int(key.removeprefix("level")))
    if len(weights) != len(keys):
        raise ValueError(f"weights: expected {len(keys)} (one per level of {keys}), got {weights}")
    return {key: maps[key] * weight for key, weight in zip(keys, weights)}


def fuse(maps: dict, sigma: float = 4.0, size: int = 256) -> np.ndarray:
    """Sum of the bilinearly upsampled level maps, Gaussian-smoothed: (B, size, size)."""
    import jax
    import jax.numpy as jnp

    from subspace_jax.ops.maps import gaussian_blur

    @jax.jit
    def one(parts):
        b = parts[0].shape[0]
        up = [jax.image.resize(p.astype(jnp.float32), (b, size, size), "bilinear") for p in parts]
        return gaussian_blur(sum(up[1:], start=up[0]), sigma)

    keys = sorted(maps)
    n = len(maps[keys[0]])
    return np.concatenate(
        [np.asarray(one([jnp.asarray(maps[k][i : i + 32]) for k in keys])) for i in range(0, n, 32)]
    )


def topk_mean(maps: np.ndarray, fraction: float) -> np.ndarray:
    flat = maps.reshape(len(maps), -1)
    k = max(1, int(round(fraction * flat.shape[1])))
    return np.mean(np.partition(flat, -k, axis=1)[:, -k:], axis=1)


def metrics_row(maps: np.ndarray, scores: np.ndarray, masks: np.ndarray, labels: np.ndarray) -> dict:
    from subspace_jax.eval import metrics

    return {
        "pixel_auroc": metrics.pixel_auroc(maps, masks),
        "pro": metrics.pro(maps, masks),
        "image_auroc": metrics.image_auroc(scores, labels),
        "pixel_ap": metrics.pixel_ap(maps, masks),
    }


def half_indices(cache: Path, half: str) -> np.ndarray:
    from subspace_jax.data.split import stratified_halves

    types = json.loads((cache / "meta" / "test_types.json").read_text())
    a, b = stratified_halves(types, seed=SEED)
    return {"A": a, "B": b, "full": np.arange(len(types))}[half]


FUSIONS = ("none", "level", "pixel")
SCORES = ("max", "top0.1%", "top1%", "pooled", "max+pooled")


def image_scores(
    kind: str, maps: np.ndarray, pooled: np.ndarray, held_maps: np.ndarray, held_pooled
) -> np.ndarray:
    """Image scores of one kind; "max+pooled" adds both after z-scoring with the held-out nominal images."""
    if kind == "max":
        return maps.max(axis=(1, 2))
    if kind.startswith("top"):
        return topk_mean(maps, float(kind[3:-1]) / 100)
    if kind == "pooled":
        return pooled
    held_max = held_maps.max(axis=(1, 2))
    return (maps.max(axis=(1, 2)) - held_max.mean()) / held_max.std() + (
        pooled - held_pooled.mean()
    ) / held_pooled.std()


def evaluate_variant(variant: Variant, cache: Path, half: str, fusions=FUSIONS, scores=SCORES) -> list[dict]:
    """Rows (one per fusion x image score) of one bank variant on one half of the test set."""
    index = half_indices(cache, half)
    masks = np.load(cache / "meta" / "test_masks.npy", mmap_mode="r")[index]
    labels = np.load(cache / "meta" / "test_labels.npy")[index]
    res = level_results(variant, cache, index)
    rows = []
    for fusion in fusions:
        # "none:s8": fusion "none" smoothed with sigma 8 instead of the paper's 4; "blend1@1,2,0.5": the
        # offset relative residual (offset 1) with the levels weighted 1, 2, 0.5 before the sum.
        mode, _, sigma = fusion.partition(":s")
        sigma = float(sigma) if sigma else 4.0
        mode, _, weights = mode.partition("@")
        weights = tuple(float(w) for w in weights.split(",")) if weights else None
        if mode.startswith("blend"):
            offset = float(mode.removeprefix("blend"))
            levels = offset_relative_residual(res["test_maps"], res["test_norms"], res["held_norms"], offset)
            held = offset_relative_residual(res["held_maps"], res["held_norms"], res["held_norms"], offset)
        elif mode == "rel":
            levels = relative_residual(res["test_maps"], res["test_norms"])
            held = relative_residual(res["held_maps"], res["held_norms"])
        else:
            levels = standardise(res["test_maps"], res["held_maps"], mode)
            held = standardise(res["held_maps"], res["held_maps"], mode)
        if weights:
            levels, held = weight_levels(levels, weights), weight_levels(held, weights)
        maps, held = fuse(levels, sigma), fuse(held, sigma)
        pixel = metrics_row(maps, maps.max(axis=(1, 2)), masks, labels)
        for kind in scores:
            s = image_scores(kind, maps, res["test_pooled"], held, res["held_pooled"])
            from subspace_jax.eval import metrics

            row = dict(pixel, image_auroc=metrics.image_auroc(s, labels))
            rows.append(
                {
                    "variant": variant.name(),
                    "fusion": fusion,
                    "score": kind,
                    "half": half,
                    **{k: round(100 * v, 2) for k, v in row.items()},
                    "bank_bytes": res["bank_bytes"],
                    "fit_score_seconds": round(res["seconds"], 1),
                }
            )
    return rows


def combine_modes(maps: list, held: list, mode: str) -> tuple[np.ndarray, np.ndarray]:
    """Fused maps of several reconstruction modes, each (B, S, S), with their held-out nominal maps ->
    their sum (test, held): plain ("sum") or after z-scoring each mode's maps with the mean and std of
    all pixels of its held-out maps ("z"), so neither mode's scale dominates."""
    if mode == "z":
        stats = [(float(h.mean()), float(h.std())) for h in held]
        maps = [(m - mean) / std for m, (mean, std) in zip(maps, stats)]
        held = [(h - mean) / std for h, (mean, std) in zip(held, stats)]
    elif mode != "sum":
        raise ValueError(f"mode: expected 'sum' or 'z', got {mode!r}")
    return sum(maps[1:], start=maps[0]), sum(held[1:], start=held[0])


MODE_FUSIONS = ("sum", "z")


def evaluate_mode_fusion(variant: Variant, cache: Path, half: str, scores=SCORES) -> list[dict]:
    """Rows of the variant's image-atom and pixel-atom maps (each fused over levels by a plain sum) and of
    their combinations (``combine_modes``), one per image score, on one half of the test set. The bank is
    the same for both modes (the reconstruction mode only changes scoring)."""
    from subspace_jax.eval import metrics

    index = half_indices(cache, half)
    masks = np.load(cache / "meta" / "test_masks.npy", mmap_mode="r")[index]
    labels = np.load(cache / "meta" / "test_labels.npy")[index]
    modes = ("image", "pixel")
    results = [level_results(dataclasses.replace(variant, reconstruction=r), cache, index) for r in modes]
    test = [fuse(r["test_maps"]) for r in results]
    held = [fuse(r["held_maps"]) for r in results]
    cases = {"image": (test[0], held[0]), "pixel": (test[1], held[1])}
    for mode in MODE_FUSIONS:
        cases[f"image+pixel:{mode}"] = combine_modes(test, held, mode)
    rows = []
    for name, (maps, held_maps) in cases.items():
        pixel = metrics_row(maps, maps.max(axis=(1, 2)), masks, labels)
        for kind in scores:
            s = image_scores(kind, maps, results[0]["test_pooled"], held_maps, results[0]["held_pooled"])
            row = dict(pixel, image_auroc=metrics.image_auroc(s, labels))
            rows.append(
                {
                    "variant": variant.name(),
                    "fusion": f"none, {name}",
                    "score": kind,
                    "half": half,
                    **{k: round(100 * v, 2) for k, v in row.items()},
                    "bank_bytes": results[0]["bank_bytes"],
                    "fit_score_seconds": round(sum(r["seconds"] for r in results), 1),
                }
            )
    return rows


def parse_variant(text: str) -> Variant:
    """ "norm=imagenet,levels=23,k=10,channels=2:16;3:32,projection=pca" -> Variant."""
    values = {}
    for item in filter(None, text.split(",")):
        key, _, value = item.partition("=")
        if key == "levels":
            values[key] = tuple(int(c) for c in value)
        elif key == "channels":
            values[key] = tuple(tuple(int(x) for x in pair.split(":")) for pair in value.split(";"))
        elif key in (
            "k",
            "lam",
            "aggregate",
            "coreset",
            "radius",
            "pixel_k",
            "dictionary",
            "dict_steps",
            "dict_inner",
        ):
            values[key] = int(value)
        else:
            values[key] = value
    return Variant(**values)


def run_baseline(name: str, cache: Path, out: Path) -> None:
    """PatchCore (1% coreset) or SPADE (levels 2+3, K=50) on the cached features of the whole test set;
    saves maps, scores and bank bytes to ``out/<name>_{maps,scores}.npy`` and ``<name>.json``."""
    from subspace_jax.engine import scorer as scoring
    from subspace_jax.runner import core
    from subspace_jax.runner.workbench import bank_bytes, default_config

    overrides = {"patchcore": {"coreset_ratio": 0.01}, "spade": {"levels": (2, 3)}}[name]
    method = core.resolve_method(name)
    config = default_config(name, "mtd", backbone="efficientnet_lite0", **overrides)
    train = {k: np.asarray(v) for k, v in load_features(cache, "tf", "train").items()}
    test = load_features(cache, "tf", "test")
    start = time.perf_counter()
    model = method.fit_features(train, config, backbone_name="efficientnet_lite0", weights_sha256=None)
    fit_seconds = time.perf_counter() - start
    maps, scores = scoring.score_in_batches(method.scorer, model, test, batch_size=16, progress=False)
    out.mkdir(parents=True, exist_ok=True)
    np.save(out / f"{name}_maps.npy", maps.astype(np.float32))
    np.save(out / f"{name}_scores.npy", scores)
    info = {"config": config.to_dict(), "bank_bytes": bank_bytes(model), "fit_seconds": fit_seconds}
    (out / f"{name}.json").write_text(json.dumps(info, default=str))
    print(name, info, flush=True)


def report(maps: np.ndarray, scores: np.ndarray, cache: Path) -> dict:
    """Metrics (%) of full-test-set maps on the full set, half A, half B, and per defect type of each
    (that type's images with the defect-free images of the same set)."""
    masks = np.load(cache / "meta" / "test_masks.npy", mmap_mode="r")
    labels = np.load(cache / "meta" / "test_labels.npy")
    types = np.asarray(json.loads((cache / "meta" / "test_types.json").read_text()))
    out = {}
    for half in ("full", "A", "B"):
        index = half_indices(cache, half)
        groups = {"all": index}
        for t in sorted(set(types) - {"good"}):
            groups[t] = index[(types[index] == t) | (types[index] == "good")]
        for group, idx in groups.items():
            row = metrics_row(maps[idx], scores[idx], np.asarray(masks[idx]), labels[idx])
            out[f"{half}/{group}"] = {k: round(100 * v, 2) for k, v in row.items()}
    # Pooled pixel AUROC ranks every defect pixel against every defect-free pixel of the set. Per defect
    # type: its share of the defect pixels, and the AUROC of its defect pixels against all defect-free
    # pixels of the full set (the pooled AUROC is the share-weighted mean of these).
    from subspace_jax.eval import metrics

    full = np.asarray(masks)
    normal = np.asarray(maps)[~full]
    total = full.sum()
    for t in sorted(set(types) - {"good"}):
        idx = np.flatnonzero(types == t)
        positive = np.asarray(maps[idx])[full[idx]]
        scores_t = np.concatenate([normal, positive])
        labels_t = np.concatenate([np.zeros(normal.size, bool), np.ones(positive.size, bool)])
        out[f"full/pooled/{t}"] = {
            "defect_pixel_share": round(100 * positive.size / total, 2),
            "pixel_auroc_vs_all_normal": round(100 * metrics.image_auroc(scores_t, labels_t), 2),
        }
    return out


def markdown_table(paths: list[Path]) -> str:
    """The option rows of the JSONL files as one markdown row per (bank variant, fusion): the pixel metrics,
    image AUROC for each image score, and the bank in MB (metrics in %)."""
    scores = ("max", "top0.1%", "top1%", "pooled", "max+pooled")
    header = (
        "| bank variant | fusion | pixel AUROC | PRO | pixel AP | image AUROC: "
        + " / ".join(scores)
        + " | bank MB |"
    )
    groups: dict[tuple[str, str], dict] = {}
    for path in paths:
        for line in path.read_text().splitlines():
            r = json.loads(line)
            group = groups.setdefault((r["variant"], r["fusion"]), {"row": r, "image": {}})
            group["image"].setdefault(r["score"], r["image_auroc"])
    lines = [header, "|---|---|---:|---:|---:|---|---:|"]
    for (variant, fusion), group in groups.items():
        r = group["row"]
        image = " / ".join(f"{group['image'][k]:.2f}" if k in group["image"] else "-" for k in scores)
        lines.append(
            f"| {variant} | {fusion} | {r['pixel_auroc']:.2f} | {r['pro']:.2f} | {r['pixel_ap']:.2f} "
            f"| {image} | {r['bank_bytes'] / 1e6:.1f} |"
        )
    return "\n".join(lines)


BANK_BUDGET = 47e6  # bytes: a tenth of the paper bank (issue 14)


FRONTIER_LABELS = {
    ("tf L234 k20 lam50 pca-2:8,3:32,4:64 bfloat16", "none"): "mtd_default",
    ("tf L234 k5 lam50", "none"): "mtd_paper",
    ("tf L23 k5 lam50 agg3 coreset300 bfloat16 pixel", "none"): "mtd_pixel_ap",
    ("tf L234 k20 lam50 pca-2:8,3:32,4:64 bfloat16 dict256-modx5", "none"): "mtd_dictionary",
}


def frontier_figure(paths: list[Path], reference: dict, path: Path, labels=FRONTIER_LABELS) -> Path:
    """PRO against pixel AP of every (bank variant, fusion) row of the JSONL files (filled: bank within
    ``BANK_BUDGET``), with the reference method's point and the issue's targets (its PRO + 2, its AP);
    ``labels`` names some rows ((variant, fusion) -> text) beside their points."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    points = {}
    for source in paths:
        for line in source.read_text().splitlines():
            r = json.loads(line)
            points[(r["variant"], r["fusion"])] = (r["pro"], r["pixel_ap"], r["bank_bytes"] <= BANK_BUDGET)
    fig = Figure(figsize=(6.5, 4.5))
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    for small, label in ((False, "bank > 47 MB"), (True, "bank <= 47 MB")):
        xy = np.array([(pro, ap) for pro, ap, fits in points.values() if fits == small]).reshape(-1, 2)
        ax.scatter(
            xy[:, 0], xy[:, 1], s=18, label=label, facecolors="C0" if small else "none", edgecolors="C0"
        )
    ax.scatter(
        [reference["pro"]], [reference["pixel_ap"]], marker="*", s=160, c="C3", label=reference["name"]
    )
    ax.axvline(reference["pro"] + 2, color="C3", lw=0.8, ls="--", label="target: PRO > reference + 2")
    ax.axhline(reference["pixel_ap"], color="C3", lw=0.8, ls=":", label="target: pixel AP > reference")
    for key, text in labels.items():
        if key in points:
            ax.annotate(text, points[key][:2], xytext=(4, -10), textcoords="offset points", fontsize=7)
    ax.set_xlabel("PRO (%)")
    ax.set_ylabel("pixel AP (%)")
    ax.set_title("MTD half A: every option (one point per bank variant and fusion)", fontsize=9)
    ax.legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    with _io.atomic_file(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    return path


def run_config(config_file: Path, cache: Path, out: Path, name: str) -> None:
    """Fit the subspace config of ``config_file`` on the cached training features, score the whole test
    set with the library's staged scorer, save maps and scores as ``out/<name>_{maps,scores}.npy``."""
    from subspace_jax.configs import loading as config_files
    from subspace_jax.engine import scorer as scoring
    from subspace_jax.methods.subspace.model import SCORER, fit_features
    from subspace_jax.runner.workbench import bank_bytes

    config = config_files.load(config_file, backbone="efficientnet_lite0")
    train = load_features(cache, "tf", "train")
    test = load_features(cache, "tf", "test")
    model = fit_features(train, config)
    maps, scores = scoring.score_in_batches(SCORER, model, test, batch_size=16, progress=False)
    out.mkdir(parents=True, exist_ok=True)
    np.save(out / f"{name}_maps.npy", maps)
    np.save(out / f"{name}_scores.npy", scores)
    info = {"config": config.to_dict(), "bank_bytes": bank_bytes(model)}
    (out / f"{name}.json").write_text(json.dumps(info))
    print(name, info, flush=True)


def default_cache() -> Path:
    """``$XDG_CACHE_HOME/subspace_jax/mtd_tuning``, else ``~/.cache/subspace_jax/mtd_tuning``."""
    return _io.user_cache_dir() / "mtd_tuning"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "command",
        choices=("features", "options", "modes", "baseline", "report", "table", "frontier", "config"),
    )
    parser.add_argument("--data-root", type=Path, required=True)
    parser.add_argument(
        "--cache", type=Path, default=default_cache(), help="features, rows and maps (default: %(default)s)"
    )
    parser.add_argument(
        "--method", default="patchcore", help="baseline: patchcore | spade; report: maps name"
    )
    parser.add_argument("--config", type=Path, help="config command: a subspace config file")
    parser.add_argument("--maps-dir", type=Path, help="maps and reports (default: CACHE/maps)")
    parser.add_argument("--half", choices=("A", "B", "full"), default="A")
    parser.add_argument("--variant", action="append", default=[], help="e.g. norm=imagenet,aggregate=3")
    parser.add_argument("--fusions", nargs="+", default=list(FUSIONS))
    parser.add_argument("--scores", nargs="+", default=list(SCORES))
    parser.add_argument("--out", type=Path, help="rows or figure (default: CACHE/options.jsonl)")
    args = parser.parse_args(argv)
    args.maps_dir = args.maps_dir or args.cache / "maps"
    args.out = args.out or args.cache / "options.jsonl"
    start = time.perf_counter()
    if args.command == "features":
        compute_features(args.data_root, args.cache)
    elif args.command == "table":
        print(markdown_table(sorted(args.cache.glob("optionsA*.jsonl"))))
    elif args.command == "frontier":
        # PatchCore's half-A metrics come from the ``baseline`` and ``report`` commands' files.
        reference = json.loads((args.maps_dir / "patchcore_report.json").read_text())["A/all"]
        path = frontier_figure(
            sorted(args.cache.glob("optionsA*.jsonl")),
            {"name": "PatchCore (1% coreset)", **reference},
            args.out,
        )
        print(path)
    elif args.command == "config":
        run_config(args.config, args.cache, args.maps_dir, args.method)
    elif args.command == "baseline":
        run_baseline(args.method, args.cache, args.maps_dir)
    elif args.command == "report":
        maps = np.load(args.maps_dir / f"{args.method}_maps.npy", mmap_mode="r")
        scores = np.load(args.maps_dir / f"{args.method}_scores.npy")
        result = report(np.asarray(maps), scores, args.cache)
        (args.maps_dir / f"{args.method}_report.json").write_text(json.dumps(result, indent=1))
        for key, row in result.items():
            print(key, row)
    else:
        for text in args.variant or [""]:
            if args.command == "modes":
                rows = evaluate_mode_fusion(parse_variant(text), args.cache, args.half, args.scores)
            else:
                rows = evaluate_variant(parse_variant(text), args.cache, args.half, args.fusions, args.scores)
            with args.out.open("a") as f:
                for row in rows:
                    f.write(json.dumps(row) + "\n")
                    print(json.dumps(row), flush=True)
    print(f"done in {time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
