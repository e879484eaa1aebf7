"""The benchmark command behind ``experiments/mvtec.py``, ``btad.py`` and ``mtd.py``: flags, resume, output.

``main(dataset, argv)`` parses the runner's flags and one flag per field of the method's config, loads the
backbone (stopping at once, with what to do, when its weights are missing), then runs every category
(``run_category``) and rewrites ``results.json`` / ``results.md`` atomically after each, so an interrupted
run keeps every finished category and ``--resume`` continues from there.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import os
import platform
import shlex
import sys
from pathlib import Path
from typing import Any, Sequence

import jax
from tqdm.auto import tqdm

from subspace_jax import backbones, configs, sharding
from subspace_jax.backbones import TorchFileError, WeightsMismatchError
from subspace_jax.configs import flags
from subspace_jax.data import registry as datasets
from subspace_jax.data.registry import DatasetSpec
from subspace_jax.methods import registry
from subspace_jax.ops.execution import DEFAULT_BATCH_SIZE
from subspace_jax.runner import results
from subspace_jax.runner.evaluation import default_config, default_method, resolve_method
from subspace_jax.runner.run import RunSettings, config_dict, run_category

__all__ = ["build_parser", "main", "method_and_defaults"]


def method_and_defaults(spec: DatasetSpec, argv: Sequence[str]) -> tuple[Any, Any]:
    """The method and its starting config from ``--config NAME|FILE`` and ``--method`` in ``argv``: the
    named or file config (its class names the method), else the dataset's config for ``--method``."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--method", default=None, choices=registry.names())
    pre.add_argument("--config", default=None)
    known, _ = pre.parse_known_args(argv)
    if known.config is None:
        method = default_method(spec.name) if known.method is None else resolve_method(known.method)
        return method, default_config(method, spec.name)
    config = configs.load(known.config)
    method = registry.for_config(config)
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
        default=default_method(spec.name).name,
        choices=registry.names(),
        help="model family: the paper's subspace-guided reconstruction, a baseline or their fusion "
        f"(default here: {default_method(spec.name).name}); the flags below are that family's Config fields",
    )
    run.add_argument(
        "--config",
        default=None,
        metavar="NAME|FILE",
        help=f"start from a packaged config ({', '.join(configs.names())}) or a config file (.py with "
        "get_config(), or JSON); its class sets --method, and the config flags below override its fields",
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
        default=DEFAULT_BATCH_SIZE,
        help=f"images per backbone forward pass and per scoring call (default: {DEFAULT_BATCH_SIZE})",
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
    names = flags.add_config_flags(parser, method.config_cls, defaults, f"{method.name} configuration")
    return parser, names


def missing_weights_message(backbone_name: str, error: Exception, weights: Path | None = None) -> str:
    """One line: what went wrong loading the backbone, and what to do about it."""
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


def main(dataset: str | DatasetSpec, argv: Sequence[str] | None = None) -> int:
    """Run the benchmark ``dataset`` (a name in ``subspace_jax.data.registry`` or its spec) with the
    command-line arguments ``argv``; returns the exit status.

    Every mistake ends in a one-line ``error:`` message on stderr and a non-zero status (2 for what the
    user passed, 1 for a run that failed); ``--debug`` lets the exception and its traceback through.
    """
    spec = datasets.get(dataset) if isinstance(dataset, str) else dataset
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
        config = flags.config_from_namespace(defaults, ns, names)
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
            if ns.distributed:
                sharding.initialize_distributed(ns.coordinator, ns.num_processes, ns.process_id)
            elif (ns.coordinator, ns.num_processes, ns.process_id) != (None, None, None):
                raise ValueError("--coordinator, --num-processes, --process-id: need --distributed")
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
        backbone = backbones.load_cached(backbone_name, ns.weights)
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
    return {
        "command": shlex.join([f"experiments/{spec.name}.py", *argv]),
        "started": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "jax": jax.__version__,
        "devices": [str(d) for d in jax.devices()],
        "host": platform.machine(),
        "cpu_count": os.cpu_count(),
    }
