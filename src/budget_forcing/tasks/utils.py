"""Dataset loading, prompts and grading for the budget forcing lm-eval tasks (s1's benchmarks).

Every task reads its hub dataset by default, or a local JSON/JSONL file when one is given, in this
order:

1. ``--metadata '{"<key>_data": "path.jsonl"}'`` (e.g. ``aime24_data``),
2. the environment variable ``BUDGET_FORCING_<KEY>_DATA`` (e.g. ``BUDGET_FORCING_AIME24_DATA``),
3. ``data_file`` in the task YAML (the ``*_sample`` tasks point at ``data/*.jsonl`` here),
4. the hub dataset named in the task YAML.

Rows are normalised to ``{"id", "problem", "answer"}`` (math) or ``{"id", "question", "choices",
"answer"}`` (multiple choice, ``answer`` is the letter). Local math files need ``problem`` (or
``question``) and ``answer``; multiple-choice files need ``question``, ``correct`` and three
``incorrect`` answers (or GPQA's own column names). A row missing a field is an error, never skipped.
Answers are graded with ``budget_forcing.grading`` (math-verify; letters for multiple choice).
"""

from __future__ import annotations

import hashlib
import os
import random
from pathlib import Path
from typing import Any

import datasets

from budget_forcing.grading import extract_answer, extract_choice, grade

TASKS_DIR = Path(__file__).resolve().parent
LETTERS = "ABCD"
#: Seed of GPQA's choice shuffle (fixed, so every model sees the same order).
CHOICE_SEED = 0


def _first(row: dict[str, Any], names: tuple[str, ...], what: str, index: int) -> Any:
    for name in names:
        if name in row and row[name] is not None and str(row[name]).strip() != "":
            return row[name]
    raise ValueError(f"Row {index} has no {what} (looked for columns {list(names)}; it has {sorted(row)}).")


def _local_file(data_key: str, data_file: str | None, metadata: dict[str, Any]) -> Path | None:
    given = metadata.get(f"{data_key}_data") or os.environ.get(f"BUDGET_FORCING_{data_key.upper()}_DATA")
    if given:
        path = Path(given).expanduser()
    elif data_file:
        path = Path(data_file)
        path = path if path.is_absolute() else TASKS_DIR / path
    else:
        return None
    if not path.is_file():
        raise FileNotFoundError(f"Local data file for {data_key!r} not found: {path}")
    return path


def _normalise_math(row: dict[str, Any], index: int) -> dict[str, Any]:
    return {
        "id": str(row.get("id", row.get("unique_id", index))),
        "problem": str(_first(row, ("problem", "Problem", "question", "Question"), "problem", index)),
        "answer": str(_first(row, ("answer", "Answer"), "answer", index)),
    }


def shuffle_choices(
    question: str, correct: str, incorrect: list[str], seed: int = CHOICE_SEED
) -> tuple[list[str], str]:
    """The four choices in a fixed pseudo-random order (seeded by the question) and the correct letter."""
    digest = hashlib.sha256(f"{seed}\n{question}".encode()).hexdigest()
    choices = [correct, *incorrect]
    random.Random(int(digest[:16], 16)).shuffle(choices)
    return choices, LETTERS[choices.index(correct)]


def _normalise_choice(row: dict[str, Any], index: int) -> dict[str, Any]:
    question = str(_first(row, ("question", "Question"), "question", index)).strip()
    correct = str(_first(row, ("correct", "Correct Answer"), "correct answer", index)).strip()
    if "incorrect" in row:
        incorrect = [str(x).strip() for x in row["incorrect"]]
    else:
        incorrect = [
            str(_first(row, (f"Incorrect Answer {i}",), f"incorrect answer {i}", index)).strip()
            for i in (1, 2, 3)
        ]
    if len(incorrect) != 3:
        raise ValueError(
            f"Row {index} has {len(incorrect)} incorrect answers; multiple choice needs exactly 3."
        )
    choices, letter = shuffle_choices(question, correct, incorrect)
    return {
        "id": str(row.get("id", row.get("Record ID", index))),
        "question": question,
        "choices": choices,
        "answer": letter,
    }


def load_bf_dataset(
    *,
    data_key: str,
    hub_path: str,
    hub_split: str,
    hub_name: str | None = None,
    data_file: str | None = None,
    kind: str = "math",
    **metadata: Any,
) -> datasets.DatasetDict:
    """The task's rows as ``{"test": Dataset}``: a local file if given (see module doc), else the hub."""
    path = _local_file(data_key, data_file, metadata)
    if path is not None:
        raw = datasets.load_dataset("json", data_files={"test": str(path)})["test"]
    else:
        raw = datasets.load_dataset(hub_path, hub_name, split=hub_split)
    normalise = {"math": _normalise_math, "choice": _normalise_choice}[kind]
    rows = [normalise(dict(row), i) for i, row in enumerate(raw)]
    if not rows:
        raise ValueError(f"The {data_key} data ({path or hub_path}) has no rows.")
    return datasets.DatasetDict({"test": datasets.Dataset.from_list(rows)})


def doc_to_text_choice(doc: dict[str, Any]) -> str:
    """The question followed by its four lettered choices."""
    lines = [doc["question"], ""] + [
        f"({letter}) {choice}" for letter, choice in zip(LETTERS, doc["choices"], strict=True)
    ]
    return "\n".join(lines)


def process_results_math(doc: dict[str, Any], results: list[str]) -> dict[str, int]:
    """``exact_match``: the (first) generation's answer equals the gold answer under math-verify."""
    return {"exact_match": int(grade(results[0], doc["answer"]))}


def choice_of(doc: dict[str, Any], text: str) -> str | None:
    """The letter a generation picked: an explicit letter, else a choice whose text it answered."""
    letter = extract_choice(text, LETTERS)
    if letter is not None:
        return letter
    if extract_answer(text) is None:
        return None
    for candidate, choice in zip(LETTERS, doc["choices"], strict=True):
        if grade(text, choice):
            return candidate
    return None


def process_results_choice(doc: dict[str, Any], results: list[str]) -> dict[str, int]:
    """``exact_match``: the (first) generation picked the correct letter."""
    return {"exact_match": int(choice_of(doc, results[0]) == doc["answer"])}
