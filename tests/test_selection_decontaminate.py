"""Decontamination and dedup: exactly the planted contaminants and duplicates go, each with its reason."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from procs import run
from selection_helpers import REPO, rows_of, write_eval_sets, write_jsonl

from budget_forcing.selection.config import DecontaminateConfig
from budget_forcing.selection.decontaminate import decontaminate
from budget_forcing.selection.pipeline import load_config, run_decontaminate
from budget_forcing.selection.synthetic import make_pool
from budget_forcing.selection.text import ngram_hashes, normalize


@pytest.fixture(scope="module")
def pool():
    return make_pool(3000, seed=11)


def _run(tmp_path: Path, pool, **overrides):
    for i, row in enumerate(pool.rows):
        row["row_id"] = i
    write_jsonl(tmp_path / "pool.jsonl", pool.rows)
    eval_files = write_eval_sets(tmp_path / "eval", pool.eval_sets)
    config = load_config(
        None,
        {
            "output_dir": str(tmp_path / "out"),
            "pool": str(tmp_path / "pool.jsonl"),
            "decontaminate.eval_files": eval_files,
            **overrides,
        },
    )
    return run_decontaminate(config)


def test_normalisation_and_ngrams() -> None:
    assert normalize("A\tb\n\n C ") == "a b c"
    assert ngram_hashes("one two three", 8) == ngram_hashes("ONE  two\nthree", 8)
    assert len(ngram_hashes(" ".join(map(str, range(20))), 8)) == 13
    assert ngram_hashes("", 8) == set()


def test_planted_contaminants_and_duplicates_are_removed_and_nothing_else(tmp_path: Path, pool) -> None:
    result = _run(tmp_path, pool)
    expected = {
        **{i: "contaminated" for i in pool.truth["contaminated"]},
        **{i: "duplicate_exact" for i in pool.truth["duplicate_exact"]},
        **{i: "duplicate_cross_source" for i in pool.truth["duplicate_cross_source"]},
    }
    assert all(len(pool.truth[k]) > 30 for k in ("contaminated", "duplicate_exact", "duplicate_cross_source"))
    report = json.loads(Path(result.report_path).read_text())
    dropped = {d["id"]: d["reason"] for d in report["dropped"]}
    assert dropped == expected
    assert len(report["dropped"]) == len(expected)  # each dropped row once
    kept = [r["row_id"] for r in rows_of(result.output)]
    assert kept == [i for i in range(len(pool.rows)) if i not in expected]  # order kept too
    assert report["rows_in"] == 3000 and report["rows_out"] == 3000 - len(expected)
    # details name the evaluation set / the kept original
    for d in report["dropped"]:
        if d["reason"] == "contaminated":
            assert d["detail"] == pool.truth["contaminated"][d["id"]]
        elif d["reason"] == "duplicate_exact":
            assert d["detail"] == f"same as {pool.truth['duplicate_exact'][d['id']]}"
        else:
            assert f"of {pool.truth['duplicate_cross_source'][d['id']]} (" in d["detail"]
    steps = {s["name"]: s for s in report["steps"]}
    assert steps["decontaminate_eval"]["dropped"] == {"contaminated": len(pool.truth["contaminated"])}
    assert report["info"]["eval_sets"] == {name: len(qs) for name, qs in pool.eval_sets.items()}
    assert "3000 rows in" in (Path(result.report_path).with_suffix(".txt")).read_text()


def test_same_source_near_duplicates_are_kept_and_threshold_applies() -> None:
    from datasets import Dataset

    def q(*parts: tuple[str, int]) -> str:
        return " ".join(f"{p}{i}" for p, k in parts for i in range(k))

    questions = [
        q(("w", 40)),  # source a
        q(("w", 30), ("x", 10)),  # source a, near-duplicate of row 0: same source, kept
        q(("w", 20), ("z", 20)),  # source b, shares 13 of its 33 8-grams with source a: kept
        q(("w", 30), ("y", 10)),  # source b, shares 23 of 33 with source a: dropped at overlap 0.5
    ]
    data = Dataset.from_dict(
        {"row_id": [0, 1, 2, 3], "question": questions, "source_type": ["a", "a", "b", "b"]}
    )
    kept, report = decontaminate(data, DecontaminateConfig(eval_files=[]), {})
    assert kept == [0, 1, 2]
    assert report.dropped == [
        {
            "id": 3,
            "step": "dedup_cross_source",
            "reason": "duplicate_cross_source",
            "detail": "23/33 n-grams of 0 (a)",
        }
    ]
    assert report.warnings and "NOT decontaminated" in report.warnings[0]
    kept, _ = decontaminate(data, DecontaminateConfig(eval_files=[], cross_source_overlap=0.9), {})
    assert kept == [0, 1, 2, 3]


def test_missing_default_eval_file_warns_but_explicit_one_fails(tmp_path: Path, pool) -> None:
    small = make_pool(50, seed=2, planted=0.0)
    write_jsonl(tmp_path / "pool.jsonl", small.rows)
    config = load_config(
        None,
        {
            "output_dir": str(tmp_path / "out"),
            "pool": str(tmp_path / "pool.jsonl"),
            "decontaminate.eval_files": ["nope/aime24.jsonl"],
        },
    )
    result = run_decontaminate(config)
    assert any("nope/aime24.jsonl not found" in w for w in result.report.warnings)
    assert result.report.rows_out == 50
    config.decontaminate.extra_eval_files = ["nope/mine.jsonl"]
    with pytest.raises(FileNotFoundError, match="--eval_files"):
        run_decontaminate(config)
    config.decontaminate.extra_eval_files = []
    config.decontaminate.require_eval_sets = True
    with pytest.raises(FileNotFoundError, match="NOT decontaminated"):
        run_decontaminate(config)


def test_eval_file_without_text_column_is_a_clear_error(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "pool.jsonl", make_pool(20, seed=1, planted=0.0).rows)
    write_jsonl(tmp_path / "bad.jsonl", [{"prompt": "x"}])
    config = load_config(
        None,
        {
            "output_dir": str(tmp_path),
            "pool": str(tmp_path / "pool.jsonl"),
            "decontaminate.extra_eval_files": [str(tmp_path / "bad.jsonl")],
        },
    )
    with pytest.raises(ValueError, match="eval_text_columns"):
        run_decontaminate(config)


def test_cli_decontaminate(tmp_path: Path, pool) -> None:
    import sys

    small = make_pool(300, seed=4)
    write_jsonl(tmp_path / "pool.jsonl", small.rows)
    eval_files = write_eval_sets(tmp_path / "eval", small.eval_sets)
    cmd = [
        sys.executable,
        str(REPO / "recipes/select_s1k.py"),
        "decontaminate",
        "--output_dir", str(tmp_path / "out"),
        "--pool", str(tmp_path / "pool.jsonl"),
        "--decontaminate.eval_files", "[]",
        "--eval_files", *eval_files,
    ]  # fmt: skip
    done = run(cmd, timeout=120)
    report = json.loads((tmp_path / "out/reports/decontaminate.json").read_text())
    planted = sum(len(small.truth[k]) for k in ("contaminated", "duplicate_exact", "duplicate_cross_source"))
    assert report["rows_out"] == 300 - planted and "[decontaminate] 300 rows in" in done.stdout


def test_eval_sets_from_globs_and_unavailable_hub_ids(tmp_path: Path) -> None:
    from budget_forcing.selection.decontaminate import load_eval_sets
    from budget_forcing.selection.io import StageReport

    write_jsonl(tmp_path / "tasks/aime.jsonl", [{"problem": "Find x."}, {"problem": "Find y."}])
    write_jsonl(tmp_path / "tasks/gpqa.jsonl", [{"question": "Which particle?"}])
    report = StageReport("decontaminate", rows_in=0)
    sets = load_eval_sets(
        [str(tmp_path / "tasks/*.jsonl"), "someone/unavailable-set:main@test"],
        ["problem", "question"],
        report=report,
    )
    assert sets == {"aime": ["Find x.", "Find y."], "gpqa": ["Which particle?"]}
    assert len(report.warnings) == 1 and "someone/unavailable-set:main@test not found" in report.warnings[0]
    with pytest.raises(FileNotFoundError, match="--eval_files"):
        load_eval_sets([], ["problem"], required=["someone/unavailable-set"])


def test_unreadable_pool_lines_are_counted_drops_not_a_crash(tmp_path: Path) -> None:
    small = make_pool(40, seed=6)
    write_jsonl(tmp_path / "pool.jsonl", small.rows)
    good = (tmp_path / "pool.jsonl").read_bytes()
    bad_lines = [
        b'{"question": "caf\xe9 au lait?", "solution": "x"}\n',  # Latin-1, not UTF-8
        b'{"question": "\\ud800 lone surrogate", "solution": "x"}\n',
        b'{"question": "truncated", "solu\n',
        b'["not", "an", "object"]\n',
    ]
    (tmp_path / "pool.jsonl").write_bytes(bad_lines[0] + good + b"".join(bad_lines[1:]))
    config = load_config(
        None,
        {
            "output_dir": str(tmp_path / "out"),
            "pool": str(tmp_path / "pool.jsonl"),
            "decontaminate.eval_files": [],
            "decontaminate.require_eval_sets": False,
        },
    )
    report = run_decontaminate(config).report
    assert report.rows_in == 44 and report.steps[0]["name"] == "read_input"
    assert report.steps[0]["dropped"] == {
        "invalid_utf8": 1,
        "lone_surrogate": 1,
        "invalid_json": 1,
        "not_an_object": 1,
    }
    assert [d["id"] for d in report.dropped[:4]] == ["line 1", "line 42", "line 43", "line 44"]
    assert report.rows_out == 40 - sum(s["rows_in"] - s["rows_out"] for s in report.steps[1:])
