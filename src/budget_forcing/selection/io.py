"""Reading and writing stage files (parquet / JSONL via `datasets`) and stage reports.

Every stage writes ``<output_dir>/reports/<stage>.json`` (machine-readable: rows in and out per
step, and one entry per dropped row with its reason) and ``<stage>.txt`` (a human summary).

Example:
    >>> from budget_forcing.selection.io import StageReport
    >>> report = StageReport("demo", rows_in=3)
    >>> report.step("drop_even", rows_in=3, dropped=[(0, "even", ""), (2, "even", "")])
    >>> report.rows_out
    1
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from budget_forcing._extras import require

__all__ = [
    "load_table",
    "read_jsonl",
    "save_table",
    "ensure_ids",
    "column",
    "StageReport",
    "get_path_value",
    "parse_metadata",
]

_SUFFIXES = (".parquet", ".jsonl", ".json")


def _datasets() -> Any:
    return require("datasets", "recipes", "The selection recipe")


def read_jsonl(path: str | os.PathLike) -> tuple[list[dict[str, Any]], list[tuple[str, str, str]]]:
    """The rows of a JSONL file and ``(line, reason, detail)`` for each line that is not one.

    A line with invalid UTF-8, broken (e.g. truncated) JSON, a value that is not an object, or a
    lone surrogate (text no file format can store) is skipped and reported, never fatal.

    Example:
        >>> import tempfile
        >>> with tempfile.NamedTemporaryFile("wb", suffix=".jsonl", delete=False) as f:
        ...     _ = f.write(b'{"q": "a"}\\n{"q": "\\xff"}\\n{"q": "\\\\ud800"}\\n{"q": \\n')
        >>> rows, bad = read_jsonl(f.name)
        >>> rows, [reason for _, reason, _ in bad]
        ([{'q': 'a'}], ['invalid_utf8', 'lone_surrogate', 'invalid_json'])
    """
    rows: list[dict[str, Any]] = []
    bad: list[tuple[str, str, str]] = []
    with open(path, "rb") as f:
        for number, raw in enumerate(f, 1):
            where = f"line {number}"
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                bad.append((where, "invalid_utf8", str(err)))
                continue
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError as err:
                bad.append((where, "invalid_json", str(err)))
                continue
            if not isinstance(row, dict):
                bad.append((where, "not_an_object", type(row).__name__))
                continue
            try:
                json.dumps(row, ensure_ascii=False).encode("utf-8")
            except UnicodeEncodeError as err:
                bad.append((where, "lone_surrogate", str(err)))
                continue
            rows.append(row)
    return rows, bad


def load_table(
    path_or_id: str, split: str = "train", unreadable: list[tuple[str, str, str]] | None = None
) -> Any:
    """A `datasets.Dataset` from a local parquet/JSONL file or a Hugging Face hub dataset id.

    Lines of a JSONL file that cannot be read are skipped and appended to ``unreadable`` as
    ``(line, reason, detail)`` (see `read_jsonl`), for the stage report to count them.
    """
    datasets = _datasets()
    path = Path(path_or_id)
    if path.exists():
        if path.is_dir():
            return datasets.load_dataset(str(path), split=split)
        if path.suffix == ".parquet":
            return datasets.Dataset.from_parquet(str(path), keep_in_memory=True)
        if path.suffix == ".jsonl":
            rows, bad = read_jsonl(path)
            if bad and unreadable is None:
                raise ValueError(f"{path}: {len(bad)} unreadable lines, the first: {bad[0]}.")
            if unreadable is not None:
                unreadable.extend(bad)
            return datasets.Dataset.from_list(rows)
        if path.suffix == ".json":
            return datasets.Dataset.from_json(str(path), keep_in_memory=True)
        raise ValueError(f"Cannot read {path}: use a .parquet, .jsonl or .json file.")
    if path.suffix in _SUFFIXES or path_or_id.startswith((".", "/")):
        raise FileNotFoundError(f"No such file: {path_or_id}. Run the previous stage first or fix the path.")
    try:
        return datasets.load_dataset(path_or_id, split=split)
    except Exception as err:
        raise FileNotFoundError(
            f"Could not load {path_or_id!r} as a local file or a hub dataset ({type(err).__name__}: {err}). "
            "Pass a local .parquet/.jsonl file, or run online for hub ids."
        ) from err


def save_table(dataset: Any, path: str | os.PathLike) -> str:
    """Write ``dataset`` to ``path`` (.parquet or .jsonl) atomically; returns the path."""
    path = Path(path)
    if path.suffix not in _SUFFIXES:
        raise ValueError(f"Output {path} must end in .parquet or .jsonl.")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    if path.suffix == ".parquet":
        dataset.to_parquet(str(tmp))
    else:
        dataset.to_json(str(tmp), lines=True, force_ascii=False)
    os.replace(tmp, path)
    return str(path)


def parse_metadata(value: Any) -> dict[str, Any]:
    """s1's ``metadata`` column: a dict, a JSON string, or a Python-literal string; ``{}`` otherwise."""
    if isinstance(value, dict):
        return value
    if isinstance(value, str) and value.strip().startswith("{"):
        try:
            loaded = json.loads(value)
        except ValueError:
            import ast

            try:
                loaded = ast.literal_eval(value)
            except (ValueError, SyntaxError, MemoryError, RecursionError):
                return {}
        return loaded if isinstance(loaded, dict) else {}
    return {}


def get_path_value(row: dict[str, Any], dotted: str) -> Any:
    """``row["a"]["b"]`` for ``"a.b"``; string metadata is parsed; ``None`` when absent."""
    head, _, rest = dotted.partition(".")
    value = row.get(head)
    for part in rest.split(".") if rest else []:
        value = parse_metadata(value).get(part)
    return value


@dataclass
class StageReport:
    """Rows in/out per step of one stage, and every dropped row with its reason."""

    stage: str
    rows_in: int
    input: str | None = None
    output: str | None = None
    steps: list[dict[str, Any]] = field(default_factory=list)
    dropped: list[dict[str, Any]] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    started: float = field(default_factory=time.time)

    @property
    def rows_out(self) -> int:
        return self.rows_in - len(self.dropped)

    def step(self, name: str, rows_in: int, dropped: list[tuple[Any, str, str]]) -> None:
        """Record one filter: ``dropped`` holds ``(row_id, reason, detail)`` per dropped row."""
        reasons: dict[str, int] = {}
        for row_id, reason, detail in dropped:
            reasons[reason] = reasons.get(reason, 0) + 1
            self.dropped.append({"id": row_id, "step": name, "reason": reason, "detail": detail})
        self.steps.append(
            {"name": name, "rows_in": rows_in, "rows_out": rows_in - len(dropped), "dropped": reasons}
        )

    def unreadable(self, bad: list[tuple[str, str, str]]) -> None:
        """Count the input's unreadable rows (``(line, reason, detail)``) as the stage's first step."""
        if not bad:
            return
        self.rows_in += len(bad)
        first = StageReport(self.stage, self.rows_in)
        first.step("read_input", self.rows_in, bad)
        self.steps.insert(0, first.steps[0])
        self.dropped[:0] = first.dropped

    def warn(self, message: str) -> None:
        import logging

        logging.getLogger("budget_forcing.selection").warning(message)
        self.warnings.append(message)

    def to_dict(self) -> dict[str, Any]:
        return {
            "stage": self.stage,
            "input": self.input,
            "output": self.output,
            "rows_in": self.rows_in,
            "rows_out": self.rows_out,
            "seconds": round(time.time() - self.started, 3),
            "steps": self.steps,
            "info": self.info,
            "warnings": self.warnings,
            "dropped": self.dropped,
        }

    def summary(self) -> str:
        lines = [f"[{self.stage}] {self.rows_in} rows in -> {self.rows_out} rows out"]
        if self.input or self.output:
            lines.append(f"  input:  {self.input}\n  output: {self.output}")
        for step in self.steps:
            reasons = ", ".join(f"{k}: {v}" for k, v in sorted(step["dropped"].items())) or "nothing dropped"
            lines.append(f"  {step['name']:<28} {step['rows_in']:>7} -> {step['rows_out']:>7}  ({reasons})")
        for key, value in self.info.items():
            if isinstance(value, (dict, list)) and len(json.dumps(value, default=str)) > 300:
                continue
            lines.append(f"  {key}: {value}")
        lines.extend(f"  WARNING: {w}" for w in self.warnings)
        return "\n".join(lines)

    def write(self, reports_dir: str | os.PathLike) -> Path:
        """Write ``<stage>.json`` and ``<stage>.txt`` under ``reports_dir``; returns the JSON path."""
        reports_dir = Path(reports_dir)
        reports_dir.mkdir(parents=True, exist_ok=True)
        path = reports_dir / f"{self.stage}.json"
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(self.to_dict(), indent=1, default=str))
        os.replace(tmp, path)
        (reports_dir / f"{self.stage}.txt").write_text(self.summary() + "\n")
        return path


def ensure_ids(dataset: Any, id_column: str) -> Any:
    """Add ``id_column`` (the row index) when the dataset has none; ids must be unique."""
    if id_column not in dataset.column_names:
        return dataset.add_column(id_column, list(range(len(dataset))))
    ids = column(dataset, id_column)
    if len(set(ids)) != len(ids):
        raise ValueError(
            f"Column {id_column!r} has duplicate ids; set `id_column` to a unique column or a new name."
        )
    return dataset


def column(dataset: Any, name: str) -> list[Any]:
    """A column as a Python list, read through Arrow (much faster than iterating rows)."""
    return dataset.with_format("arrow")[name].to_pylist()
