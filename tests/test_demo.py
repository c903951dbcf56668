"""The CPU demo: the synthetic pool, its tokenizer, and a heavily shrunk end-to-end run."""

import json
import random
import re
from collections import Counter

import pytest

# `demo` lives at the repository root: `python -m pytest` (the test command) runs from there.
from budget_forcing.formats import S1_FORMAT, encode_exact, get_format
from demo.make_pool import (
    FAMILIES,
    LEVELS,
    POOL_COLUMNS,
    make_eval_set,
    make_pool,
    make_row,
    make_rows,
    tokenizer_corpus,
)
from demo.tokenizer import demo_tokenizer


def _expected_answer(row: dict) -> int:
    """The answer recomputed from the question text alone."""
    expression = re.fullmatch(r"What is ([\d+-]+)\?", row["question"]).group(1)
    return sum(int(t) for t in re.findall(r"[+-]?\d+", expression))


def test_rows_have_s1k_schema_and_correct_answers():
    rows = make_rows(300, seed=1)
    assert Counter(r["domain"] for r in rows) == {f: 100 for f in FAMILIES}
    assert len({r["question"] for r in rows}) == 300
    for row in rows:
        assert sorted(row) == sorted(POOL_COLUMNS)
        assert isinstance(row["thinking_trajectories"], list) and len(row["thinking_trajectories"]) == 1
        answer = _expected_answer(row)
        assert answer >= 0
        assert row["answer"] == str(answer)
        assert row["attempt"] == f"Final Answer: {answer}"
        assert row["solution"].endswith(f"$\\boxed{{{answer}}}$.")
        assert row["source_type"] == f"synthetic/{row['domain']}"
        meta = json.loads(row["metadata"])
        assert meta["family"] == row["domain"] and 1 <= meta["difficulty"] <= LEVELS[row["domain"]]
        # The trace ends by stating the answer, so the answer depends on finishing the thinking.
        assert row["thinking_trajectories"][0].splitlines()[-1].endswith(f" is {answer}.")


def test_traces_write_out_each_operation_then_rewrite_the_expression():
    rng = random.Random(3)
    for family, level in (("addition", 6), ("subtraction", 5), ("mixed", 5)):
        row = make_row(family, rng, difficulty=level, p_wait=0.0)
        lines = row["thinking_trajectories"][0].splitlines()
        expression = row["question"].removeprefix("What is ").removesuffix("?")
        numbers = [int(t) for t in re.findall(r"[+-]?\d+", expression)]
        terms = re.findall(r"[+-]\d+", expression)
        assert lines[0] == expression
        assert len(lines) == 2 * len(terms) + 1  # expression, operation + rewrite per step, answer line
        value = numbers[0]
        for i, term in enumerate(terms):
            new = value + int(term)
            assert new >= 0
            assert lines[2 * i + 1] == f"{value}{term}={new}"  # the operation, operands written out
            if i + 1 < len(terms):
                assert lines[2 * i + 2] == f"{new}" + "".join(terms[i + 1 :])  # the rest, verbatim
            value = new
        assert value == _expected_answer(row)
        assert lines[-1] == f"So the answer is {value}."


def test_wait_self_corrections_fix_or_confirm_the_operation_above():
    rows = make_rows(1500, seed=5, p_wait=0.3)
    with_wait = [r for r in rows if "Wait, let me check:" in r["thinking_trajectories"][0]]
    assert 0.3 < len(with_wait) / len(rows) < 0.95
    fixed = confirmed = at_end = 0
    for row in with_wait:
        lines = row["thinking_trajectories"][0].splitlines()
        for i, line in enumerate(lines):
            if not line.startswith("Wait, let me check: "):
                continue
            check = line.removeprefix("Wait, let me check: ")
            a, op, b, c = re.fullmatch(r"(\d+)([+-])(\d+)=(\d+)", check).groups()
            assert int(c) == (int(a) + int(b) if op == "+" else int(a) - int(b))
            if lines[i - 1].startswith("So the answer is "):  # a check of the answer, at the end
                at_end += 1
                operation = lines[i - 2].removeprefix("Wait, let me check: ").split("=")
                assert lines[i - 1] == f"So the answer is {operation[1]}."
                assert lines[i + 1] == f"So the answer is {c}." and i + 2 == len(lines)
            else:
                operation = lines[i - 1].split("=")
                if not lines[i + 1].startswith("So the answer is"):  # the rewrite goes on from the check
                    assert lines[i + 1].startswith(c)
            assert operation[0] == check.split("=")[0]  # the same operation, redone
            fixed += operation[1] != c
            confirmed += operation[1] == c
        assert row["answer"] == str(_expected_answer(row))
        assert lines[-1] == f"So the answer is {row['answer']}."
    assert confirmed > fixed > 0 and at_end > 0
    assert all("Wait" not in r["thinking_trajectories"][0] for r in make_rows(200, seed=5, p_wait=0.0))


def test_pool_counts_defective_rows_exactly_and_excludes_the_eval_set():
    eval_rows = make_eval_set(60)
    assert Counter(r["domain"] for r in eval_rows) == {f: 20 for f in FAMILIES}
    assert all("Wait" not in r["thinking_trajectories"][0] for r in eval_rows)
    held_out = {r["question"] for r in eval_rows}
    pool = make_pool(300, seed=2, defective=0.1, exclude=held_out)
    assert len(pool) == 330
    assert sum(r["attempt"] == "" for r in pool) == 10
    assert sum("[asy]" in r["question"] for r in pool) == 10
    keys = Counter(json.dumps(r, sort_keys=True) for r in pool)
    assert sum(c - 1 for c in keys.values()) == 10  # the exact duplicates
    assert not held_out & {r["question"] for r in pool}


def test_exhausted_family_stops_contributing(monkeypatch):
    import demo.make_pool as mp

    def tiny_family(rng, level, p_wait):  # only three distinct questions exist
        n = rng.randint(1, 3)
        return f"What is {n}+0?", f"{n}+0\n{n}+0={n}\nSo the answer is {n}.", n, f"{n}+0 = {n}"

    monkeypatch.setitem(mp._MAKERS, "tiny", tiny_family)
    monkeypatch.setitem(mp.LEVELS, "tiny", 1)
    rows = make_rows(40, seed=0, families=("tiny", "addition"), exclude={"What is 1+0?"})
    assert Counter(r["domain"] for r in rows) == {"tiny": 2, "addition": 38}
    assert len({r["question"] for r in rows}) == 40


def test_bad_family_or_difficulty_is_a_clear_error():
    with pytest.raises(ValueError, match="Unknown task family"):
        make_row("division", random.Random(0), 1)
    with pytest.raises(ValueError, match="difficulty must be in 1..5"):
        make_row("subtraction", random.Random(0), 6)


def test_demo_tokenizer_splits_digits_and_resolves_the_s1_format():
    pool = make_pool(150, seed=0)
    tok = demo_tokenizer(tokenizer_corpus(pool))
    assert tok.tokenize("4821+3390") == ["4", "8", "2", "1", "+", "3", "3", "9", "0"]
    assert [tok.convert_tokens_to_ids(t) for t in ("<|endoftext|>", "<|im_start|>", "<|im_end|>")] == [
        0,
        1,
        2,
    ]
    assert get_format("auto", tok) == S1_FORMAT
    for text in ("Wait", "Final Answer:", "\n<|im_start|>answer\n"):
        assert tok.decode(encode_exact(tok, text, "text")) == text
    row = pool[0]
    rendered = S1_FORMAT.render(row["thinking_trajectories"][0], row["attempt"])
    assert tok.decode(tok(rendered)["input_ids"]) == rendered


def _run_rows(out) -> list[dict]:
    rows = []
    for path in (out / "eval" / "runs").glob("*.json"):
        rows += json.loads(path.read_text())["tasks"]["demo_synthetic"]
    return rows


def test_demo_grading_accepts_only_the_plain_gold_integer():
    from demo.tasks.utils import is_correct

    assert is_correct("<|im_start|>think\n1+2=3\n<|im_start|>answer\nFinal Answer: 153", "153")
    assert not is_correct("<|im_start|>answer\nFinal Answer: 150+3", "153")  # still computing
    assert not is_correct("<|im_start|>answer\nFinal Answer: 152", "153")
    assert not is_correct("<|im_start|>think\nSo the answer is 153.", "153")  # never answered


@pytest.mark.slow
def test_shrunk_demo_runs_end_to_end(tmp_path):
    from demo.run import DemoArguments, main

    args = DemoArguments(
        output_dir=str(tmp_path / "out"),
        pool_size=160,
        eval_size=12,
        hidden_size=32,
        num_layers=2,
        select_n=80,
        max_steps=4,
        budgets=[0, 24],
        waits=[1],
        threads=1,
    )
    summary = main(args)
    out = tmp_path / "out"
    for name in ("scaling.png", "table.md", "report.md", "summary.json", "model/config.json"):
        assert (out / name).exists(), name
    runs = summary["results"]["runs"]
    assert [(r["thinking_max"], r["num_waits"]) for r in runs] == [(0, 0), (24, 0), (24, 1)]
    assert all(r["n"] == 12 for r in runs)
    assert runs[0]["max_thinking_tokens"] == 0
    assert runs[1]["max_thinking_tokens"] <= 24
    assert summary["metrics"]["budget forcing (max budgets)"]["control"] == 100.0
    assert all(r["answer_tokens"] <= 8 for r in _run_rows(out))  # the answer cap of demo/configs/eval.yaml
    select = summary["selection"]["select"]
    assert select["rows_out"] == 80
    assert set(select["info"]["domains"]) == set(FAMILIES)
    assert "Control" in (out / "table.md").read_text()
