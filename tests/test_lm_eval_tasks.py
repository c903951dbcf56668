"""The packaged lm-eval tasks (budget_forcing/tasks): local data loading, GPQA shuffling, grading of real-looking outputs, task registry."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("lm_eval")
pytest.importorskip("math_verify")

from budget_forcing.tasks import TASKS_DIR as TASKS  # noqa: E402


@pytest.fixture(scope="module")
def utils():
    from budget_forcing.tasks import utils

    return utils


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_local_file_priority_metadata_env_yaml(utils, tmp_path, monkeypatch) -> None:
    meta = write_jsonl(tmp_path / "meta.jsonl", [{"problem": "from metadata", "answer": "1"}])
    env = write_jsonl(tmp_path / "env.jsonl", [{"question": "from env", "Answer": 2}])
    common = dict(
        data_key="aime24", hub_path="unused/hub", hub_split="train", data_file="data/aime24_sample.jsonl"
    )
    monkeypatch.setenv("BUDGET_FORCING_AIME24_DATA", str(env))
    assert utils.load_bf_dataset(**common, aime24_data=str(meta))["test"]["problem"] == ["from metadata"]
    rows = utils.load_bf_dataset(**common)["test"]
    assert rows["problem"] == ["from env"] and rows["answer"] == ["2"]
    monkeypatch.delenv("BUDGET_FORCING_AIME24_DATA")
    rows = utils.load_bf_dataset(**common, version=1.0, pretrained="ignored")[
        "test"
    ]  # model args end up here
    assert len(rows) == 3 and rows["answer"] == ["15", "63", "49"]


def test_missing_fields_and_files_are_errors(utils, tmp_path) -> None:
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"problem": "ok", "answer": "1"}, {"problem": "no answer"}])
    with pytest.raises(ValueError, match="Row 1 has no answer"):
        utils.load_bf_dataset(data_key="x", hub_path="h", hub_split="s", data_file=str(bad))
    with pytest.raises(FileNotFoundError, match="missing.jsonl"):
        utils.load_bf_dataset(
            data_key="x", hub_path="h", hub_split="s", data_file=str(tmp_path / "missing.jsonl")
        )


def test_gpqa_rows_shuffle_deterministically_by_question(utils, tmp_path) -> None:
    gpqa_style = {
        "Question": "Q?", "Correct Answer": "right", "Incorrect Answer 1": "w1", "Incorrect Answer 2": "w2",
        "Incorrect Answer 3": "w3",
    }  # fmt: skip
    ours = {"question": "Q?", "correct": "right", "incorrect": ["w1", "w2", "w3"]}
    path = write_jsonl(tmp_path / "g.jsonl", [gpqa_style])
    a = utils.load_bf_dataset(data_key="g", hub_path="h", hub_split="s", data_file=str(path), kind="choice")[
        "test"
    ][0]
    path = write_jsonl(tmp_path / "g2.jsonl", [ours])
    b = utils.load_bf_dataset(data_key="g", hub_path="h", hub_split="s", data_file=str(path), kind="choice")[
        "test"
    ][0]
    assert a["choices"] == b["choices"] and sorted(a["choices"]) == ["right", "w1", "w2", "w3"]
    assert a["choices"][utils.LETTERS.index(a["answer"])] == "right"
    # Different questions get different orders; the correct letter is spread over A-D.
    letters = {utils.shuffle_choices(f"question {i}", "right", ["w1", "w2", "w3"])[1] for i in range(40)}
    assert letters == set("ABCD")
    text = utils.doc_to_text_choice(a)
    assert text.startswith("Q?\n\n(A) ") and text.count("\n(") == 4


def test_process_results_grade_the_answer_part(utils) -> None:
    math_doc = {"problem": "Simplify 6/8 + 1/8.", "answer": "\\frac{7}{8}"}
    s1_output = "<|im_start|>think\nmaybe \\boxed{1}\n<|im_start|>answer\nFinal Answer: $\\frac{7}{8}$"
    think_output = "<think>6/8+1/8 = 7/8</think>The answer is \\boxed{0.875}."
    wrong = "<think>so it is 7/8</think>Final Answer: 1"
    assert utils.process_results_math(math_doc, [s1_output]) == {"exact_match": 1}
    assert utils.process_results_math(math_doc, [think_output]) == {"exact_match": 1}
    assert utils.process_results_math(math_doc, [wrong]) == {"exact_match": 0}

    choice_doc = {"question": "Q?", "choices": ["Proton", "Electron", "Neutron", "Positron"], "answer": "C"}
    assert utils.process_results_choice(choice_doc, ["<think>A? no.</think>Answer: (C)"]) == {
        "exact_match": 1
    }
    assert utils.process_results_choice(choice_doc, ["<think>...</think>Final Answer: Neutron"]) == {
        "exact_match": 1
    }
    assert utils.process_results_choice(choice_doc, ["<think>C</think>Answer: A"]) == {"exact_match": 0}
    assert utils.process_results_choice(choice_doc, ["<think>C</think>no idea"]) == {"exact_match": 0}


def test_tasks_are_registered_with_distinct_names() -> None:
    from lm_eval.tasks import TaskManager

    manager = TaskManager(include_path=str(TASKS))
    ours = {"aime24_bf", "aime25_bf", "math500_bf", "gpqa_diamond_bf", "s1_bf"}
    ours |= {f"{t}_sample" for t in ours - {"s1_bf"}}
    assert ours <= set(manager.all_tasks)
    # lm-eval's own tasks keep their names (and prompts).
    assert {"aime24", "aime25"} <= set(manager.all_tasks)
    loaded = manager.load(["gpqa_diamond_bf_sample", "math500_bf_sample"])["tasks"]
    gpqa = loaded["gpqa_diamond_bf_sample"]
    docs = list(gpqa.test_docs())
    assert len(docs) == 3 and all(
        d["choices"][utils_index(d["answer"])] == c for d, c in zip(docs, CORRECT, strict=True)
    )
    math = loaded["math500_bf_sample"]
    assert math.doc_to_text(next(iter(math.test_docs()))) == "Simplify $\\frac{6}{8} + \\frac{1}{8}$."


CORRECT = ["Neutron", "-2", "Mitochondrion"]


def utils_index(letter: str) -> int:
    return "ABCD".index(letter)
