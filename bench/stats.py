# SPDX-License-Identifier: MIT
"""Percentiles and growth figures of the benchmark samples."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["Summary", "growth", "percentile", "summarize"]


@dataclass(frozen=True)
class Summary:
    """Percentiles of a sample, in the sample's unit."""

    count: int
    p50: float
    p99: float
    max: float
    mean: float


def percentile(sorted_values: Sequence[float], fraction: float) -> float:
    """The nearest-rank percentile of already sorted values (NaN if none)."""
    if not sorted_values:
        return math.nan
    rank = math.ceil(fraction * len(sorted_values))
    return sorted_values[min(max(rank, 1), len(sorted_values)) - 1]


def summarize(values: Sequence[float]) -> Summary:
    """p50, p99, max and mean of *values*."""
    ordered = sorted(values)
    if not ordered:
        return Summary(0, math.nan, math.nan, math.nan, math.nan)
    return Summary(
        len(ordered),
        percentile(ordered, 0.50),
        percentile(ordered, 0.99),
        ordered[-1],
        statistics.fmean(ordered),
    )


def growth(sizes: Sequence[int], values: Sequence[float]) -> list[float | None]:
    """How each value grew against its size, from one point to the next.

    The exponent ``k`` of ``value ~ size**k`` between neighbouring points:
    1 is linear, below 1 better than linear. ``None`` for the first point
    or where a value is not positive.
    """
    found: list[float | None] = [None]
    for i in range(1, len(sizes)):
        before, after = values[i - 1], values[i]
        if before <= 0 or after <= 0 or sizes[i] == sizes[i - 1]:
            found.append(None)
            continue
        found.append(
            math.log(after / before) / math.log(sizes[i] / sizes[i - 1])
        )
    return found
