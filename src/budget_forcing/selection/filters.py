"""Stage 3a: quality filters, then the difficulty filter.

Steps, in order (each dropped row is reported with its reason):

1. ``missing_feature``: a required feature is null (failed calls, unparsable replies); the
   detail lists the columns and the recorded errors.
2. ``format_<name>``: the question matches a formatting-artefact regex (``filter.format_patterns``):
   ``[asy]`` diagrams unless the source is exempt (AIME), image references, "p1."-style
   numbering, bold-with-digits artefacts.
3. ``solved_by_base_model``: any base model's attempt was graded correct (the detail names them).

The rows passing steps 1-2 are also written to ``quality_output`` (input of the ablations).

Example:
    >>> from budget_forcing.selection.filters import format_issue
    >>> from budget_forcing.selection.config import FilterConfig
    >>> format_issue("[asy] draw((0,0)--(1,1)); [/asy] Find x.", "MATH", FilterConfig())
    'asy'
    >>> format_issue("[asy] draw((0,0)--(1,1)); [/asy] Find x.", "qq8933/AIME_1983_2024", FilterConfig())
"""

from __future__ import annotations

import re
from typing import Any

from .config import FilterConfig, SelectionConfig
from .io import StageReport, column

__all__ = ["format_issue", "apply_filters"]


def _compiled(config: FilterConfig) -> dict[str, re.Pattern[str]]:
    try:
        return {
            name: re.compile(p, re.IGNORECASE if name == "asy" else 0)
            for name, p in config.format_patterns.items()
        }
    except re.error as err:
        raise ValueError(f"Invalid regex in `filter.format_patterns`: {err}") from err


def format_issue(
    question: str, source: str | None, config: FilterConfig, patterns: dict | None = None
) -> str | None:
    """The name of the first formatting artefact found in ``question``, or ``None``."""
    patterns = patterns if patterns is not None else _compiled(config)
    src = (source or "").lower()
    for name, pattern in patterns.items():
        if name == "asy" and any(s.lower() in src for s in config.asy_exempt_sources):
            continue
        if pattern.search(question):
            return name
    return None


def apply_filters(dataset: Any, config: SelectionConfig) -> tuple[list[int], list[int], StageReport]:
    """``(quality_indices, final_indices, report)``: rows passing quality filters, and also difficulty."""
    fc = config.filter
    columns = dataset.column_names
    report = StageReport("filter", rows_in=len(dataset))
    ids = column(dataset, config.id_column)
    questions = column(dataset, config.question_column)
    sources = column(dataset, config.source_column) if config.source_column in columns else [None] * len(ids)

    correct_cols = [c for c in columns if c.startswith("correct_")]
    if fc.required_features is not None:
        required = list(fc.required_features)
    else:
        required = [c for c in columns if c.startswith(("attempt_", "correct_"))]
        required += [c for c in ("teacher_correct", "domain", "trace_tokens") if c in columns]
    missing_cols = [c for c in required if c not in columns]
    if missing_cols or not {"domain", "trace_tokens"} <= set(columns):
        raise ValueError(
            f"The input lacks feature columns {missing_cols or ['domain', 'trace_tokens']}: run `featurize` first "
            "(or fix `filter.required_features`)."
        )
    values = {c: column(dataset, c) for c in required}
    errors = column(dataset, "feature_errors") if "feature_errors" in columns else [[] for _ in ids]

    alive, dropped = [], []
    for i in range(len(ids)):
        empty = [c for c in required if values[c][i] is None]
        if empty:
            detail = "; ".join(errors[i] or []) or "null " + ", ".join(empty)
            dropped.append((ids[i], "missing_feature", detail))
        else:
            alive.append(i)
    report.step("missing_features", len(ids), dropped)

    patterns = _compiled(fc)
    kept, dropped = [], []
    for i in alive:
        q = questions[i]
        issue = format_issue(q, sources[i], fc, patterns) if isinstance(q, str) else "empty"
        if issue:
            dropped.append((ids[i], f"format_{issue}", ""))
        else:
            kept.append(i)
    report.step("formatting", len(alive), dropped)
    quality = kept

    final = quality
    if fc.difficulty:
        if fc.difficulty_models is not None:
            cols = ["correct_" + re.sub(r"\W", "_", m) for m in fc.difficulty_models]
            absent = [c for c in cols if c not in columns]
            if absent:
                raise ValueError(
                    f"`filter.difficulty_models` names models without columns {absent}; have {correct_cols}."
                )
        else:
            cols = correct_cols
        if not cols:
            report.warn("No base-model grades (`correct_*` columns): the difficulty filter kept everything.")
        graded = {c: column(dataset, c) for c in cols}
        final, dropped = [], []
        for i in quality:
            solvers = [c.removeprefix("correct_") for c in cols if graded[c][i]]
            if solvers:
                dropped.append((ids[i], "solved_by_base_model", ",".join(solvers)))
            else:
                final.append(i)
        report.step("difficulty", len(quality), dropped)
    report.info["rows_quality"] = len(quality)
    return quality, final, report
