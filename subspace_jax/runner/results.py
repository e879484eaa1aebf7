"""The results file (``results.json``; its keys are described in ``docs/method.md``, "Results
file") and its Markdown/console tables.

Required per-category keys are exactly those of the schema; the runner adds ``f1_max``, ``timings``
(seconds: ``load_train``, ``load_test``, ``backbone_train``, ``fit``, ``backbone_test``, the scoring
stages — ``sampling``, ``reconstruction``, ``maps`` for the subspace model, ``matching``, ``maps`` for
the baselines — ``score_total``, ``metrics``, ``figures``), ``peak_memory`` (MiB), ``features_cached`` and
``figures`` beside them. ``fit_seconds`` = backbone on the training images + fit;
``score_seconds_per_image`` = (backbone on the test images + scoring) / n_test. Metrics are fractions;
an image AUROC that cannot be computed (one class only) is null.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

from subspace_jax._io import atomic_write_text, jsonable
from subspace_jax.runner.published import PRINTED_MEANS, TABLE_SOURCES, published

SCHEMA_VERSION = 1
REQUIRED_KEYS: tuple[str, ...] = (
    "pixel_auroc",
    "pro",
    "image_auroc",
    "pixel_ap",
    "n_train",
    "n_test",
    "fit_seconds",
    "score_seconds_per_image",
)
METRIC_KEYS: tuple[str, ...] = ("pixel_auroc", "pro", "image_auroc", "pixel_ap", "f1_max")
_MEAN_KEYS: tuple[str, ...] = METRIC_KEYS + ("fit_seconds", "score_seconds_per_image")
_DISPLAY = {"patchcore": "PatchCore", "spade": "SPADE", "padim": "PaDiM"}


class ResultsError(ValueError):
    """A results file that cannot be read or resumed (names the file and what is wrong)."""


def category_means(categories: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """Unweighted mean over categories of each metric and time (categories lacking a value are skipped)."""
    mean: dict[str, Any] = {"n_categories": len(categories)}
    for key in _MEAN_KEYS:
        values = [c[key] for c in categories.values() if isinstance(c.get(key), (int, float))]
        mean[key] = sum(values) / len(values) if values else None
    mean["n_train"] = sum(int(c["n_train"]) for c in categories.values())
    mean["n_test"] = sum(int(c["n_test"]) for c in categories.values())
    return mean


def new_document(dataset: str, config: Mapping[str, Any], run: Mapping[str, Any]) -> dict[str, Any]:
    """An empty results document for ``dataset`` under ``config`` (``run``: command, versions, device)."""
    return {
        "schema_version": SCHEMA_VERSION,
        "dataset": dataset,
        "config": jsonable(config),
        "categories": {},
        "mean": category_means({}),
        "run": jsonable(run),
    }


def read(path: Path) -> dict[str, Any]:
    """Read and check a results file written by :func:`write`; ResultsError naming the file and the
    problem for anything else (a folder, unreadable bytes, not UTF-8 or JSON, the wrong structure)."""
    hint = "move it away or choose another --out"
    if path.is_dir():
        raise ResultsError(f"{path}: is a folder, not a results file; {hint}")
    try:
        document = json.loads(path.read_bytes().decode("utf-8"))
    except OSError as exc:
        raise ResultsError(f"{path}: cannot be read ({exc.strerror or exc}); {hint}") from exc
    except UnicodeDecodeError as exc:
        raise ResultsError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start}); {hint}") from exc
    except json.JSONDecodeError as exc:
        raise ResultsError(f"{path}: not valid JSON ({exc}); {hint}") from exc
    if not isinstance(document, dict):
        raise ResultsError(f"{path}: expected a JSON object, got {type(document).__name__}; {hint}")
    for key in ("dataset", "config", "categories"):
        if key not in document:
            raise ResultsError(f"{path}: expected a results file with a {key!r} entry; it has none")
    expected_types = {"dataset": str, "config": dict, "categories": dict, "run": dict}
    for key, kind in expected_types.items():
        if key in document and not isinstance(document[key], kind):
            raise ResultsError(
                f"{path}: {key!r} must be a JSON {'string' if kind is str else 'object'}, got "
                f"{type(document[key]).__name__}; {hint}"
            )
    if not isinstance(document.get("run", {}).get("resumed", []), list):
        raise ResultsError(f"{path}: 'run.resumed' must be a JSON list; {hint}")
    for name, entry in document["categories"].items():
        if not isinstance(entry, dict):
            raise ResultsError(f"{path}: category {name!r} must be a JSON object, got {type(entry).__name__}")
        missing = [k for k in REQUIRED_KEYS if k not in entry]
        if missing:
            raise ResultsError(f"{path}: category {name!r} lacks {', '.join(missing)}")
    return document


def check_resumable(document: Mapping[str, Any], dataset: str, config: Mapping[str, Any], path: Path) -> None:
    """Refuse to resume a run of another dataset or configuration, naming the differing settings."""
    if document["dataset"] != dataset:
        raise ResultsError(
            f"{path}: holds results for dataset {document['dataset']!r}, not {dataset!r}; "
            "choose another --out"
        )
    stored, requested = document["config"], jsonable(config)
    if stored != requested:
        keys = sorted(set(stored) | set(requested))
        differences = [
            f"{k}: stored {stored.get(k, '<absent>')!r}, requested {requested.get(k, '<absent>')!r}"
            for k in keys
            if stored.get(k, "<absent>") != requested.get(k, "<absent>")
        ]
        raise ResultsError(
            f"{path}: cannot resume, its configuration differs from the one requested ("
            + "; ".join(differences)
            + "). Rerun with the stored settings, or choose another --out."
        )


def write_text(path: Path, text: str) -> Path:
    """Write UTF-8 ``text`` to ``path`` atomically (a temporary sibling renamed over it): for scripts
    that write result tables beside ``results.json``."""
    return atomic_write_text(path, text)


def write(out_dir: Path, document: dict[str, Any], published_method: str) -> None:
    """Recompute the means and write ``results.json`` and ``results.md`` atomically."""
    document["mean"] = category_means(document["categories"])
    atomic_write_text(out_dir / "results.json", json.dumps(jsonable(document), indent=2) + "\n")
    atomic_write_text(out_dir / "results.md", markdown(document, published_method))


def _pct(value: Any) -> str:
    return f"{100.0 * value:.1f}" if isinstance(value, (int, float)) else "-"


def _secs(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, (int, float)) else "-"


def _mean_of(values: list[Any]) -> float | None:
    """The mean of the values, None when any is missing (a paper column without that category)."""
    if not values or any(not isinstance(v, (int, float)) for v in values):
        return None
    return sum(values) / len(values)


def comparison_rows(document: Mapping[str, Any], published_method: str) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the main table: our metrics beside the paper's numbers for the same categories.

    Paper columns: the paper's own method ("subspace"), and ``published_method``'s row when that is a
    baseline the paper also reports (e.g. PatchCore). The last row is the mean over several categories:
    with all of a dataset's categories, beside the paper's printed means; with some of them ("mean of
    N"), beside the mean of the paper's numbers for the same categories; with one, no mean row.
    """
    dataset = document["dataset"]
    references = ["subspace"] + ([published_method] if published_method != "subspace" else [])
    references = [r for r in references if published(dataset, r)]
    header = ["category", "pixel AUROC", "PRO", "image AUROC", "pixel AP", "F1-max"]
    for ref in references:
        label = "paper" if ref == "subspace" else f"{_DISPLAY.get(ref, ref)} (paper)"
        header += [f"{label} AUROC", f"{label} PRO"]
    header += ["n train", "n test", "fit s", "score s/img"]
    rows = []
    for name, entry in document["categories"].items():
        row = [name] + [_pct(entry.get(k)) for k in METRIC_KEYS]
        for ref in references:
            numbers = published(dataset, ref).get(name, {})
            row += [_pct(numbers.get("pixel_auroc")), _pct(numbers.get("pro"))]
        row += [
            str(entry["n_train"]),
            str(entry["n_test"]),
            _secs(entry["fit_seconds"]),
            _secs(entry["score_seconds_per_image"]),
        ]
        rows.append(row)
    names = list(document["categories"])
    if len(names) > 1:  # one category's mean is that category
        mean = category_means(document["categories"])
        every = set(names) == set(published(dataset, "subspace")) if published(dataset, "subspace") else False
        row = ["mean" if every else f"mean of {len(names)}"] + [_pct(mean.get(k)) for k in METRIC_KEYS]
        for ref in references:
            if every:  # the paper's own printed mean of all its categories
                printed = PRINTED_MEANS.get(dataset, {}).get(ref, {})
                row += [_pct(printed.get("pixel_auroc")), _pct(printed.get("pro"))]
                continue
            numbers = [published(dataset, ref).get(name, {}) for name in names]
            row += [_pct(_mean_of([n.get(key) for n in numbers])) for key in ("pixel_auroc", "pro")]
        row += [
            str(mean["n_train"]),
            str(mean["n_test"]),
            _secs(mean["fit_seconds"]),
            _secs(mean["score_seconds_per_image"]),
        ]
        rows.append(row)
    return header, rows


def timing_rows(document: Mapping[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Per-stage seconds and peak memory per category."""
    stages: list[str] = []
    for entry in document["categories"].values():
        for stage in entry.get("timings", {}):
            if stage not in stages:
                stages.append(stage)
    header = (
        ["category"] + [f"{s} s" for s in stages] + ["peak RSS MiB", "peak device MiB", "cached features"]
    )
    rows = []
    for name, entry in document["categories"].items():
        timings = entry.get("timings", {})
        memory = entry.get("peak_memory", {})
        cached = entry.get("features_cached", {})
        rows.append(
            [name]
            + [_secs(timings.get(s)) for s in stages]
            + [
                _secs(memory.get("rss_mib")),
                _secs(memory.get("device_mib")),
                ", ".join(k for k, v in cached.items() if v) or "none",
            ]
        )
    return header, rows


def _markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def format_table(header: list[str], rows: list[list[str]]) -> str:
    """A plain fixed-width table for the console."""
    widths = [max(len(str(x)) for x in column) for column in zip(header, *rows)]

    def line(cells: list[str]) -> str:  # first column left-aligned, numbers right-aligned
        return "  ".join(
            str(c).rjust(w) if i else str(c).ljust(w) for i, (c, w) in enumerate(zip(cells, widths))
        )

    return "\n".join([line(header), line(["-" * w for w in widths])] + [line(r) for r in rows])


def markdown(document: Mapping[str, Any], published_method: str) -> str:
    """``results.md``: the comparison table, timings, configuration and command."""
    dataset = document["dataset"]
    config = document["config"]
    run = document.get("run", {})
    header, rows = comparison_rows(document, published_method)
    t_header, t_rows = timing_rows(document)
    parts = [
        f"# {dataset}: {config.get('method', '?')} with {config.get('backbone', '?')}",
        "",
        "Metrics in %. Paper columns: " + TABLE_SOURCES.get(dataset, "none") + "; with another backbone "
        "they are a reference, not a like-for-like comparison.",
        "",
        _markdown_table(header, rows),
        "",
        "## Time per stage and peak memory",
        "",
        "Seconds per stage for the whole category. Backbone seconds of cached features are those measured "
        "when the features were computed; the first scoring batch includes JIT compilation. Peak RSS is the "
        "process's high-water mark during the category; the device peak is over the whole process.",
        "",
        _markdown_table(t_header, t_rows),
        "",
        "## Configuration",
        "",
        "```json",
        json.dumps(config, indent=1),
        "```",
    ]
    if run.get("command"):
        parts += ["", "## Command", "", "```bash", run["command"], "```"]
    return "\n".join(parts) + "\n"
