"""The CPU demo: the synthetic pool, its tokenizer, and a heavily shrunk end-to-end run."""

import json
import random
import re
import sys
from collections import Counter

import pytest

# `demo` lives at the repository root: `python -m pytest` (the test command) runs from there.
from budget_forcing.formats import S1_FORMAT, encode_exact, get_format
from demo.make_pool import (
    CHECK,
    CHUNK,
    FAMILIES,
    LEVELS,
    P_WAIT,
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
        assert row["thinking_trajectories"][0].splitlines()[-1].endswith(f" {answer}.")


def _terms(row: dict) -> tuple[int, list[str]]:
    expression = row["question"].removeprefix("What is ").removesuffix("?")
    return int(re.match(r"\d+", expression).group()), re.findall(r"[+-]\d+", expression)


def _check_chain(lines: list[str], start: int, terms: list[str], chunk: int) -> tuple[int, int]:
    """Walk ``lines`` as a pass of ``chunk`` operations per line, each followed by the rest rewritten;
    returns (lines used, slips): a slip is a line whose result is not what its operands give."""
    value, used, slips = start, 0, 0
    for i in range(0, len(terms), chunk):
        part = terms[i : i + chunk]
        lhs, result = lines[used].split("=")
        assert lhs == f"{value}" + "".join(part)  # the operation, written from the value above
        slips += int(result) != value + sum(int(t) for t in part)
        value, used = int(result), used + 1
        if i + chunk < len(terms):
            assert lines[used] == f"{value}" + "".join(terms[i + chunk :])  # the rest, verbatim
            used += 1
    return used, slips


def test_traces_are_a_quick_first_pass_then_the_answer():
    rng = random.Random(3)
    for family, level in (("addition", 6), ("subtraction", 5), ("mixed", 5)):
        row = make_row(family, rng, difficulty=level, p_wait=0.0)
        lines = row["thinking_trajectories"][0].splitlines()
        start, terms = _terms(row)
        assert lines[0] == row["question"].removeprefix("What is ").removesuffix("?")
        used, slips = _check_chain(lines[1:], start, terms, CHUNK)
        assert slips == 0 and len(lines) == used + 2
        assert lines[-1] == f"So the answer is {_expected_answer(row)}."


def test_wait_rechecks_step_by_step_and_fixes_the_first_pass_slips():
    rows = make_rows(1500, seed=5, p_wait=P_WAIT)
    checked = [r for r in rows if CHECK in r["thinking_trajectories"][0]]
    assert P_WAIT - 0.05 < len(checked) / len(rows) < P_WAIT + 0.05
    fixed = confirmed = extra_waits = 0
    for row in checked:
        lines = row["thinking_trajectories"][0].splitlines()
        start, terms = _terms(row)
        used, slips = _check_chain(lines[1:], start, terms, CHUNK)
        first = lines[1 + used]
        assert lines[2 + used] == CHECK
        careful_used, careful_slips = _check_chain(lines[3 + used :], start, terms, 1)
        assert careful_slips == 0  # the re-check is right
        rest = lines[3 + used + careful_used :]
        answer = _expected_answer(row)
        assert rest[0] == f"So the answer is {answer}."
        assert set(rest[1:]) <= {f"Wait, the check stands: {answer}."}
        extra_waits += len(rest) - 1
        assert slips <= 1 and (first != rest[0]) == bool(slips)  # a slip changes the first answer
        fixed += slips
        confirmed += 1 - slips
        assert lines[-1].endswith(f" {answer}.") and row["answer"] == str(answer)
    assert 0.35 < fixed / len(checked) < 0.65 and extra_waits > 0
    assert all("Wait" not in r["thinking_trajectories"][0] for r in make_rows(200, seed=5, p_wait=0.0))


def test_eval_questions_have_at_least_two_quick_chunks():
    for row in make_eval_set(60):
        assert len(_terms(row)[1]) > CHUNK


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
    assert summary["metrics"]["max budgets"]["control"] == 100.0
    assert all(r["answer_tokens"] <= 8 for r in _run_rows(out))  # the answer cap of demo/configs/eval.yaml
    select = summary["selection"]["select"]
    assert select["rows_out"] == 80
    assert set(select["info"]["domains"]) == set(FAMILIES)
    assert "Control" in (out / "table.md").read_text()


def test_sft_splits_the_config_batch_over_one_thread_processes(tmp_path):
    from demo.run import ROOT, sft_command, sft_processes

    assert [sft_processes(threads, 2) for threads in (1, 2, 3, 8)] == [1, 2, 2, 2]
    one = sft_command("demo/configs/sft.yaml", "m", "d.parquet", "o")
    assert one[one.index("--config_file") + 1] == "recipes/accelerate_configs/cpu.yaml"
    assert "--per_device_train_batch_size" not in one  # the config's batch, in one process
    two = sft_command("demo/configs/sft.yaml", "m", "d.parquet", "o", processes=2)
    assert two[two.index("--config_file") + 1] == "recipes/accelerate_configs/cpu_2proc.yaml"
    assert two[two.index("--num_processes") + 1] == "2"
    # each process takes half of the config's batch of 16: the global batch, and so the recipe, stay the same
    assert two[two.index("--per_device_train_batch_size") + 1] == "8"
    assert (ROOT / two[two.index("--config_file") + 1]).exists()
    odd = tmp_path / "sft.yaml"
    odd.write_text("per_device_train_batch_size: 5\n")
    with pytest.raises(ValueError, match="multiple of --sft_processes"):
        sft_command(str(odd), "m", "d.parquet", "o", processes=2)


def test_try_line_uses_this_interpreters_script_and_a_short_path(tmp_path, monkeypatch):
    from demo.run import TRY_QUESTION, try_command

    bindir = tmp_path / "venv" / "bin"
    bindir.mkdir(parents=True)
    (bindir / "budget-forcing").write_text("#!/bin/sh\n")
    monkeypatch.setattr(sys, "executable", str(bindir / "python"))
    monkeypatch.chdir(tmp_path)
    line = try_command(tmp_path / "demo_outputs" / "model")
    assert line.startswith("venv/bin/budget-forcing generate demo_outputs/model ")
    assert f"--question '{TRY_QUESTION}'" in line
    monkeypatch.setattr(sys, "executable", str(tmp_path / "python"))  # no script beside it: the plain name
    assert try_command("/elsewhere/model").startswith("budget-forcing generate /elsewhere/model ")


def test_scaling_merges_budgets_with_the_same_thinking_so_noise_cannot_swing_it():
    from demo.evaluate import scaling_metrics

    def run(budget, accuracy, tokens, waits=0):
        return {"name": f"max={budget}", "accuracy": accuracy, "thinking_tokens": [tokens] * 4,
                "thinking_max": budget, "num_waits": waits}  # fmt: skip

    sweep = [run(0, 0.0, 0), run(16, 0.2, 16), run(32, 0.5, 32), run(64, 0.8, 50)]
    a = scaling_metrics([*sweep, run(128, 0.800, 50.0)])["max budgets"]
    # A second run of the same model: 0.5 points more over 0.1 tokens more.
    b = scaling_metrics([*sweep, run(128, 0.805, 50.1)])["max budgets"]
    assert abs(a["scaling"] - b["scaling"]) < 0.5  # merged: the 0.1-token segment is gone
    assert abs(a["scaling_unmerged"] - b["scaling_unmerged"]) > 5  # the paper's curve as is: it swings
    assert b["merged"][-1] == "max=64 = max=128"
    waits = scaling_metrics([*sweep, run(64, 0.9, 80, waits=1), run(64, 0.95, 120, waits=2)])
    assert waits["Waits at max=64"]["performance"] == 95.0 and waits["Waits at max=64"]["scaling"] > 0
