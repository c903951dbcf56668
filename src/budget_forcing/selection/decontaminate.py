"""Stage 1: decontaminate against evaluation sets, drop cross-source near-duplicates and exact duplicates.

All three steps use hashed word n-grams of the normalised question (lowercase, collapsed
whitespace): one pass over the pool with set lookups, no pairwise comparisons, so a 59K pool
takes seconds.

1. ``contaminated``: the question shares any word 8-gram with an evaluation question.
2. ``duplicate_exact``: the normalised question equals an earlier kept one.
3. ``duplicate_cross_source``: at least ``cross_source_overlap`` of its n-grams belong to kept
   rows of *other* sources earlier in the pool (the first occurrence wins).

Example:
    >>> from datasets import Dataset
    >>> from budget_forcing.selection.config import DecontaminateConfig
    >>> from budget_forcing.selection.decontaminate import decontaminate
    >>> pool = Dataset.from_dict({"row_id": [0, 1], "question": ["What is 1+1?", "what is  1+1?"],
    ...                           "source_type": ["a", "a"]})
    >>> kept, report = decontaminate(pool, DecontaminateConfig(eval_files=[]), eval_texts={})
    >>> kept, [d["reason"] for d in report.dropped]
    ([0], ['duplicate_exact'])
"""

from __future__ import annotations

import glob
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .config import DecontaminateConfig
from .io import StageReport, column, load_table
from .text import ngram_hashes, normalize

__all__ = ["load_eval_sets", "decontaminate"]


def _load_eval(spec: str) -> tuple[str, Any] | None:
    """``(name, dataset)`` of a local file or a hub spec ``owner/name[:config][@split]``; None if unavailable."""
    if Path(spec).exists():
        return Path(spec).stem, load_table(spec)
    if Path(spec).suffix in (".jsonl", ".json", ".parquet") or spec.startswith((".", "/")) or "/" not in spec:
        return None
    import datasets

    repo, _, split = spec.partition("@")
    repo, _, config = repo.partition(":")
    try:
        table = datasets.load_dataset(repo, config or None, split=split or "test")
    except Exception:  # offline, unknown id, gated: reported by the caller
        return None
    return (repo.split("/")[-1] + (f"_{config}" if config else "")), table


def load_eval_sets(
    files: Sequence[str],
    text_columns: Sequence[str],
    required: Sequence[str] = (),
    report: StageReport | None = None,
) -> dict[str, list[str]]:
    """Evaluation questions by set name from local JSONL/parquet files, globs, or hub specs.

    Entries are paths (``budget_forcing/tasks/data/*.jsonl`` globs expand), or hub datasets written
    ``owner/name[:config][@split]`` (e.g. ``Idavidrein/gpqa:gpqa_diamond@train``; split default
    ``test``). An entry of ``files`` that cannot be loaded is skipped with a warning (the defaults
    point at the project's benchmark task files); one of ``required`` is an error.
    """
    sets: dict[str, list[str]] = {}
    for spec, must_exist in [(f, False) for f in files] + [(f, True) for f in required]:
        matches = sorted(glob.glob(spec)) if any(c in spec for c in "*?[") else [spec]
        loaded = [_load_eval(m) for m in matches]
        if not matches or any(x is None for x in loaded):
            message = f"Evaluation set {spec} not found (no such file, or a hub dataset that cannot be loaded offline)"
            if must_exist:
                raise FileNotFoundError(f"{message}; fix the path passed with --eval_files.")
            if report is not None:
                report.warn(f"{message}; skipped (pass evaluation files with --eval_files).")
            loaded = [x for x in loaded if x is not None]
        for name, table in loaded:
            text_column = next((c for c in text_columns if c in table.column_names), None)
            if text_column is None:
                raise ValueError(
                    f"Evaluation set {spec} has none of the text columns {list(text_columns)} "
                    f"(it has {table.column_names}); set `decontaminate.eval_text_columns`."
                )
            while name in sets:
                name += "_"
            sets[name] = [t for t in column(table, text_column) if isinstance(t, str) and t.strip()]
    return sets


def decontaminate(
    dataset: Any,
    config: DecontaminateConfig,
    eval_texts: dict[str, list[str]],
    *,
    id_column: str = "row_id",
    question_column: str = "question",
    source_column: str = "source_type",
) -> tuple[list[int], StageReport]:
    """Indices of the rows to keep and the report of the dropped ones."""
    n = config.ngram
    if n < 1:
        raise ValueError(f"`decontaminate.ngram` must be >= 1, got {n}.")
    report = StageReport("decontaminate", rows_in=len(dataset))
    ids = column(dataset, id_column)
    questions = column(dataset, question_column)
    sources = column(dataset, source_column) if source_column in dataset.column_names else [None] * len(ids)

    alive = [i for i, q in enumerate(questions) if isinstance(q, str) and q.strip()]
    report.step(
        "missing_question",
        len(ids),
        [(ids[i], "missing_question", "") for i in sorted(set(range(len(ids))) - set(alive))],
    )

    owner_set: dict[int, str] = {}
    for name, texts in eval_texts.items():
        for text in texts:
            for h in ngram_hashes(text, n):
                owner_set.setdefault(h, name)
    report.info["eval_sets"] = {name: len(texts) for name, texts in eval_texts.items()}
    if not eval_texts:
        message = "No evaluation set loaded: the pool was NOT decontaminated against any benchmark."
        if config.require_eval_sets:
            raise FileNotFoundError(message + " Pass evaluation files with --eval_files.")
        report.warn(message)

    grams = {i: ngram_hashes(questions[i], n) for i in alive}
    kept: list[int] = []
    dropped: list[tuple[Any, str, str]] = []
    for i in alive:
        hs = grams[i]
        if not owner_set.keys().isdisjoint(hs):
            hits = sorted({owner_set[h] for h in hs if h in owner_set})
            dropped.append((ids[i], "contaminated", ",".join(hits)))
        else:
            kept.append(i)
    report.step("decontaminate_eval", len(alive), dropped)
    alive = kept

    if config.exact_dedup:
        first: dict[str, int] = {}
        kept, dropped = [], []
        for i in alive:
            key = normalize(questions[i])
            if key in first:
                dropped.append((ids[i], "duplicate_exact", f"same as {ids[first[key]]}"))
            else:
                first[key] = i
                kept.append(i)
        report.step("dedup_exact", len(alive), dropped)
        alive = kept

    if config.cross_source_dedup:
        codes: dict[Any, int] = {}
        owner: dict[int, int] = {}  # n-gram hash -> index of the first kept row that has it
        kept, dropped = [], []
        for i in alive:
            src = codes.setdefault(sources[i], len(codes))
            hs = grams[i]
            others = [owner[h] for h in hs if h in owner and codes[sources[owner[h]]] != src]
            if hs and len(others) >= config.cross_source_overlap * len(hs):
                match = max(set(others), key=others.count)
                dropped.append(
                    (
                        ids[i],
                        "duplicate_cross_source",
                        f"{len(others)}/{len(hs)} n-grams of {ids[match]} ({sources[match]})",
                    )
                )
                continue
            kept.append(i)
            for h in hs:
                owner.setdefault(h, i)
        report.step("dedup_cross_source", len(alive), dropped)
        alive = kept
    return alive, report
