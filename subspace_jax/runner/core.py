"""The experiment loop shared by ``experiments/mvtec.py``, ``btad.py`` and ``mtd.py``.

Per category: load the splits, compute (or read cached) backbone features, fit on the training
features, score the test features, compute the metrics, optionally save figures, and rewrite
``results.json`` / ``results.md`` atomically, so an interrupted run keeps every finished category and
``--resume`` continues from there.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as _dt
import functools
import os
import platform
import shlex
import sys
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from subspace_jax.configs import flags as cli
from subspace_jax.configs import loading as config_files
from subspace_jax.runner import features as feature_io
from subspace_jax.runner import figures, results
from subspace_jax.runner.workbench import bank_bytes


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
    """What distinguishes one benchmark script from another; everything else is shared.

    ``open(root, category)`` returns a dataset with ``.samples(split)`` and ``.load(split, ...)``.
    ``configs[method]`` is the config file (``experiments/configs/*.py``) holding that method's
    defaults for this dataset (the paper's per-dataset settings); a method without one starts from
    its config class's defaults.
    """

    name: str
    title: str
    env_var: str
    categories: tuple[str, ...]
    open: Callable[[Path, str], Any]
    configs: Mapping[str, Path] = dataclasses.field(default_factory=dict)
    # Where to look when neither --data-root nor env_var is given (MTD: subspace_jax.data.mtd.find_root,
    # which knows ../shared/data/mtd and the download cache); raises FileNotFoundError saying where it looked.
    find_root: Callable[[], Path] | None = None


def resolve_method(name: str) -> Any:
    """The registry entry (``subspace_jax.methods.Method``) of ``--method name``."""
    from subspace_jax.methods import registry as methods

    try:
        return methods.get(name)
    except ValueError as exc:
        raise ValueError(f"--{exc}") from None


def default_config(spec: DatasetSpec, method: Any) -> Any:
    """The method's config for this dataset: its config file in ``spec.configs``, else the defaults."""
    path = spec.configs.get(method.name)
    if path is None:
        return method.config_cls()
    config = config_files.load(path)
    if not isinstance(config, method.config_cls):
        raise ValueError(f"{path}: expected a {method.config_cls.__name__} for --method {method.name}")
    return config


def config_dict(method: Any, config: Any, settings: Mapping[str, Any], weights_sha256: str) -> dict:
    """What identifies a run's results (stored in results.json and compared on --resume)."""
    return results.jsonable(
        {"method": method.name, **settings, **config.to_dict(), "weights_sha256": weights_sha256}
    )


# --- memory -------------------------------------------------------------------------------------------


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
        import resource

        scale = 1024.0 * 1024.0 if sys.platform == "darwin" else 1024.0
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / scale
    device = None
    try:
        import jax

        stats = jax.local_devices()[0].memory_stats()
        if stats and "peak_bytes_in_use" in stats:
            device = stats["peak_bytes_in_use"] / 2**20
    except Exception:  # noqa: BLE001 - statistics are optional on every backend
        device = None
    return {"rss_mib": rss, "device_mib": device}


# --- one category ---------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class RunSettings:
    """The runner-side settings of one invocation (not part of the model's Config)."""

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


def _features_for(
    split_name: str,
    dataset_obj: Any,
    settings: RunSettings,
    category: str,
    backbone: Any,
    loaded: Any | None = None,
) -> tuple[dict[str, np.ndarray], float, bool, float]:
    """(features, backbone seconds, from the cache?, seconds spent loading images) of one split.

    ``loaded``: the split's images when the caller has them already; otherwise they are read only if
    the cache cannot supply the features.
    """
    cache = feature_io.FeatureCache(settings.feature_cache) if settings.feature_cache else None
    key = feature_io.FeatureKey.of(
        backbone,
        dataset=settings.dataset,
        category=category,
        split=split_name,
        image_size=settings.image_size,
        crop=settings.crop,
    )
    load_seconds = 0.0

    def compute() -> tuple[dict[str, np.ndarray], float]:
        nonlocal load_seconds
        split = loaded
        if split is None:
            start = time.perf_counter()
            split = dataset_obj.load(
                split_name, image_size=settings.image_size, crop=settings.crop, progress=settings.progress
            )
            load_seconds = time.perf_counter() - start
        return feature_io.extract_features(
            backbone,
            split.images,
            settings.batch_size,
            settings.progress,
            desc=f"{category} {split_name} backbone",
        )

    paths = [s.image_path for s in dataset_obj.samples(split_name)]
    got = feature_io.cached_features(cache, key, paths, compute)
    return got.features, got.seconds, got.hit, load_seconds


def _wait_for_arrays(model: Any) -> None:
    """Block until the device arrays a fitted model holds are computed (JAX dispatch is asynchronous)."""
    import jax

    fields = vars(model) if hasattr(model, "__dict__") else {}
    for leaf in jax.tree_util.tree_leaves(fields):
        if isinstance(leaf, jax.Array):
            leaf.block_until_ready()


def run_category(
    spec: DatasetSpec,
    method: Any,
    config: Any,
    backbone: Any,
    category: str,
    settings: RunSettings,
) -> dict[str, Any]:
    """Fit and evaluate one category; returns its results entry (the keys of ``results.REQUIRED_KEYS``,
    described in ``docs/method.md``, "Results file", plus extras)."""
    from subspace_jax.engine import scorer as scoring
    from subspace_jax.eval import metrics

    reset_peak_rss()
    dataset_obj = spec.open(settings.data_root, category)
    timings: dict[str, float] = {}

    start = time.perf_counter()
    shares = _process_shares(len(dataset_obj.samples("test"))) if settings.mesh is not None else None
    if shares is None:
        test = dataset_obj.load(
            "test", image_size=settings.image_size, crop=settings.crop, progress=settings.progress
        )
    else:  # this process reads only its share of the test images
        from subspace_jax.data.loading import load_samples

        test = load_samples(
            [dataset_obj.samples("test")[i] for i in shares[1]],
            settings.image_size,
            settings.crop,
            settings.progress,
            desc=f"{category} test (share)",
            allow_missing_masks=getattr(dataset_obj, "allow_missing_masks", False),
        )
    timings["load_test"] = time.perf_counter() - start

    train_feats, train_backbone_s, train_cached, train_load_s = _features_for(
        "train", dataset_obj, settings, category, backbone
    )
    timings["load_train"] = train_load_s
    timings["backbone_train"] = train_backbone_s
    n_train = int(next(iter(train_feats.values())).shape[0])

    start = time.perf_counter()
    model = method.fit_features(
        train_feats, config, backbone_name=backbone.name, weights_sha256=backbone.weights_sha256
    )
    _wait_for_arrays(model)
    timings["fit"] = time.perf_counter() - start
    del train_feats

    test_feats, test_backbone_s, test_cached, _ = _features_for(
        "test", dataset_obj, settings, category, backbone, test
    )
    timings["backbone_test"] = test_backbone_s

    start = time.perf_counter()
    maps, scores = scoring.score_in_batches(
        method.scorer,
        model,
        test_feats,
        batch_size=settings.batch_size,
        timings=timings,
        progress=settings.progress,
        desc=f"{category} scoring",
        mesh=settings.mesh,
        execution=_execution(settings),
    )
    timings["score_total"] = time.perf_counter() - start  # the stages plus batching and host copies
    del test_feats

    masks = np.asarray(test.masks, dtype=bool)
    labels = np.asarray(test.labels)
    test_images = np.asarray(test.images) if settings.save_maps > 0 else None
    test_types, test_paths = list(test.defect_types), list(test.paths)
    if shares is not None:  # every process gets every process's rows, in the test set's order
        maps, scores, masks, labels = (_gather_shares(x, shares[0]) for x in (maps, scores, masks, labels))
        if test_images is not None:
            test_images = _gather_shares(test_images, shares[0])
        samples = dataset_obj.samples("test")
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
        "fit_seconds": train_backbone_s + timings["fit"],
        "bank_bytes": bank_bytes(model),
        "score_seconds_per_image": (test_backbone_s + timings["score_total"]) / maps.shape[0],
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
    entry["features_cached"] = {"train": train_cached, "test": test_cached}
    entry["finished"] = _dt.datetime.now().astimezone().isoformat(timespec="seconds")
    return entry


def _execution(settings: RunSettings) -> Any:
    if settings.memory_budget_bytes is None:
        return None
    from subspace_jax.ops.execution import default_execution

    return default_execution(settings.memory_budget_bytes)


def _process_shares(n: int) -> tuple[list[int], list[int]] | None:
    """With several processes: (real rows per process, this process's test indices), consecutive equal
    shares, the short ones padded by repeating their last index (every process scores as many batches)."""
    import jax

    count = jax.process_count()
    if count == 1:
        return None
    share = -(-n // count)
    bounds = [(min(p * share, n), min((p + 1) * share, n)) for p in range(count)]
    lo, hi = bounds[jax.process_index()]
    indices = list(range(lo, hi)) or [n - 1]
    return [b - a for a, b in bounds], indices + [indices[-1]] * (share - len(indices))


def _gather_shares(local: np.ndarray, real: list[int]) -> np.ndarray:
    """Concatenate every process's first ``real[p]`` rows of ``local`` (same shape everywhere)."""
    from jax.experimental import multihost_utils

    stacked = np.asarray(multihost_utils.process_allgather(np.asarray(local), tiled=False))
    return np.concatenate([stacked[p, : real[p]] for p in range(len(real))])


# --- the command line -----------------------------------------------------------------------------------


def _method_names() -> tuple[str, ...]:
    from subspace_jax.methods import registry as methods

    return methods.NAMES


def method_and_defaults(spec: DatasetSpec, argv: Sequence[str]) -> tuple[Any, Any]:
    """The method and its starting config from ``--config FILE`` and ``--method`` in ``argv``: the
    file's config (its class names the method), else the dataset's config for ``--method``."""
    from subspace_jax.methods import registry as methods

    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--method", default=None, choices=_method_names())
    pre.add_argument("--config", type=Path, default=None)
    known, _ = pre.parse_known_args(argv)
    if known.config is None:
        method = resolve_method(known.method or "subspace")
        return method, default_config(spec, method)
    config = config_files.load(known.config)
    method = methods.for_config(config)
    if known.method is not None and known.method != method.name:
        raise ValueError(
            f"--method {known.method}: --config {known.config} holds a {method.name} config "
            f"({type(config).__name__}); drop one of them"
        )
    return method, config


def build_parser(spec: DatasetSpec, method: Any, defaults: Any) -> tuple[argparse.ArgumentParser, list[str]]:
    """The full parser for ``spec`` and ``method``: runner flags, then one flag per Config field
    (``defaults`` feeds their help texts)."""
    parser = argparse.ArgumentParser(
        prog=f"experiments/{spec.name}.py",
        description=(
            f"Fit and evaluate on {spec.title}; writes results.json and results.md to --out after every "
            "category, and prints our metrics beside the paper's published numbers."
        ),
    )
    run = parser.add_argument_group("run")
    run.add_argument(
        "--data-root",
        type=Path,
        default=None,
        help=f"dataset folder (default: the environment variable {spec.env_var}"
        + (", else the places subspace_jax.data.mtd.find_root looks)" if spec.find_root else ")"),
    )
    if len(spec.categories) > 1:
        run.add_argument(
            "--categories",
            nargs="+",
            default=list(spec.categories),
            metavar="NAME",
            help=f"categories to run, from: {' '.join(spec.categories)}",
        )
    run.add_argument(
        "--method",
        default="subspace",
        choices=_method_names(),
        help="model family: the paper's subspace-guided reconstruction (default) or a baseline; "
        "the flags below are that family's Config fields",
    )
    run.add_argument(
        "--config",
        type=Path,
        default=None,
        metavar="FILE",
        help="start from the config get_config() in FILE returns (e.g. experiments/configs/mtd_paper.py; "
        "its class sets --method); the Config flags below override its fields",
    )
    run.add_argument(
        "--weights",
        type=Path,
        default=None,
        help="backbone weight file (default: the backbone's own cache or download)",
    )
    run.add_argument(
        "--out", type=Path, default=None, help=f"output folder (default: results/{spec.name}/<timestamp>)"
    )
    run.add_argument(
        "--save-maps",
        type=int,
        default=0,
        metavar="N",
        help="save figures of the N best and N worst defective test images per category, "
        "ranked by per-image pixel AUROC (default: 0, none)",
    )
    run.add_argument(
        "--resume",
        action="store_true",
        help="skip the categories already in --out/results.json (same configuration only)",
    )
    run.add_argument(
        "--feature-cache",
        type=Path,
        default=None,
        metavar="DIR",
        help="store and reuse backbone features under DIR (.npy per level)",
    )
    run.add_argument(
        "--batch-size",
        type=int,
        default=16,
        help="images per backbone forward pass and per scoring call (default: 16)",
    )
    run.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    dev = parser.add_argument_group("devices and hosts (README, 'GPU / TPU / many devices')")
    dev.add_argument(
        "--mesh",
        default=None,
        metavar="DATA,BANK",
        help="score on a DATA x BANK device mesh: test images split over DATA devices, the bank's rows "
        "over BANK (default: one device; with --distributed, every device on the data axis)",
    )
    dev.add_argument(
        "--distributed",
        action="store_true",
        help="join a multi-process job (jax.distributed.initialize; auto-detected on TPU pods and SLURM); "
        "each process reads its share of the test images, process 0 alone writes",
    )
    dev.add_argument("--coordinator", default=None, metavar="HOST:PORT", help="process 0's address")
    dev.add_argument("--num-processes", type=int, default=None, metavar="N")
    dev.add_argument("--process-id", type=int, default=None, metavar="I")
    dev.add_argument(
        "--memory-budget-bytes",
        type=int,
        default=None,
        metavar="BYTES",
        help="transient memory of one vectorised reconstruction step (default: by backend; results "
        "do not depend on it)",
    )
    run.add_argument("--debug", action="store_true", help="let errors through with their Python traceback")
    names = cli.add_config_flags(parser, method.config_cls, defaults, f"{method.name} configuration")
    return parser, names


@functools.lru_cache(maxsize=4)
def load_backbone(name: str, weights: Path | None = None) -> Any:
    """``backbones.load(name, weights)``, kept for the next run in the same process (notebooks, tests)."""
    from subspace_jax import backbones

    return backbones.load(name, weights=weights)


def missing_weights_message(backbone_name: str, error: Exception, weights: Path | None = None) -> str:
    """One line: what went wrong loading the backbone, and what to do about it."""
    from subspace_jax.backbones import TorchFileError, WeightsMismatchError

    if weights is not None and isinstance(error, (TorchFileError, WeightsMismatchError)):
        hint = f"pass a torch.save state dict of {backbone_name}"
        return f"error: --weights {weights}: {_one_line(error)}; {hint}"
    return (
        f"error: cannot load the {backbone_name} backbone: {_one_line(error)}. Put its ImageNet weights "
        "where this message says (or pass --weights FILE), or run offline with the packaged weights: "
        "--backbone efficientnet_lite0"
    )


def _one_line(error: BaseException) -> str:
    text = " ".join(line.strip() for line in str(error).splitlines() if line.strip())
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def main(spec: DatasetSpec, argv: Sequence[str] | None = None) -> int:
    """Run the benchmark ``spec`` with command-line arguments ``argv``; returns the exit status.

    Every mistake ends in a one-line ``error:`` message on stderr and a non-zero status (2 for what the
    user passed, 1 for a run that failed); ``--debug`` lets the exception and its traceback through.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    try:
        return _main(spec, argv, debug)
    except KeyboardInterrupt:
        if debug:
            raise
        print("error: interrupted; finished categories are kept, continue with --resume", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - the CLI's last line of defence: one line, no traceback
        if debug:
            raise
        print(f"error: {_one_line(exc)} (rerun with --debug for the traceback)", file=sys.stderr)
        return 1


def _check_out_dir(out: Path) -> str | None:
    """Why ``out`` cannot be the output folder (an existing file, or below one), else None."""
    for folder in (out, *out.parents):
        if folder.exists():
            return None if folder.is_dir() else f"{folder} is a file, not a folder"
    return None


def _main(spec: DatasetSpec, argv: list[str], debug: bool) -> int:
    try:
        method, defaults = method_and_defaults(spec, argv)
    except ValueError as exc:
        argparse.ArgumentParser(prog=f"experiments/{spec.name}.py").error(str(exc))
    parser, names = build_parser(spec, method, defaults)
    ns = parser.parse_args(argv)
    try:
        config = cli.config_from_namespace(defaults, ns, names)
    except (ValueError, TypeError) as exc:
        parser.error(str(exc))

    data_root = ns.data_root or (Path(os.environ[spec.env_var]) if os.environ.get(spec.env_var) else None)
    if data_root is None and spec.find_root is not None:
        try:
            data_root = spec.find_root()
        except FileNotFoundError as exc:
            parser.error(f"--data-root: not given, and {exc}")
    if data_root is None:
        parser.error(f"--data-root: not given and {spec.env_var} is not set; pass the {spec.title} folder")
    if not data_root.is_dir():
        parser.error(f"--data-root: {data_root} is not a folder")
    categories = list(getattr(ns, "categories", spec.categories))
    unknown = [c for c in categories if c not in spec.categories]
    if unknown:
        parser.error(f"--categories: unknown {unknown}; expected names from {' '.join(spec.categories)}")
    if ns.resume and ns.out is None:
        parser.error("--resume: needs --out, the folder of the run to continue")
    if ns.save_maps < 0:
        parser.error(f"--save-maps: expected a count >= 0, got {ns.save_maps}")
    if ns.batch_size < 1:
        parser.error(f"--batch-size: expected a positive integer, got {ns.batch_size}")
    mesh, writer = None, True
    if ns.distributed or ns.mesh is not None:
        if ns.distributed and ns.feature_cache is not None:
            parser.error("--feature-cache: not supported with --distributed (each process sees a share)")
        try:
            from subspace_jax import sharding

            if ns.distributed:
                sharding.initialize_distributed(ns.coordinator, ns.num_processes, ns.process_id)
            elif (ns.coordinator, ns.num_processes, ns.process_id) != (None, None, None):
                raise ValueError("--coordinator, --num-processes, --process-id: need --distributed")
            import jax

            data, bank = sharding.parse_mesh(ns.mesh or f"{jax.device_count()},1")
            mesh = sharding.make_mesh(data, bank)
            writer = jax.process_index() == 0
        except ValueError as exc:
            parser.error(str(exc))
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    out_dir: Path = ns.out or Path("results") / spec.name / stamp
    problem = _check_out_dir(out_dir)
    if problem:
        parser.error(f"--out: {problem}; pass a new folder or the folder of an earlier run")
    backbone_name, image_size, crop = config.backbone, config.image_size, config.crop

    # Before any work: a backbone without weights stops here, with what to do about it.
    try:
        backbone = load_backbone(backbone_name, ns.weights)
    except (OSError, ValueError, RuntimeError) as exc:
        if debug:
            raise
        print(missing_weights_message(backbone_name, exc, ns.weights), file=sys.stderr)
        return 2

    run_config = config_dict(
        method,
        config,
        {"backbone": backbone_name, "image_size": image_size, "crop": crop},
        backbone.weights_sha256,
    )
    results_path = out_dir / "results.json"
    try:
        # Other processes of a distributed run never write; process 0 may have started this run's
        # results.json already, so only --resume makes them read one.
        if results_path.exists() and (writer or ns.resume):
            if not ns.resume:
                raise results.ResultsError(
                    f"{results_path}: already holds results; pass --resume to continue that run, "
                    "or choose another --out"
                )
            document = results.read(results_path)
            results.check_resumable(document, spec.name, run_config, results_path)
            document.setdefault("run", {}).setdefault("resumed", []).append(_run_info(argv, spec))
        else:
            document = results.new_document(spec.name, run_config, _run_info(argv, spec))
    except results.ResultsError as exc:
        if debug:
            raise
        print(f"error: {_one_line(exc).removeprefix('ResultsError: ')}", file=sys.stderr)
        return 2

    settings = RunSettings(
        dataset=spec.name,
        data_root=data_root,
        out_dir=out_dir,
        image_size=image_size,
        crop=crop,
        batch_size=ns.batch_size,
        save_maps=ns.save_maps,
        feature_cache=ns.feature_cache,
        progress=not ns.no_progress and writer,
        mesh=mesh,
        writer=writer,
        memory_budget_bytes=ns.memory_budget_bytes,
    )
    todo = [c for c in categories if c not in document["categories"]]
    skipped = [c for c in categories if c in document["categories"]]
    if skipped:
        print(f"resuming {out_dir}: skipping finished categories {' '.join(skipped)}")
    if writer:
        out_dir.mkdir(parents=True, exist_ok=True)
        results.write(out_dir, document, method.name)

    from tqdm.auto import tqdm

    for category in tqdm(
        todo, desc=spec.title, unit="category", disable=not settings.progress or len(todo) < 2
    ):
        try:
            entry = run_category(spec, method, config, backbone, category, settings)
        except Exception as exc:  # noqa: BLE001 - reported in one line; --debug shows the traceback
            if debug:
                raise
            print(
                f"error: {spec.title} category {category!r} failed: {_one_line(exc)}; finished "
                f"categories are kept in {results_path}, fix the cause and rerun with --resume --out "
                f"{out_dir}",
                file=sys.stderr,
            )
            return 1
        document["categories"][category] = entry
        if not writer:
            continue
        results.write(out_dir, document, method.name)
        print(
            f"{category}: pixel AUROC {100 * entry['pixel_auroc']:.1f}  PRO {100 * entry['pro']:.1f}  "
            f"fit {entry['fit_seconds']:.1f} s  score {entry['score_seconds_per_image'] * 1000:.0f} ms/image"
        )

    if not writer:
        return 0
    header, rows = results.comparison_rows(document, method.name)
    print()
    print(
        f"{spec.title}, {method.name} with {backbone_name} (metrics in %; paper columns: "
        f"{results.TABLE_SOURCES.get(spec.name, 'none')})"
    )
    print(results.format_table(header, rows))
    print(f"\nwrote {results_path} and {out_dir / 'results.md'}")
    return 0


def _run_info(argv: Sequence[str], spec: DatasetSpec) -> dict[str, Any]:
    import jax

    return {
        "command": shlex.join([f"experiments/{spec.name}.py", *argv]),
        "started": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "jax": jax.__version__,
        "devices": [str(d) for d in jax.devices()],
        "host": platform.machine(),
        "cpu_count": os.cpu_count(),
    }
