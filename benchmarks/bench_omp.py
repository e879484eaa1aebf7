"""Benchmark of the OMP kernels against scikit-learn and against the bare matmul floor.

Image atoms (the paper's setting): B targets, M atoms of dimension d (d = 401,408 is a WRN50 level-2
map at 224 px: 28 x 28 x 512). Timed per (M, k), all in float32, interleaved repeat by repeat so
that every ratio is measured side by side under the same machine load:

* ``jax omp_gram``: one jitted call computing ``alpha = targets @ atoms.T`` and ``||targets||^2``
  and running :func:`subspace_jax.ops.omp.omp_gram` (the Gram matrix is precomputed, as at fit time);
* ``sklearn gram``: numpy ``alpha = targets @ atoms.T`` plus ``sklearn.linear_model.orthogonal_mp_gram``
  given the same Gram matrix;
* ``floor``: the jitted matmul ``targets @ atoms.T`` alone, which any Batch-OMP must pay;
* the OMP stage alone (alpha given) for both, to show where the time goes.

Per-pixel atoms: B = 784 * 16 targets (16 maps of 28 x 28 pixels), M = 180, d = 512, with the plain
:func:`subspace_jax.ops.omp.omp` (``atoms @ residual`` every step) against
``sklearn.linear_model.orthogonal_mp``
and the matmul floor.

Run: ``python benchmarks/bench_omp.py`` (a few minutes on 2 cores; about 2 GB of memory at M = 400).
"""

from __future__ import annotations

import argparse
import shlex
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from sklearn.linear_model import orthogonal_mp, orthogonal_mp_gram
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from subspace_jax.ops.omp import omp, omp_gram  # noqa: E402


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    jax.block_until_ready(fn())
    return time.perf_counter() - start


def interleaved_medians(fns: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Median seconds of each function; one warm-up call each (compilation), then round-robin repeats."""
    for fn in fns.values():
        jax.block_until_ready(fn())
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            times[name].append(timed(fn))
    return {name: statistics.median(values) for name, values in times.items()}


def same_support_fraction(result, sk_coef: np.ndarray) -> float:
    """Fraction of targets whose chosen atom set equals sklearn's (sk_coef: (M, B))."""
    support = np.asarray(result.support)
    same = [
        set(support[b][support[b] >= 0].tolist()) == set(np.flatnonzero(sk_coef[:, b]).tolist())
        for b in range(support.shape[0])
    ]
    return float(np.mean(same))


def sklearn_quiet(fn: Callable[[], np.ndarray]) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # premature-stop notices on random data
        return fn()


def image_atom_rows(args: argparse.Namespace, rng: np.random.Generator) -> list[dict]:
    max_atoms = max(args.atoms)
    targets_np = rng.standard_normal((args.batch, args.dim), dtype=np.float32)
    bank_np = rng.standard_normal((max_atoms, args.dim), dtype=np.float32)
    targets = jnp.asarray(targets_np)
    floor_fn = jax.jit(lambda t, a: t @ a.T)
    rows = []
    cases = [(m, k) for m in args.atoms for k in args.ks]
    for n_atoms in args.atoms:
        atoms_np = bank_np[:n_atoms]
        atoms = jnp.asarray(atoms_np)
        gram_np = atoms_np @ atoms_np.T  # fit time: not timed
        gram = jnp.asarray(gram_np)
        alpha_np = targets_np @ atoms_np.T
        alpha = jnp.asarray(alpha_np)
        for k in args.ks:
            cases.remove((n_atoms, k))
            tqdm.write(f"image atoms: M={n_atoms} k={k} ({len(cases)} cases left)")

            @jax.jit
            def jax_full(t, a, k=k):
                return omp_gram(gram, t @ a.T, k, target_norm_sq=jnp.sum(t * t, axis=1))

            jax_stage = jax.jit(lambda al, k=k: omp_gram(gram, al, k))
            fns = {
                "jax": lambda: jax_full(targets, atoms),
                "sklearn": lambda k=k: sklearn_quiet(
                    lambda: orthogonal_mp_gram(gram_np, (targets_np @ atoms_np.T).T, n_nonzero_coefs=k)
                ),
                "floor": lambda: floor_fn(targets, atoms),
                "numpy matmul": lambda: targets_np @ atoms_np.T,
                "jax stage": lambda: jax_stage(alpha),
                "sklearn stage": lambda k=k: sklearn_quiet(
                    lambda: orthogonal_mp_gram(gram_np, alpha_np.T, n_nonzero_coefs=k)
                ),
            }
            medians = interleaved_medians(fns, args.repeats)
            agreement = same_support_fraction(
                jax_full(targets, atoms),
                sklearn_quiet(lambda: orthogonal_mp_gram(gram_np, alpha_np.T, n_nonzero_coefs=k)),
            )
            rows.append(
                {
                    "case": f"image B={args.batch} M={n_atoms} d={args.dim} k={k}",
                    **medians,
                    "agree": agreement,
                }
            )

    return rows


def pixel_rows(args: argparse.Namespace, rng: np.random.Generator) -> list[dict]:
    batch, n_atoms, dim = args.pixel_batch, args.pixel_atoms, args.pixel_dim
    targets_np = rng.standard_normal((batch, dim), dtype=np.float32)
    atoms_np = rng.standard_normal((n_atoms, dim), dtype=np.float32)
    targets, atoms = jnp.asarray(targets_np), jnp.asarray(atoms_np)
    floor_fn = jax.jit(lambda t, a: t @ a.T)
    rows = []
    for k in args.ks:
        tqdm.write(f"per-pixel atoms: k={k}")
        fns = {
            "jax": lambda k=k: omp(atoms, targets, k),
            "sklearn": lambda k=k: sklearn_quiet(
                lambda: orthogonal_mp(atoms_np.T, targets_np.T, n_nonzero_coefs=k)
            ),
            "floor": lambda: floor_fn(targets, atoms),
            "numpy matmul": lambda: targets_np @ atoms_np.T,
        }
        medians = interleaved_medians(fns, args.pixel_repeats)
        agreement = same_support_fraction(
            omp(atoms, targets, k),
            sklearn_quiet(lambda: orthogonal_mp(atoms_np.T, targets_np.T, n_nonzero_coefs=k)),
        )
        rows.append(
            {"case": f"pixel B={batch} M={n_atoms} d={dim} k={k} (omp)", **medians, "agree": agreement}
        )
    return rows


def format_table(rows: list[dict]) -> str:
    header = (
        f"{'case':<44} {'jax s':>8} {'sklearn s':>10} {'floor s':>8} {'np mm s':>8} "
        f"{'skl/jax':>8} {'jax/floor':>9} {'jax stg s':>10} {'skl stg s':>10} "
        f"{'stg ratio':>9} {'same supp':>9}"
    )
    lines = [header, "-" * len(header)]
    for row in rows:
        stage = (
            f"{row['jax stage']:>10.4f} {row['sklearn stage']:>10.4f} "
            f"{row['sklearn stage'] / row['jax stage']:>9.1f}"
            if "jax stage" in row
            else f"{'-':>10} {'-':>10} {'-':>9}"
        )
        lines.append(
            f"{row['case']:<44} {row['jax']:>8.4f} {row['sklearn']:>10.4f} {row['floor']:>8.4f} "
            f"{row['numpy matmul']:>8.4f} {row['sklearn'] / row['jax']:>8.1f} "
            f"{row['jax'] / row['floor']:>9.2f} "
            f"{stage} {row['agree']:>9.2f}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=256, help="image targets B")
    parser.add_argument("--dim", type=int, default=401_408, help="atom dimension d (WRN50 level 2 at 224 px)")
    parser.add_argument("--atoms", type=int, nargs="+", default=[50, 200, 400], help="memory-bank sizes M")
    parser.add_argument("--ks", type=int, nargs="+", default=[5, 10], help="numbers of atoms k")
    parser.add_argument(
        "--repeats", type=int, default=3, help="timed repeats per image case (after a warm-up)"
    )
    parser.add_argument("--pixel-batch", type=int, default=784 * 16, help="per-pixel targets (0: skip)")
    parser.add_argument("--pixel-atoms", type=int, default=180)
    parser.add_argument("--pixel-dim", type=int, default=512)
    parser.add_argument("--pixel-repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    command = "python " + shlex.join([sys.argv[0], *(sys.argv[1:] if argv is None else argv)])
    print(f"command: {command}")
    print(
        f"jax {jax.__version__} on {jax.devices()[0].platform}; float32; "
        f"medians of {args.repeats} interleaved repeats"
    )
    rng = np.random.default_rng(args.seed)
    rows = image_atom_rows(args, rng)
    if args.pixel_batch:
        rows += pixel_rows(args, rng)
    print()
    print(format_table(rows))
    print(
        "\njax: jitted alpha = targets @ atoms.T (+ ||targets||^2) and omp_gram (image rows) "
        "or omp (pixel rows);"
        "\nsklearn: numpy alpha + orthogonal_mp_gram (image) or orthogonal_mp (pixel); "
        "floor: jitted targets @ atoms.T;"
        "\nnp mm: numpy targets @ atoms.T; stg: the OMP stage alone with alpha given; same supp: fraction of"
        "\ntargets whose atom set equals sklearn's (float32 rounding can flip near-ties)."
    )


if __name__ == "__main__":
    main()
