"""Stage 4: SFT examples, one ``messages`` column that TRL's ``SFTTrainer`` consumes directly.

The assistant message is the teacher's trace and attempt rendered in a thinking format from
:mod:`budget_forcing.formats`: ``s1`` gives ``<|im_start|>think\\n{trace}\\n<|im_start|>answer\\n
Answer: {attempt}`` ("Answer: " is prepended when absent, as s1 trains), ``think`` gives
``<think>{trace}</think>{attempt}``. Teacher columns: ``gemini`` = ``thinking_trajectories`` /
``attempt`` (s1K; s1K-1.1 also has ``gemini_thinking_trajectory`` / ``gemini_attempt``),
``deepseek`` = ``deepseek_thinking_trajectory`` / ``deepseek_attempt`` (s1K-1.1).

Example:
    >>> from budget_forcing.selection.formatting import assistant_text
    >>> assistant_text("2+2 is 4", "4", "s1", "auto")
    '<|im_start|>think\\n2+2 is 4\\n<|im_start|>answer\\nAnswer: 4'
"""

from __future__ import annotations

from typing import Any

from budget_forcing.formats import get_format

from .config import FormatConfig
from .featurize import first_text
from .io import column

__all__ = ["TEACHERS", "teacher_columns", "assistant_text", "to_sft"]

TEACHERS: dict[str, list[tuple[str, str]]] = {
    "gemini": [("thinking_trajectories", "attempt"), ("gemini_thinking_trajectory", "gemini_attempt")],
    "deepseek": [("deepseek_thinking_trajectory", "deepseek_attempt")],
}


def teacher_columns(config: FormatConfig, columns: list[str]) -> tuple[str, str]:
    """The ``(trace, attempt)`` columns to use, checked against the dataset's columns."""
    if config.trace_column and config.attempt_column:
        pair = (config.trace_column, config.attempt_column)
    elif config.teacher in TEACHERS:
        pair = next(
            (p for p in TEACHERS[config.teacher] if p[0] in columns and p[1] in columns),
            TEACHERS[config.teacher][0],
        )
        pair = (config.trace_column or pair[0], config.attempt_column or pair[1])
    else:
        raise ValueError(
            f"Unknown teacher {config.teacher!r}; use 'gemini', 'deepseek', or 'custom' with `format.trace_column` "
            "and `format.attempt_column`."
        )
    absent = [c for c in pair if c not in columns]
    if absent:
        raise ValueError(
            f"The selection has no column(s) {absent} for teacher {config.teacher!r} (has {columns})."
        )
    return pair


def assistant_text(trace: str, attempt: str, format: str, answer_prefix: str | None) -> str:
    """The assistant message: ``trace`` and ``attempt`` rendered in ``format``."""
    fmt = get_format(format)
    prefix = ("Answer: " if fmt.name == "s1" else "") if answer_prefix == "auto" else answer_prefix
    return fmt.render_attempt(trace, attempt, prefix)


def to_sft(
    dataset: Any, config: FormatConfig, question_column: str = "question"
) -> tuple[Any, list[tuple[int, str]]]:
    """``(dataset with a messages column, [(index, problem)] of rows without a trace/attempt)``."""
    trace_col, attempt_col = teacher_columns(config, dataset.column_names)
    traces = [first_text(t) for t in column(dataset, trace_col)]
    attempts = [first_text(a) for a in column(dataset, attempt_col)]
    questions = column(dataset, question_column)
    messages, bad = [], []
    for i, (q, t, a) in enumerate(zip(questions, traces, attempts, strict=True)):
        if t is None or a is None or not isinstance(q, str):
            bad.append(
                (i, f"empty {trace_col if t is None else attempt_col if a is None else question_column}")
            )
            messages.append(None)
            continue
        conversation = [{"role": "system", "content": config.system_prompt}] if config.system_prompt else []
        conversation += [
            {"role": "user", "content": q.strip()},
            {"role": "assistant", "content": assistant_text(t, a, config.format, config.answer_prefix)},
        ]
        messages.append(conversation)
    if "messages" in dataset.column_names:
        dataset = dataset.remove_columns("messages")
    return dataset.add_column("messages", messages), bad
