"""PNG figures of test images: image | ground truth | anomaly map over the image.

Which images: the N best and N worst *defective* test images of a category ranked by per-image pixel
AUROC (how well the map separates that image's defect pixels from its own normal pixels), i.e. ranked
by localisation, the quantity the method is about. Defect-free images and masks covering no or all
pixels have no per-image AUROC and are not ranked. Heat maps share one colour scale per category (the
category's 1st to 99.9th percentile of map values), so brightness means the same across its figures.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from subspace_jax._io import atomic_file
from subspace_jax.eval import metrics


def per_image_pixel_auroc(maps: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """(N,H,W) maps and bool masks -> (N,) per-image pixel AUROC; NaN where a mask is empty or full."""
    out = np.full(maps.shape[0], np.nan)
    for i in range(maps.shape[0]):
        positives = int(masks[i].sum())
        if 0 < positives < masks[i].size:
            out[i] = metrics.pixel_auroc(maps[i][None], masks[i][None])
    return out


def select_best_worst(auroc: np.ndarray, n: int) -> tuple[list[int], list[int]]:
    """Indices of the ``n`` highest and ``n`` lowest finite values (best first, worst first)."""
    valid = np.flatnonzero(np.isfinite(auroc))
    order = valid[np.argsort(-auroc[valid], kind="stable")]
    best = order[:n].tolist()
    worst = order[::-1][:n].tolist()
    return best, worst


def save_figure(
    path: Path,
    image: np.ndarray,
    mask: np.ndarray,
    heat: np.ndarray,
    title: str,
    vmin: float,
    vmax: float,
) -> Path:
    """One 3-panel PNG: image (H,W,3) uint8 | mask (H,W) bool | heat map (H,W) over the image."""
    # A Figure on its own Agg canvas, never pyplot: switching pyplot's backend would break a notebook's
    # inline figures, and pyplot would keep every figure it made until closed.
    fig = Figure(figsize=(9, 3.3))
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 3)
    axes[0].imshow(image)
    axes[0].set_title("image")
    axes[1].imshow(mask, cmap="gray", vmin=0, vmax=1)
    axes[1].set_title("ground truth")
    axes[2].imshow(image)
    shown = axes[2].imshow(heat, cmap="jet", alpha=0.5, vmin=vmin, vmax=vmax)
    axes[2].contour(mask.astype(float), levels=[0.5], colors="white", linewidths=0.8)
    axes[2].set_title("anomaly map")
    fig.colorbar(shown, ax=axes[2], fraction=0.046, pad=0.04)
    for ax in axes:
        ax.set_axis_off()
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    with atomic_file(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    return path


def save_best_worst(
    folder: Path,
    images: np.ndarray,
    masks: np.ndarray,
    maps: np.ndarray,
    names: Sequence[str],
    n: int,
) -> list[Path]:
    """Figures for the ``n`` best and ``n`` worst defective images (module docstring) under ``folder``.

    images (N,H,W,3) uint8, masks (N,H,W) bool, maps (N,H,W) float; ``names`` (N,) label each image in
    titles and file names, e.g. "crack/003.png". Returns the written paths.
    """
    if n <= 0:
        return []
    auroc = per_image_pixel_auroc(maps, masks)
    best, worst = select_best_worst(auroc, n)
    vmin, vmax = (float(v) for v in np.percentile(maps, [1.0, 99.9]))
    written = []
    for kind, indices in (("best", best), ("worst", worst)):
        for rank, i in enumerate(indices, start=1):
            title = f"{kind} {rank}: {names[i]}, per-image pixel AUROC {auroc[i]:.3f}"
            label = "".join(
                ch if ch.isalnum() or ch in "-" else "_" for ch in Path(names[i]).with_suffix("").as_posix()
            )
            target = folder / f"{kind}_{rank:02d}_{label}.png"
            written.append(save_figure(target, images[i], masks[i], maps[i], title, vmin, vmax))
    return written
