"""The statistics of errors in millimetres that every table reports: mean, spread, median, maximum and success
rates (the share within each radius of :data:`SUCCESS_RADII_MM`, as later work on the paper's task reports), and
whether a confidence ranks the errors (Spearman's rank correlation)."""

from __future__ import annotations

import numpy as np

SUCCESS_RADII_MM = (2.0, 2.5, 3.0, 4.0)


def statistics(values: np.ndarray, *, prefix: str) -> dict:
    """Mean, std, median, max and the success rates of the finite ``values`` (mm; NaN: not scored), and how many
    there are, each key starting with ``prefix``; NaN statistics when there are none."""
    values = np.asarray(values, dtype=float)
    values = values[np.isfinite(values)]
    if not len(values):
        return {f"{prefix}{key}": float("nan") for key in _KEYS} | {f"{prefix}count": 0}
    stats = {
        f"{prefix}mean": float(np.mean(values)),
        f"{prefix}std": float(np.std(values)),
        f"{prefix}median": float(np.median(values)),
        f"{prefix}max": float(np.max(values)),
    }
    for radius in SUCCESS_RADII_MM:
        stats[f"{prefix}within_{radius:g}mm"] = float(np.mean(values <= radius))
    return stats | {f"{prefix}count": len(values)}


_KEYS = ("mean", "std", "median", "max", *(f"within_{radius:g}mm" for radius in SUCCESS_RADII_MM))


def spearman(a: np.ndarray, b: np.ndarray) -> float | None:
    """Spearman's rank correlation of ``a`` and ``b``; None with fewer than three values or a constant one."""
    if len(a) < 3 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return None
    return float(np.corrcoef(_ranks(a), _ranks(b))[0, 1])


def _ranks(values: np.ndarray) -> np.ndarray:
    """Ranks from 0, tied values sharing their average rank (so the order of the cases does not matter)."""
    values = np.asarray(values)
    order = np.argsort(values, kind="stable")
    ranks = np.empty(len(values))
    ranks[order] = np.arange(len(values), dtype=float)
    for value in np.unique(values):
        tied = values == value
        ranks[tied] = ranks[tied].mean()
    return ranks
