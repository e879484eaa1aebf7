"""Per-class numbers published in the paper (Hotta et al., arXiv 2309.13904), for side-by-side tables.

Transcribed from the paper's tables (our text copy of the paper; see docs/method.md, "Published numbers"):

- Table I: MVTec AD pixel AUROC (%) per category (the first MVTec table in the text; its "Ours" mean,
  97.6, is the pixel-AUROC mean the paper quotes).
- Table II: MVTec AD PRO (%, FPR limit 0.3) per category (the second table; "Ours" mean 93.0). RIAD has
  no row in it.
- Table III: BTAD pixel AUROC / PRO (%) per case.
- Table IV (MTD) and Table V (backbones) were lost in the text copy: nothing is transcribed for them, and
  :func:`published` returns no MTD numbers rather than invent them.

All were obtained with WideResNet-50 at the paper's settings; comparing them with another backbone is a
reference, not a like-for-like comparison. The "Avg." column is kept as printed in :data:`PRINTED_MEANS`.
Every printed mean equals the mean of its row to within rounding (0.15; AE and DFR are whole percents)
except STFPM's: Table I prints 92.1 where its 15 values average 97.1, and Table II prints 92.1 where
they average 92.4 (the paper's own inconsistencies, kept as printed).
"""

from __future__ import annotations

from typing import Mapping

MVTEC_COLUMNS: tuple[str, ...] = (
    "bottle",
    "cable",
    "capsule",
    "carpet",
    "grid",
    "hazelnut",
    "leather",
    "metal_nut",
    "pill",
    "screw",
    "tile",
    "toothbrush",
    "transistor",
    "wood",
    "zipper",
)  # the order of the paper's columns (alphabetical, as in the tables)

BTAD_COLUMNS: tuple[str, ...] = ("01", "02", "03")

# Paper's row label -> this package's method name. "Ours" is the subspace-guided reconstruction.
METHOD_NAMES: dict[str, str] = {
    "Ours": "subspace",
    "PatchCore": "patchcore",
    "SPADE": "spade",
    "PaDiM": "padim",
    "AE": "ae",
    "STFPM": "stfpm",
    "RIAD": "riad",
    "DFR": "dfr",
    "DSR": "dsr",
    "FastFlow": "fastflow",
}

# Table I: MVTec AD pixel AUROC (%), columns in MVTEC_COLUMNS order, then the printed average.
_TABLE_I: dict[str, tuple[float, ...]] = {
    "AE": (93.0, 82.0, 94.0, 87.0, 94.0, 97.0, 78.0, 89.0, 91.0, 96.0, 59.0, 92.0, 90.0, 73.0, 88.0, 87.0),
    "SPADE": (98.4, 97.2, 99.0, 97.5, 93.7, 99.1, 97.6, 98.1, 96.5, 98.9, 87.4, 97.9, 94.1, 88.5, 96.5, 96.0),
    "PaDiM": (98.3, 96.7, 98.5, 99.1, 97.3, 98.2, 99.2, 97.2, 95.7, 98.5, 94.1, 98.8, 98.5, 94.9, 98.5, 97.5),
    "STFPM": (98.8, 95.5, 98.3, 98.8, 99.0, 98.5, 99.3, 97.6, 97.8, 98.3, 97.4, 98.9, 82.5, 97.2, 98.5, 92.1),
    "PatchCore": (
        98.6,
        98.5,
        98.9,
        99.1,
        98.7,
        98.7,
        99.3,
        98.4,
        97.6,
        99.4,
        95.9,
        98.7,
        96.4,
        95.1,
        98.9,
        98.1,
    ),
    "RIAD": (98.4, 84.2, 92.8, 96.3, 98.8, 96.1, 99.4, 92.5, 95.7, 98.8, 89.1, 98.9, 87.7, 85.8, 97.8, 94.2),
    "DFR": (97.0, 92.0, 99.0, 97.0, 98.0, 99.0, 98.0, 93.0, 97.0, 99.0, 87.0, 99.0, 80.0, 93.0, 96.0, 95.0),
    "DSR": (98.7, 97.2, 91.0, 95.8, 99.5, 98.8, 99.4, 93.0, 94.0, 97.9, 98.7, 99.3, 78.0, 91.6, 98.2, 95.4),
    "Ours": (98.6, 97.5, 98.5, 99.2, 95.9, 98.7, 99.5, 97.8, 93.1, 98.4, 94.0, 99.3, 98.5, 95.6, 98.7, 97.6),
}

# Table II: MVTec AD PRO (%), same layout.
_TABLE_II: dict[str, tuple[float, ...]] = {
    "AE": (83.4, 47.8, 86.0, 64.7, 84.9, 91.6, 56.1, 60.3, 83.0, 88.7, 17.5, 78.4, 72.5, 60.5, 66.5, 69.4),
    "SPADE": (95.5, 90.9, 93.7, 94.7, 86.7, 95.4, 97.2, 94.4, 94.6, 96.0, 75.6, 93.5, 87.4, 87.4, 92.6, 91.7),
    "PaDiM": (94.8, 88.8, 93.5, 96.2, 94.6, 92.6, 97.8, 85.6, 92.7, 94.4, 86.0, 93.1, 84.5, 91.1, 95.9, 92.1),
    "STFPM": (95.1, 87.7, 92.2, 95.8, 96.6, 94.3, 98.0, 94.5, 96.5, 93.0, 92.1, 92.2, 69.5, 93.6, 95.2, 92.1),
    "PatchCore": (
        96.1,
        92.6,
        95.5,
        96.6,
        95.9,
        93.9,
        98.9,
        91.3,
        94.1,
        97.9,
        87.4,
        91.4,
        83.5,
        89.6,
        97.1,
        93.5,
    ),
    "DFR": (93.0, 81.0, 97.0, 93.0, 93.0, 97.0, 97.0, 90.0, 96.0, 96.0, 79.0, 93.0, 79.0, 91.0, 90.0, 91.0),
    "DSR": (94.8, 85.3, 82.9, 93.4, 98.4, 92.1, 97.7, 89.8, 92.5, 89.8, 97.0, 93.7, 77.2, 86.4, 94.1, 91.0),
    "Ours": (96.1, 89.2, 93.6, 97.1, 85.7, 95.4, 98.7, 92.7, 88.4, 92.2, 87.6, 93.9, 95.2, 93.6, 95.7, 93.0),
}

# Table III: BTAD (pixel AUROC %, PRO %) for cases 01, 02, 03, then the printed average.
_TABLE_III: dict[str, tuple[tuple[float, float], ...]] = {
    "STFPM": ((96.2, 71.7), (97.0, 45.1), (99.3, 96.4), (97.5, 71.0)),
    "FastFlow": ((97.1, 71.7), (93.6, 63.1), (98.3, 79.5), (96.3, 71.4)),
    "PatchCore": ((97.0, 64.9), (95.8, 47.3), (99.2, 67.7), (97.4, 60.0)),
    "DSR": ((89.1, 61.5), (78.8, 38.5), (94.1, 84.0), (87.3, 61.3)),
    "Ours": ((96.1, 72.4), (94.8, 54.7), (99.2, 96.5), (96.7, 74.5)),
}

TABLE_SOURCES: dict[str, str] = {
    "mvtec": "Tables I (pixel AUROC) and II (PRO) of Hotta et al., WideResNet-50",
    "btad": "Table III of Hotta et al., WideResNet-50",
    "mtd": "Table IV of Hotta et al. (lost in the text copy: no per-class numbers available)",
}


def _build() -> dict[str, dict[str, dict[str, dict[str, float]]]]:
    """dataset -> method -> category -> {"pixel_auroc", "pro"} as fractions (only the metrics printed)."""
    table: dict[str, dict[str, dict[str, dict[str, float]]]] = {"mvtec": {}, "btad": {}, "mtd": {}}
    for label, method in METHOD_NAMES.items():
        per_class: dict[str, dict[str, float]] = {}
        for i, category in enumerate(MVTEC_COLUMNS):
            entry: dict[str, float] = {}
            if label in _TABLE_I:
                entry["pixel_auroc"] = _TABLE_I[label][i] / 100.0
            if label in _TABLE_II:
                entry["pro"] = _TABLE_II[label][i] / 100.0
            if entry:
                per_class[category] = entry
        if per_class:
            table["mvtec"][method] = per_class
        if label in _TABLE_III:
            table["btad"][method] = {
                case: {"pixel_auroc": auroc / 100.0, "pro": pro / 100.0}
                for case, (auroc, pro) in zip(BTAD_COLUMNS, _TABLE_III[label])
            }
    return table


PUBLISHED: dict[str, dict[str, dict[str, dict[str, float]]]] = _build()

# The "Avg." column as printed: dataset -> method -> {"pixel_auroc", "pro"} (fractions, where printed).
PRINTED_MEANS: dict[str, dict[str, dict[str, float]]] = {
    "mvtec": {
        METHOD_NAMES[label]: {
            **({"pixel_auroc": _TABLE_I[label][-1] / 100.0} if label in _TABLE_I else {}),
            **({"pro": _TABLE_II[label][-1] / 100.0} if label in _TABLE_II else {}),
        }
        for label in METHOD_NAMES
        if label in _TABLE_I or label in _TABLE_II
    },
    "btad": {
        METHOD_NAMES[label]: {"pixel_auroc": rows[-1][0] / 100.0, "pro": rows[-1][1] / 100.0}
        for label, rows in _TABLE_III.items()
    },
    "mtd": {},
}


def published(dataset: str, method: str = "subspace") -> Mapping[str, Mapping[str, float]]:
    """The paper's per-category numbers for ``method`` on ``dataset``: category -> {"pixel_auroc", "pro"}.

    Fractions in [0, 1]. Empty when the paper has no such row (every MTD row: Table IV was lost in the
    text copy). Raises ValueError for an unknown dataset.
    """
    if dataset not in PUBLISHED:
        raise ValueError(f"dataset: expected one of {sorted(PUBLISHED)}, got {dataset!r}")
    return PUBLISHED[dataset].get(method, {})
