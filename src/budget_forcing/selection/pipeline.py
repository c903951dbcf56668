"""Run the selection recipe: one function per stage, and :func:`run_all`.

Every stage reads its input file, writes its output file (atomically) and a report under
``<output_dir>/reports/``. Default file chain under ``output_dir``::

    pool -> decontaminated.parquet -> featurized.parquet -> filtered.parquet (+ quality.parquet)
         -> selected.parquet (+ selected_<ablation>.parquet) -> sft.parquet

Example (the tiny local recipe: a local model as the difficulty filter's base model,
math-verify grading only, domains from a column):
    >>> from budget_forcing.selection.pipeline import load_config, run_all
    >>> config = load_config("recipes/configs/selection/tiny.yaml", {
    ...     "pool": "my_pool.jsonl", "output_dir": "outputs/s1k_tiny",
    ...     "featurize.base_models": [{"name": "tiny", "backend": "local", "model": "path/to/model"}],
    ...     "featurize.tokenizer": "path/to/model"})
    >>> results = run_all(config)  # doctest: +SKIP
    >>> results["format"].output  # doctest: +SKIP
    'outputs/s1k_tiny/sft.parquet'
"""

from __future__ import annotations

import logging
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .algorithm import in_phase1, plot_selection, select_indices
from .backends import ChatBackend
from .cache import Cache
from .config import SelectionConfig, apply_overrides, config_from_dict
from .decontaminate import decontaminate, load_eval_sets
from .featurize import featurize
from .filters import apply_filters
from .formatting import to_sft
from .io import StageReport, column, ensure_ids, load_table, save_table

__all__ = [
    "StageResult",
    "load_config",
    "run_decontaminate",
    "run_featurize",
    "run_filter",
    "run_select",
    "run_format",
    "run_all",
    "STAGES",
]

logger = logging.getLogger("budget_forcing.selection")


@dataclass
class StageResult:
    """What a stage wrote: its output file, its report, and where the report lies."""

    output: str
    report: StageReport
    report_path: str


def load_config(path: str | None = None, overrides: dict[str, Any] | None = None) -> SelectionConfig:
    """A :class:`SelectionConfig` from a YAML recipe (or defaults) and dotted-key overrides."""
    data: dict[str, Any] = {}
    if path:
        import yaml

        if not Path(path).exists():
            raise FileNotFoundError(f"Recipe {path} not found; see recipes/configs/selection/ for examples.")
        data = yaml.safe_load(Path(path).read_text()) or {}
    return config_from_dict(apply_overrides(data, overrides or {}))


def _out(config: SelectionConfig, name: str) -> str:
    return str(Path(config.output_dir) / name)


def _finish(
    report: StageReport,
    config: SelectionConfig,
    input_path: str,
    output: str,
    unreadable: list[tuple[str, str, str]] = (),
) -> StageResult:
    report.unreadable(list(unreadable))
    report.input, report.output = input_path, output
    if report.rows_in - len(report.dropped) != report.rows_out:  # pragma: no cover - invariant
        raise AssertionError("report does not account for every dropped row")
    path = report.write(Path(config.output_dir) / "reports")
    logger.info("%s", report.summary())
    print(report.summary(), flush=True)
    return StageResult(output=output, report=report, report_path=str(path))


def _load(path: str, config: SelectionConfig, split: str = "train") -> tuple[Any, list[tuple[str, str, str]]]:
    """The stage's input and its unreadable JSONL lines (counted by `_finish`)."""
    unreadable: list[tuple[str, str, str]] = []
    dataset = load_table(path, split, unreadable)
    if config.id_column not in dataset.column_names:
        dataset = ensure_ids(dataset, config.id_column)
    return dataset, unreadable


def run_decontaminate(config: SelectionConfig) -> StageResult:
    """Stage 1: decontaminate + dedup the pool."""
    dc = config.decontaminate
    input_path = dc.input or config.pool
    output = dc.output or _out(config, "decontaminated.parquet")
    unreadable: list[tuple[str, str, str]] = []
    dataset = ensure_ids(load_table(input_path, config.pool_split, unreadable), config.id_column)
    probe = StageReport("decontaminate", rows_in=len(dataset))
    eval_texts = load_eval_sets(dc.eval_files, dc.eval_text_columns, dc.extra_eval_files, probe)
    kept, report = decontaminate(
        dataset,
        dc,
        eval_texts,
        id_column=config.id_column,
        question_column=config.question_column,
        source_column=config.source_column,
    )
    report.warnings = probe.warnings + report.warnings
    save_table(dataset.select(kept), output)
    return _finish(report, config, input_path, output, unreadable)


def run_featurize(config: SelectionConfig, backends: dict[str, ChatBackend] | None = None) -> StageResult:
    """Stage 2: attempts, grades, domains, trace lengths (cached in ``featurize.cache``)."""
    fc = config.featurize
    input_path = fc.input or _out(config, "decontaminated.parquet")
    output = fc.output or _out(config, "featurized.parquet")
    dataset, unreadable = _load(input_path, config)
    cache = Cache(fc.cache or _out(config, "cache.sqlite"))
    try:
        featurized, report = featurize(dataset, config, cache, backends)
    finally:
        cache.close()
        for backend in (backends or {}).values():
            backend.close()
    save_table(featurized, output)
    return _finish(report, config, input_path, output, unreadable)


def run_filter(config: SelectionConfig) -> StageResult:
    """Stage 3a: quality and difficulty filters."""
    fc = config.filter
    input_path = fc.input or _out(config, "featurized.parquet")
    output = fc.output or _out(config, "filtered.parquet")
    quality_output = fc.quality_output or _out(config, "quality.parquet")
    dataset, unreadable = _load(input_path, config)
    quality, final, report = apply_filters(dataset, config)
    save_table(dataset.select(quality), quality_output)
    save_table(dataset.select(final), output)
    report.info["quality_output"] = quality_output
    return _finish(report, config, input_path, output, unreadable)


def _selection_rows(dataset: Any, config: SelectionConfig) -> list[dict[str, Any]]:
    sc = config.select
    n = len(dataset)
    columns = dataset.column_names

    def col(name: str | None) -> list[Any]:
        return column(dataset, name) if name and name in columns else [None] * n

    return [
        {"source": s, "domain": d, "length": length if length is not None else 0, "correct": bool(c)}
        for s, d, length, c in zip(
            col(config.source_column),
            col(sc.domain_column),
            col(sc.length_column),
            col("teacher_correct"),
            strict=True,
        )
    ]


def run_select(
    config: SelectionConfig,
    method: str | None = None,
    input_path: str | None = None,
    output: str | None = None,
    name: str | None = None,
) -> StageResult:
    """Stage 3b: select ``select.n`` questions with ``method`` (default ``select.method``).

    ``name`` names the report (default ``select``, or ``select_<method>`` for another method).
    """
    sc = config.select
    method = method or sc.method
    stage = name or ("select" if method == sc.method else f"select_{method}")
    input_path = input_path or sc.input or _out(config, "filtered.parquet")
    output = output or sc.output or _out(config, "selected.parquet")
    dataset, unreadable = _load(input_path, config)
    columns = dataset.column_names
    if method in ("s1k", "diverse") and sc.domain_column not in columns:
        raise ValueError(
            f"Method {method!r} needs the domain column {sc.domain_column!r}; run featurize first."
        )
    if method in ("s1k", "longest") and sc.length_column not in columns:
        raise ValueError(
            f"Method {method!r} needs the length column {sc.length_column!r}; run featurize first."
        )
    rows = _selection_rows(dataset, config)
    picked = select_indices(rows, method, sc.n, config.seed, config)
    report = StageReport(stage, rows_in=len(dataset))
    if method == "s1k" and "teacher_correct" not in columns:
        report.warn(
            "No `teacher_correct` column (featurize ran with `grade_teacher: false`): Algorithm 1 step 1 kept "
            "nothing and every question came from domain sampling."
        )
    ids = column(dataset, config.id_column)
    chosen = set(picked)
    report.step(
        method, len(dataset), [(ids[i], "not_selected", "") for i in range(len(ids)) if i not in chosen]
    )
    domains: dict[str, int] = {}
    for i in picked:
        domains[str(rows[i]["domain"])] = domains.get(str(rows[i]["domain"]), 0) + 1
    lengths = [rows[i]["length"] for i in picked]
    all_lengths = [r["length"] for r in rows]
    report.info.update(
        {
            "method": method,
            "n": len(picked),
            "seed": config.seed,
            "domains": dict(sorted(domains.items(), key=lambda kv: -kv[1])),
            "num_domains": len(domains),
            "trace_tokens_selected": _stats(lengths),
            "trace_tokens_candidates": _stats(all_lengths),
        }
    )
    phase1: list[int] = []
    if method == "s1k":
        phase1 = [i for i, r in enumerate(rows) if in_phase1(r, sc)]
        report.info["phase1_kept"] = min(len(phase1), len(picked))
        if len(phase1) >= len(picked):
            report.warn(
                f"Algorithm 1 step 1 (correct {sc.keep_sources} + long {sc.long_trace_sources} traces) alone has "
                f"{len(phase1)} questions >= n={len(picked)}: a random subset was kept and no domain sampling happened."
            )
    if sc.plot and sc.domain_column in columns:
        png = str(Path(config.output_dir) / "reports" / f"{stage}.png")
        Path(png).parent.mkdir(parents=True, exist_ok=True)
        report.info["plot"] = plot_selection(png, rows, picked, method, report, set(phase1))
    save_table(dataset.select(picked), output)
    return _finish(report, config, input_path, output, unreadable)


def _stats(values: list[Any]) -> dict[str, float]:
    values = [v for v in values if v is not None]
    if not values:
        return {}
    return {
        "mean": round(statistics.fmean(values), 1),
        "median": statistics.median(values),
        "max": max(values),
    }


def run_format(
    config: SelectionConfig, input_path: str | None = None, output: str | None = None
) -> StageResult:
    """Stage 4: SFT examples with a ``messages`` column."""
    fc = config.format
    input_path = input_path or fc.input or _out(config, "selected.parquet")
    output = output or fc.output or _out(config, "sft.parquet")
    dataset, unreadable = _load(input_path, config)
    formatted, bad = to_sft(dataset, fc, config.question_column)
    report = StageReport("format", rows_in=len(dataset))
    ids = column(dataset, config.id_column)
    report.step("format", len(dataset), [(ids[i], "missing_teacher_text", why) for i, why in bad])
    report.info.update({"format": fc.format, "teacher": fc.teacher})
    bad_rows = {i for i, _ in bad}
    save_table(formatted.select([i for i in range(len(formatted)) if i not in bad_rows]), output)
    return _finish(report, config, input_path, output, unreadable)


def run_all(
    config: SelectionConfig, backends: dict[str, ChatBackend] | None = None
) -> dict[str, StageResult]:
    """Every stage in order, then the ablations (``select.ablations``); returns the results by stage."""
    results = {
        "decontaminate": run_decontaminate(config),
        "featurize": run_featurize(config, backends),
        "filter": run_filter(config),
        "select": run_select(config),
    }
    for method in config.select.ablations:
        default_input = (
            results["decontaminate"].output if method == "full" else _out(config, "quality.parquet")
        )
        results[f"select_{method}"] = run_select(
            config,
            method,
            config.select.ablation_input or default_input,
            _out(config, f"selected_{method}.parquet"),
            name=f"select_{method}",
        )
    results["format"] = run_format(config)
    return results


STAGES = {
    "decontaminate": run_decontaminate,
    "featurize": run_featurize,
    "filter": run_filter,
    "select": run_select,
    "format": run_format,
}
