"""Quality/difficulty filters and Algorithm 1: exact drops, exact N, seeded, domain-balanced, long-trace-biased."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from datasets import Dataset
from selection_helpers import rows_of

from budget_forcing.selection.algorithm import algorithm1, select_indices
from budget_forcing.selection.config import SelectionConfig, config_from_dict
from budget_forcing.selection.filters import apply_filters
from budget_forcing.selection.io import save_table
from budget_forcing.selection.pipeline import load_config, run_filter, run_select
from budget_forcing.selection.synthetic import make_pool


def _rows(sizes: dict[str, int], seed: int = 0, source: str = "x") -> list[dict]:
    rng = np.random.default_rng(seed)
    return [
        {"source": source, "domain": d, "length": int(rng.integers(1, 10_000)), "correct": False}
        for d, k in sizes.items()
        for _ in range(k)
    ]


def _s1k(rows, n, seed, **kw):
    params = {
        "keep_sources": ["aime", "gpqa"],
        "long_trace_sources": ["openaimath"],
        "long_trace_min_tokens": 5600,
    }
    return algorithm1(rows, n, seed, **{**params, **kw})


def test_filters_drop_exactly_the_planted_rows_with_reasons(tmp_path: Path) -> None:
    pool = make_pool(1500, seed=21)
    rng = np.random.default_rng(0)
    n = len(pool.rows)
    solved = {i for i in range(n) if rng.random() < 0.3}
    missing = {int(i) for i in rng.choice(n, size=40, replace=False)}
    features = {
        "row_id": list(range(n)),
        "attempt_a": ["x"] * n,
        "correct_a": [i in solved and i % 2 == 0 for i in range(n)],
        "correct_b": [None if i in missing else (i in solved and i % 2 == 1) for i in range(n)],
        "teacher_correct": [True] * n,
        "domain": [json.loads(r["metadata"])["domain"] for r in pool.rows],
        "trace_tokens": [len(r["thinking_trajectories"][0].split()) for r in pool.rows],
        "feature_errors": [
            ["correct_b: judge call failed: HTTP 500"] if i in missing else [] for i in range(n)
        ],
    }
    data = Dataset.from_list(pool.rows)
    for k, v in features.items():
        data = data.add_column(k, v)
    save_table(data, tmp_path / "featurized.parquet")
    result = run_filter(load_config(None, {"output_dir": str(tmp_path)}))
    report = json.loads(Path(result.report_path).read_text())
    dropped = {d["id"]: (d["reason"], d["detail"]) for d in report["dropped"]}

    expected = {i: ("missing_feature", "correct_b: judge call failed: HTTP 500") for i in missing}
    expected |= {i: (f"format_{name}", "") for i, name in pool.truth["format"].items() if i not in expected}
    for i in sorted(solved - set(expected)):
        expected[i] = ("solved_by_base_model", "a" if i % 2 == 0 else "b")
    assert dropped == expected
    aime_asy = [
        i for i, r in enumerate(pool.rows) if r["question"].startswith("[asy]") and "AIME" in r["source_type"]
    ]
    assert aime_asy and all(
        not dropped.get(i, ("",))[0].startswith("format") for i in aime_asy
    )  # fine for AIME
    assert [r["row_id"] for r in rows_of(result.output)] == [i for i in range(n) if i not in expected]
    quality = [r["row_id"] for r in rows_of(tmp_path / "quality.parquet")]
    assert quality == [i for i in range(n) if i not in expected or expected[i][0] == "solved_by_base_model"]
    assert [s["rows_out"] for s in report["steps"]] == [n - len(missing), len(quality), report["rows_out"]]


def test_filter_needs_features() -> None:
    data = Dataset.from_dict({"row_id": [0], "question": ["q"], "source_type": ["s"]})
    with pytest.raises(ValueError, match="run `featurize` first"):
        apply_filters(data, SelectionConfig())


def test_algorithm1_exact_n_seeded_and_phase1_first() -> None:
    rows = _rows({"05": 300, "11": 300, "60": 300})
    for i in range(0, 60, 3):
        rows[i]["source"], rows[i]["correct"] = "qq8933/AIME_1983_2024", True
    rows[1]["source"], rows[1]["correct"] = "Idavidrein/gpqa", True
    rows[2]["source"], rows[2]["correct"] = "qq8933/AIME_1983_2024", False  # wrong: not kept in phase 1
    rows[4].update(source="qfq/openaimath/Algebra", correct=True, length=6000)
    rows[5].update(source="qfq/openaimath/Algebra", correct=True, length=5000)  # not "very long"
    a = _s1k(rows, 100, seed=7)
    assert len(a) == len(set(a)) == 100
    assert a == _s1k(rows, 100, seed=7)
    assert a != _s1k(rows, 100, seed=8)
    phase1 = {*range(0, 60, 3), 1, 4}
    assert set(a[: len(phase1)]) == phase1  # added first
    # more phase-1 rows than n: a seeded subset of them
    few = _s1k(rows, 10, seed=3)
    assert len(few) == 10 and set(few) <= phase1 and few == _s1k(rows, 10, seed=3)


def test_algorithm1_is_domain_balanced_whatever_the_domain_sizes() -> None:
    sizes = {"05": 1000, "11": 400, "26": 200, "51": 100, "60": 80}
    rows = _rows(sizes, seed=1)
    counts = Counter(rows[i]["domain"] for i in _s1k(rows, 300, seed=0))
    assert sum(counts.values()) == 300
    assert all(35 <= counts[d] <= 85 for d in sizes), counts  # uniform over domains: 60 each
    random_counts = Counter(
        rows[i]["domain"] for i in select_indices(rows, "random", 300, 0, SelectionConfig())
    )
    assert random_counts["05"] > 120 and random_counts["60"] < 25  # proportional to size instead
    # an exhausted domain is dropped: all of its questions are taken, the rest is shared by the others
    small = _rows({"05": 3, "11": 500, "60": 500}, seed=2)
    counts = Counter(small[i]["domain"] for i in _s1k(small, 200, seed=0))
    assert counts["05"] == 3 and abs(counts["11"] - counts["60"]) < 50


def test_algorithm1_picks_rank_r_with_probability_2_to_minus_r() -> None:
    rows = _rows({"11": 12}, seed=3)
    order = sorted(range(12), key=lambda i: -rows[i]["length"])
    rank_of = {i: r for r, i in enumerate(order)}
    trials = 4000
    ranks = Counter(rank_of[_s1k(rows, 1, seed=s)[0]] for s in range(trials))
    expected = np.exp2(-np.arange(12)) / np.exp2(-np.arange(12)).sum()
    observed = np.array([ranks[r] for r in range(12)]) / trials
    assert np.all(
        np.abs(observed[:4] - expected[:4]) < 4 * np.sqrt(expected[:4] * (1 - expected[:4]) / trials)
    )
    assert observed[6:].sum() < 0.03
    # a second pick is again 2^-rank among the *remaining* questions: the runner-up of what is left
    second = Counter(tuple(rank_of[i] for i in _s1k(rows, 2, seed=s)) for s in range(trials))
    p_01 = second[(0, 1)] / trials  # expected 1/2 * 1/2
    p_10 = second[(1, 0)] / trials  # expected 1/4 * 1/2
    assert abs(p_01 - 0.25) < 0.04 and abs(p_10 - 0.125) < 0.03


def test_algorithm1_prefers_long_traces_on_a_large_pool() -> None:
    rows = _rows({d: 400 for d in ("05", "11", "12", "26", "51")}, seed=4)
    picked = _s1k(rows, 100, seed=0)
    by_domain = {}
    for i in picked:
        by_domain.setdefault(rows[i]["domain"], []).append(i)
    for d, chosen in by_domain.items():
        ranked = sorted((i for i, r in enumerate(rows) if r["domain"] == d), key=lambda i: -rows[i]["length"])
        ranks = sorted(ranked.index(i) for i in chosen)
        # k picks from a domain land in its top ranks: 2^-rank leaves no room for the long tail
        assert max(ranks) < len(chosen) + 8, (d, ranks)
    lengths = np.array([r["length"] for r in rows])
    assert np.mean(lengths[picked]) > np.quantile(lengths, 0.85)


def test_ablations() -> None:
    rows = _rows({"05": 600, "11": 100, "60": 100}, seed=5)
    cfg = SelectionConfig()
    longest = select_indices(rows, "longest", 50, 0, cfg)
    assert sorted(rows[i]["length"] for i in longest) == sorted(r["length"] for r in rows)[-50:]
    diverse = select_indices(rows, "diverse", 150, 0, cfg)
    counts = Counter(rows[i]["domain"] for i in diverse)
    assert len(set(diverse)) == 150 and all(30 <= c <= 70 for c in counts.values()), counts
    lengths = np.array([r["length"] for r in rows])
    assert abs(np.mean(lengths[diverse]) - np.mean(lengths)) < 1000  # length-agnostic
    rnd = select_indices(rows, "random", 80, 1, cfg)
    assert len(set(rnd)) == 80 and rnd == select_indices(rows, "random", 80, 1, cfg)
    assert select_indices(rows, "full", 10, 0, cfg) == list(range(len(rows)))
    with pytest.raises(ValueError, match="Cannot select 900"):
        select_indices(rows, "s1k", 900, 0, cfg)
    with pytest.raises(ValueError, match="Unknown selection method"):
        select_indices(rows, "best", 10, 0, cfg)


def test_run_select_writes_selection_report_and_plot(tmp_path: Path) -> None:
    pool = make_pool(600, seed=9, planted=0.0)
    data = Dataset.from_list(pool.rows)
    data = data.add_column("row_id", list(range(len(pool.rows))))
    data = data.add_column("domain", [json.loads(r["metadata"])["domain"] for r in pool.rows])
    data = data.add_column("trace_tokens", [len(r["thinking_trajectories"][0].split()) for r in pool.rows])
    data = data.add_column("teacher_correct", ["boxed" in r["attempt"] for r in pool.rows])
    save_table(data, tmp_path / "filtered.parquet")
    config = config_from_dict(
        {"output_dir": str(tmp_path), "seed": 5, "select": {"n": 120, "long_trace_min_tokens": 250}}
    )
    result = run_select(config)
    selected = rows_of(result.output)
    assert len(selected) == 120 and len({r["row_id"] for r in selected}) == 120
    report = json.loads(Path(result.report_path).read_text())
    assert report["rows_out"] == 120 and len(report["dropped"]) == 480
    assert {d["reason"] for d in report["dropped"]} == {"not_selected"}
    assert sum(report["info"]["domains"].values()) == 120
    png = Path(report["info"]["plot"])
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    again = run_select(config)
    assert [r["row_id"] for r in rows_of(again.output)] == [r["row_id"] for r in selected]


def test_select_without_teacher_grades_warns_and_samples_domains(tmp_path: Path) -> None:
    pool = make_pool(200, seed=2, planted=0.0)
    data = Dataset.from_list(pool.rows).add_column("row_id", list(range(200)))
    data = data.add_column("domain", [json.loads(r["metadata"])["domain"] for r in pool.rows])
    data = data.add_column("trace_tokens", [len(r["thinking_trajectories"][0].split()) for r in pool.rows])
    save_table(data, tmp_path / "filtered.parquet")
    result = run_select(config_from_dict({"output_dir": str(tmp_path), "select": {"n": 30, "plot": False}}))
    assert len(rows_of(result.output)) == 30
    assert result.report.info["phase1_kept"] == 0 and "step 1 kept nothing" in result.report.warnings[0]
