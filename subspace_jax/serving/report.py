"""Heat-map overlays and a self-contained HTML report (no server, no network, no scripts).

The report shows the images sorted by score (a gallery of the highest-scoring ones, each with its
image, overlay, decision and score), the threshold, and a histogram of all scores against it, drawn
as inline SVG. Thumbnails are embedded as base64 JPEG data URIs; links to full-size overlays and
masks are relative to the report, so the output folder can be moved as a whole. ``TopK`` keeps only
the K highest-scoring gallery items while a prediction streams, so memory does not grow with the
number of images (the scores themselves, 4 bytes each, are kept for the histogram).
"""

from __future__ import annotations

import base64
import dataclasses
import functools
import heapq
import html
import io
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
from PIL import Image

from subspace_jax._io import atomic_write_text


@functools.cache
def _jet_lut() -> np.ndarray:
    """(256, 3) uint8 colours of matplotlib's "jet" colormap (built once)."""
    return (matplotlib.colormaps["jet"](np.linspace(0.0, 1.0, 256))[:, :3] * 255).round().astype(np.uint8)


def mask_outline(mask: np.ndarray) -> np.ndarray:
    """bool (H, W) -> bool (H, W): mask pixels with a 4-neighbour outside the mask (its boundary)."""
    padded = np.pad(mask, 1, mode="constant", constant_values=False)
    interior = padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
    return mask & ~interior


def overlay(
    image: np.ndarray, heat: np.ndarray, mask: np.ndarray | None = None, alpha: float = 0.6
) -> np.ndarray:
    """uint8 (H, W, 3) image blended with a jet heat map; ``heat`` (H, W) in [0, 1] (0.5 = the pixel
    threshold when it comes from ``calibration.normalize``); ``mask`` (H, W) bool is outlined in white.

    The colour's weight grows from 0 at heat 0.4 to ``alpha`` at 0.75, so clearly normal regions show
    the image itself and what is near or above the threshold stands out.
    """
    heat = np.asarray(heat, np.float32)
    index = np.clip(heat * 255.0 + 0.5, 0, 255).astype(np.uint8)
    colours = _jet_lut()[index].astype(np.float32)
    weight = (alpha * np.clip((heat - 0.4) / 0.35, 0.0, 1.0))[..., None]
    out = (1.0 - weight) * image.astype(np.float32) + weight * colours
    out = np.clip(out + 0.5, 0, 255).astype(np.uint8)
    if mask is not None and mask.any():
        out[mask_outline(mask)] = 255
    return out


def thumbnail(image: np.ndarray, max_side: int = 320) -> np.ndarray:
    """uint8 (H, W, 3) shrunk (bilinear, aspect kept) so its longer side is at most ``max_side``."""
    height, width = image.shape[:2]
    scale = max_side / max(height, width)
    if scale >= 1.0:
        return image
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return np.asarray(Image.fromarray(image).resize(size, Image.Resampling.BILINEAR))


def data_uri(image: np.ndarray, quality: int = 85) -> str:
    """A ``data:image/jpeg;base64,...`` URI of a uint8 (H, W, 3) image."""
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=quality)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


@dataclasses.dataclass(frozen=True)
class GalleryItem:
    """One gallery card: ``path`` as given, its score, normalised score and decision, the embedded
    thumbnails, optional relative links (``overlay_href``, ``mask_href``) and a free ``note`` (e.g.
    the ground truth in ``evaluate``)."""

    path: str
    score: float
    normalized_score: float
    anomalous: bool
    image_uri: str
    overlay_uri: str
    overlay_href: str | None = None
    mask_href: str | None = None
    note: str | None = None


class TopK:
    """The ``k`` highest-scoring items of a stream; items are built only when they enter the top."""

    def __init__(self, k: int) -> None:
        if k < 0:
            raise ValueError(f"k: expected an int >= 0, got {k!r}")
        self.k = k
        self._heap: list[tuple[float, int, Any]] = []

    def would_keep(self, score: float) -> bool:
        return self.k > 0 and (len(self._heap) < self.k or score > self._heap[0][0])

    def offer(self, score: float, index: int, build: Callable[[], Any]) -> None:
        """Keep ``build()`` if ``score`` is among the k highest so far (ties: the earlier index stays)."""
        if not self.would_keep(score):
            return
        entry = (float(score), -index, build())
        if len(self._heap) < self.k:
            heapq.heappush(self._heap, entry)
        else:
            heapq.heapreplace(self._heap, entry)

    def items(self) -> list[Any]:
        """Kept items, highest score first (ties in input order)."""
        return [item for _, _, item in sorted(self._heap, key=lambda e: (-e[0], -e[1]))]


def histogram_svg(
    scores: Sequence[float],
    threshold: float,
    *,
    nominal: Sequence[float] | None = None,
    defective: Sequence[bool] | None = None,
    bins: int = 40,
    width: int = 720,
    height: int = 240,
) -> str:
    """Inline SVG: histogram of ``scores`` (bars) with the ``threshold`` as a red line; optional
    ``nominal`` calibration scores drawn as a step outline on the same bins. The y-axis is the share of
    each set's images per bin, so the two shapes compare whatever their sizes (the tooltips give the
    counts). With ``defective`` (ground truth per score), the bars are stacked: defect-free below,
    defective (orange) above."""
    scores = np.asarray(scores, dtype=np.float64)
    values = scores if nominal is None else np.concatenate([scores, np.asarray(nominal, np.float64)])
    low = float(min(values.min(initial=threshold), threshold))
    high = float(max(values.max(initial=threshold), threshold))
    if high <= low:
        high = low + 1.0
    pad = 0.03 * (high - low)
    low, high = low - pad, high + pad
    edges = np.linspace(low, high, bins + 1)
    counts = np.histogram(scores, edges)[0]
    bad_counts = np.zeros_like(counts)
    if defective is not None:
        bad_counts = np.histogram(scores[np.asarray(defective, bool)], edges)[0]
    left, right, top, bottom = 48, 12, 28, 36
    plot_w, plot_h = width - left - right, height - top - bottom
    share = 100.0 / max(len(scores), 1)  # percent of these images per image
    nominal_shares = None
    if nominal is not None and len(nominal):
        nominal_shares = np.histogram(np.asarray(nominal, np.float64), edges)[0] * (100.0 / len(nominal))
    peak = max(
        float(counts.max(initial=0)) * share,
        float(nominal_shares.max()) if nominal_shares is not None else 0.0,
        1e-9,
    )

    def x(value: float) -> float:
        return left + (value - low) / (high - low) * plot_w

    def y(percent: float) -> float:
        return top + plot_h - percent / peak * plot_h

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" aria-label="histogram of image scores">',
        f'<rect x="{left}" y="{top}" width="{plot_w}" height="{plot_h}" fill="#fafafa" stroke="#ccc"/>',
    ]
    bar_w = plot_w / bins
    for i, (count, bad) in enumerate(zip(counts, bad_counts)):
        x0 = x(edges[i])
        for low_count, high_count, colour, what in (
            (0, count - bad, "#4a78b5", "defect-free " if defective is not None else ""),
            (count - bad, count, "#e08a2c", "defective "),
        ):
            if high_count > low_count:
                top_y, bottom_y = y(high_count * share), y(low_count * share)
                parts.append(
                    f'<rect x="{x0 + 0.5:.1f}" y="{top_y:.1f}" width="{max(bar_w - 1, 1):.1f}" '
                    f'height="{bottom_y - top_y:.1f}" fill="{colour}"><title>{edges[i]:.4g} to '
                    f"{edges[i + 1]:.4g}: {high_count - low_count} {what}image(s)</title></rect>"
                )
    if nominal_shares is not None:
        points = []
        for i, percent in enumerate(nominal_shares):
            points += [f"{x(edges[i]):.1f},{y(percent):.1f}", f"{x(edges[i + 1]):.1f},{y(percent):.1f}"]
        parts.append(f'<polyline points="{" ".join(points)}" fill="none" stroke="#2a9d5b" stroke-width="2"/>')
    tx = x(threshold)
    parts.append(
        f'<line x1="{tx:.1f}" y1="{top - 6}" x2="{tx:.1f}" y2="{top + plot_h}" stroke="#d62728" '
        'stroke-width="2" stroke-dasharray="5,3"/>'
    )
    anchor = "end" if tx > left + plot_w * 0.7 else "start"
    shift = -4 if anchor == "end" else 4
    parts.append(
        f'<text x="{tx + shift:.1f}" y="{top - 10}" fill="#d62728" font-size="12" text-anchor="{anchor}">'
        f"threshold {threshold:.4g}</text>"
    )
    for tick in np.linspace(low, high, 6):
        parts.append(
            f'<text x="{x(tick):.1f}" y="{height - bottom + 16}" font-size="11" text-anchor="middle" '
            f'fill="#333">{tick:.3g}</text>'
        )
    parts.append(
        f'<text x="{left + plot_w / 2:.1f}" y="{height - 4}" font-size="12" text-anchor="middle" '
        'fill="#333">image score</text>'
    )
    for tick in (0.0, peak / 2, peak):
        parts.append(
            f'<text x="{left - 6}" y="{y(tick) + 4:.1f}" font-size="11" text-anchor="end" '
            f'fill="#333">{tick:.3g}%</text>'
        )
    parts.append(
        f'<text x="12" y="{top + plot_h / 2:.1f}" font-size="12" text-anchor="middle" fill="#333" '
        f'transform="rotate(-90 12 {top + plot_h / 2:.1f})">share of images</text>'
    )
    parts.append("</svg>")
    return "".join(parts)


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px;color:#222;background:#fff}
h1{font-size:22px;margin:0 0 4px} h2{font-size:17px;margin:22px 0 8px}
.summary{display:flex;flex-wrap:wrap;gap:8px 24px;margin:8px 0 4px;font-size:14px}
.summary b{font-weight:600}
.note{color:#555;font-size:13px;max-width:980px}
table.metrics{border-collapse:collapse;font-size:13px} table.metrics td{padding:2px 12px 2px 0}
.legend{font-size:12px;color:#444}
.legend span{display:inline-block;width:12px;height:12px;margin:0 4px -2px 10px}
.gallery{display:grid;grid-template-columns:repeat(auto-fill,minmax(430px,1fr));gap:12px}
.card{border:3px solid #2a9d5b;border-radius:6px;padding:6px;font-size:12px;background:#fcfcfc}
.card.anomalous{border-color:#d62728}
.card .pics{display:flex;gap:4px}
.card img{width:208px;height:208px;object-fit:contain;background:#eee;display:block;cursor:zoom-in}
#zoom{display:none;position:fixed;inset:0;background:rgba(0,0,0,.85);align-items:center;
justify-content:center;cursor:zoom-out;z-index:10}
#zoom img{max-width:96vw;max-height:92vh;image-rendering:auto}
.badge{display:inline-block;padding:1px 6px;border-radius:3px;color:#fff;font-weight:600;background:#2a9d5b}
.anomalous .badge{background:#d62728}
.path{word-break:break-all;color:#333;margin:4px 0 2px}
.rank{color:#777;float:right}
"""


# Click a thumbnail to see it large; click again (or press Escape) to close. No network, no libraries.
_ZOOM_JS = """
const zoom = document.getElementById('zoom');
document.addEventListener('click', (event) => {
  if (event.target.matches('.pics img')) {
    zoom.querySelector('img').src = event.target.src; zoom.style.display = 'flex';
  } else if (zoom.contains(event.target)) { zoom.style.display = 'none'; }
});
document.addEventListener('keydown', (event) => { if (event.key === 'Escape') zoom.style.display = 'none'; });
"""


def write_report(
    path: str | os.PathLike,
    *,
    title: str,
    items: Sequence[GalleryItem],
    scores: Sequence[float],
    threshold: float,
    summary: Mapping[str, str],
    note: str = "",
    nominal_scores: Sequence[float] | None = None,
    metrics: Mapping[str, str] | None = None,
    defective: Sequence[bool] | None = None,
    full_list: str | None = "predictions.csv",
) -> Path:
    """Write the report to ``path`` atomically; ``items`` are shown in the order given (highest
    score first), ``scores`` are all the scores of the run (for the histogram)."""
    esc = html.escape
    n_total = len(scores)
    rows = "".join(f"<div><b>{esc(k)}:</b> {esc(v)}</div>" for k, v in summary.items())
    cards = []
    for rank, item in enumerate(items, start=1):
        decision = "ANOMALOUS" if item.anomalous else "OK"
        links = []
        if item.overlay_href:
            links.append(f'<a href="{esc(item.overlay_href)}">overlay</a>')
        if item.mask_href:
            links.append(f'<a href="{esc(item.mask_href)}">mask</a>')
        extra = f"<div>{esc(item.note)}</div>" if item.note else ""
        cards.append(
            f'<div class="card{" anomalous" if item.anomalous else ""}">'
            f'<div><span class="badge">{decision}</span> score {item.score:.4g} · normalised '
            f'{item.normalized_score:.3f}<span class="rank">#{rank}</span></div>'
            f'<div class="path">{esc(item.path)}</div>{extra}'
            f'<div class="pics"><img src="{item.image_uri}" alt="image {esc(item.path)}">'
            f'<img src="{item.overlay_uri}" alt="overlay {esc(item.path)}"></div>'
            f"<div>{' · '.join(links)}</div></div>"
        )
    shown = (
        f"all {n_total} images"
        if len(items) == n_total
        else f"the {len(items)} highest-scoring of {n_total} images"
        + (f" (every image is in {full_list})" if full_list else "")
    )
    metric_rows = ""
    if metrics:
        metric_rows = (
            "<h2>Metrics</h2><table class='metrics'>"
            + "".join(f"<tr><td>{esc(k)}</td><td>{esc(v)}</td></tr>" for k, v in metrics.items())
            + "</table>"
        )
    if defective is None:
        legend = '<div class="legend"><span style="background:#4a78b5"></span>these images'
    else:
        legend = (
            '<div class="legend"><span style="background:#4a78b5"></span>defect-free (ground truth)'
            '<span style="background:#e08a2c"></span>defective (ground truth)'
        )
    if nominal_scores is not None:
        legend += '<span style="background:#2a9d5b"></span>the held-out defect-free calibration images'
    legend += '<span style="background:#d62728"></span>threshold</div>'
    svg = histogram_svg(scores, threshold, nominal=nominal_scores, defective=defective)
    page = (
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
        f"<title>{esc(title)}</title><style>{_CSS}</style></head><body>"
        f"<h1>{esc(title)}</h1><div class='summary'>{rows}</div>"
        f"<p class='note'>{esc(note)}</p>{metric_rows}"
        f"<h2>Scores against the threshold</h2>{svg}"
        f"{legend}<h2>Images by score: {esc(shown)}</h2>"
        "<p class='note'>Each card: the input, then the anomaly map over it (jet colours, shown from 0.8 × "
        "the pixel threshold up: green at the pixel threshold, yellow to red above it; the predicted mask "
        "outlined in white). Red border: anomalous. Click a picture to enlarge it.</p>"
        f"<div class='gallery'>{''.join(cards)}</div>"
        "<div id='zoom'><img alt='enlarged picture'></div>"
        f"<script>{_ZOOM_JS}</script></body></html>\n"
    )
    return atomic_write_text(path, page)
