"""Stage 3b: the paper's Algorithm 1 (``s1k``) and the ablation selections, all seeded.

Algorithm 1 (s1, appendix), with ``rng = numpy.random.default_rng(seed)``:

1. ``S`` = every question the teacher answered correctly that comes from a high-quality source
   (``keep_sources``: AIME, GPQA), plus every correct question of ``long_trace_sources`` (MATH)
   whose trace is longer than ``long_trace_min_tokens`` (5,600).
2. ``D`` = all domains. Until ``|S| = n``: pick a domain ``d`` uniformly from ``D``; rank the
   remaining questions of ``d`` by trace length, longest first (rank 0, 1, ...); draw one with
   probability proportional to ``2^-rank``; add it to ``S`` (a set: drawing a question already kept
   in step 1 adds nothing); remove it from ``d``; drop ``d`` from ``D`` when it is empty.

Ablations: ``random`` (uniform), ``diverse`` (uniform domain, then uniform within it),
``longest`` (the ``n`` longest traces), ``full`` (every row).

Example:
    >>> from budget_forcing.selection.algorithm import algorithm1
    >>> rows = [{"source": "x", "domain": d, "length": l, "correct": False}
    ...         for d in "ab" for l in range(10)]
    >>> picks = algorithm1(rows, n=4, seed=0, keep_sources=[], long_trace_sources=[], long_trace_min_tokens=0)
    >>> len(picks), len(set(picks))
    (4, 4)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from .config import SelectionConfig
from .io import StageReport

__all__ = ["METHODS", "algorithm1", "in_phase1", "select_indices", "plot_selection"]

METHODS = ("s1k", "random", "diverse", "longest", "full")


def _matches(source: Any, needles: Sequence[str]) -> bool:
    src = str(source or "").lower()
    return any(n.lower() in src for n in needles)


def in_phase1(row: dict[str, Any], config: Any) -> bool:
    """Whether Algorithm 1's first step keeps ``row`` (``config``: a :class:`SelectConfig`)."""
    return _phase1(row, config.keep_sources, config.long_trace_sources, config.long_trace_min_tokens)


def _phase1(row: dict[str, Any], keep: Sequence[str], long: Sequence[str], min_tokens: int) -> bool:
    return bool(row["correct"]) and (
        _matches(row["source"], keep) or (_matches(row["source"], long) and row["length"] > min_tokens)
    )


def _domain_pools(
    rows: Sequence[dict[str, Any]], candidates: Sequence[int]
) -> tuple[list[Any], dict[Any, list[int]]]:
    """Domains in a fixed (sorted) order, each with its row indices sorted longest trace first."""
    pools: dict[Any, list[int]] = {}
    for i in candidates:
        pools.setdefault(rows[i]["domain"], []).append(i)
    order = sorted(pools, key=str)
    for d in order:
        pools[d].sort(key=lambda i: (-rows[i]["length"], i))
    return order, pools


def algorithm1(
    rows: Sequence[dict[str, Any]],
    n: int,
    seed: int,
    keep_sources: Sequence[str],
    long_trace_sources: Sequence[str],
    long_trace_min_tokens: int,
) -> list[int]:
    """Indices into ``rows`` (dicts with ``source``, ``domain``, ``length``, ``correct``) chosen by Algorithm 1,
    in the order they were added."""
    rng = np.random.default_rng(seed)
    chosen: dict[int, None] = {}
    for i, row in enumerate(rows):
        if _phase1(row, keep_sources, long_trace_sources, long_trace_min_tokens):
            chosen[i] = None
    if len(chosen) >= n:
        keep = sorted(rng.choice(len(chosen), size=n, replace=False).tolist())
        phase1 = list(chosen)
        return [phase1[k] for k in keep]
    if len(rows) < n:
        raise ValueError(
            f"Cannot select {n} questions from {len(rows)}; lower `select.n` or use a larger pool."
        )
    domains, pools = _domain_pools(rows, range(len(rows)))
    while len(chosen) < n:
        d = domains[int(rng.integers(len(domains)))]
        pool = pools[d]
        weights = np.exp2(-np.arange(len(pool), dtype=np.float64))
        k = int(rng.choice(len(pool), p=weights / weights.sum()))
        chosen.setdefault(pool.pop(k), None)
        if not pool:
            domains.remove(d)
    return list(chosen)


def select_indices(
    rows: Sequence[dict[str, Any]], method: str, n: int, seed: int, config: SelectionConfig
) -> list[int]:
    """Indices chosen by ``method`` (one of :data:`METHODS`)."""
    if method not in METHODS:
        raise ValueError(f"Unknown selection method {method!r}; use one of {list(METHODS)}.")
    if method == "full":
        return list(range(len(rows)))
    if n < 1:
        raise ValueError(f"`select.n` must be >= 1, got {n}.")
    if method == "s1k":
        sc = config.select
        return algorithm1(rows, n, seed, sc.keep_sources, sc.long_trace_sources, sc.long_trace_min_tokens)
    if len(rows) < n:
        raise ValueError(
            f"Cannot select {n} questions from {len(rows)}; lower `select.n` or use a larger pool."
        )
    rng = np.random.default_rng(seed)
    if method == "random":
        return sorted(rng.choice(len(rows), size=n, replace=False).tolist())
    if method == "longest":
        return sorted(range(len(rows)), key=lambda i: (-rows[i]["length"], i))[:n]
    domains, pools = _domain_pools(rows, range(len(rows)))  # diverse
    chosen = []
    while len(chosen) < n:
        d = domains[int(rng.integers(len(domains)))]
        chosen.append(pools[d].pop(int(rng.integers(len(pools[d])))))
        if not pools[d]:
            domains.remove(d)
    return chosen


def plot_selection(
    path: str,
    pool_rows: Sequence[dict[str, Any]],
    picked: Sequence[int],
    title: str,
    report: StageReport | None = None,
    first_step: set[int] | None = None,
) -> str | None:
    """PNG: domain histogram of the selection (``first_step`` picks stacked apart) and trace-length distribution."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        if report is not None:
            report.warn("matplotlib is not installed: no plot (pip install 'budget-forcing[recipes]').")
        return None
    picked_rows = [pool_rows[i] for i in picked]
    counts: dict[str, int] = {}
    for r in picked_rows:
        counts[str(r["domain"])] = counts.get(str(r["domain"]), 0) + 1
    order = sorted(counts, key=lambda d: (-counts[d], d))
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 4.5))
    first_step = first_step or set()
    early: dict[str, int] = {}
    for i in picked:
        if i in first_step:
            early[str(pool_rows[i]["domain"])] = early.get(str(pool_rows[i]["domain"]), 0) + 1
    heights = [counts[d] - early.get(d, 0) for d in order]
    ax1.bar(range(len(order)), heights, color="tab:blue", label="domain sampling" if early else None)
    if early:
        bottoms = heights
        ax1.bar(range(len(order)), [early.get(d, 0) for d in order], bottom=bottoms, color="tab:orange",
                label="step 1 (correct AIME/GPQA, long MATH)")  # fmt: skip
        ax1.legend(fontsize=8)
    ax1.set_xticks(range(len(order)), order, rotation=90, fontsize=max(4, 9 - len(order) // 15))
    ax1.set_xlabel("domain")
    ax1.set_ylabel("selected questions")
    ax1.set_title(f"{title}: {len(picked_rows)} questions, {len(order)} domains")
    lengths_all = [r["length"] for r in pool_rows if r["length"] is not None]
    lengths_sel = [r["length"] for r in picked_rows if r["length"] is not None]
    if lengths_all:
        bins = np.linspace(0, max(lengths_all) + 1, 40)
        ax2.hist(lengths_all, bins=bins, alpha=0.5, density=True, label=f"candidates ({len(lengths_all)})")
        ax2.hist(lengths_sel, bins=bins, alpha=0.6, density=True, label=f"selected ({len(lengths_sel)})")
    ax2.set_xlabel("trace length (tokens)")
    ax2.set_ylabel("density")
    ax2.legend()
    ax2.set_title("trace-length distribution")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
