"""Cutting a sorted sequence into contiguous runs at the least total cost (batch planning)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np


def cheapest_runs(n: int, run_costs: Callable[[int], np.ndarray]) -> list[tuple[int, int]]:
    """(start, end) runs covering 0..n that minimize the summed cost, by exact dynamic programming;
    `run_costs(j)[i]` is the cost of the run i:j, for every i < j."""
    best = np.zeros(n + 1)
    cut = np.zeros(n + 1, dtype=np.int64)
    for j in range(1, n + 1):
        costs = best[:j] + run_costs(j)
        i = int(np.argmin(costs))
        best[j], cut[j] = costs[i], i
    runs, j = [], n
    while j > 0:
        runs.append((int(cut[j]), j))
        j = int(cut[j])
    return runs[::-1]
