"""Configuration of the selection recipe: dataclasses that map 1:1 to the YAML recipes.

A recipe is a YAML file with top-level fields of :class:`SelectionConfig` and one section per
stage (``decontaminate``, ``featurize``, ``filter``, ``select``, ``format``). Unknown keys are an
error that names the valid ones, so a typo never silently falls back to a default.

Example:
    >>> from budget_forcing.selection.config import config_from_dict
    >>> config = config_from_dict({"output_dir": "out", "select": {"n": 10}})
    >>> config.select.n, config.select.method
    (10, 's1k')
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from typing import Any

from budget_forcing.tasks import TASKS_DIR

__all__ = [
    "ModelConfig",
    "DecontaminateConfig",
    "FeaturizeConfig",
    "FilterConfig",
    "SelectConfig",
    "FormatConfig",
    "SelectionConfig",
    "config_from_dict",
    "config_to_dict",
    "apply_overrides",
]

#: The sample files of the packaged lm-eval tasks (``budget_forcing/tasks/data``).
DEFAULT_EVAL_FILES = [str(TASKS_DIR / "data" / "*.jsonl")]
DEFAULT_FORMAT_PATTERNS: dict[str, str] = {
    # ASCII-art diagrams (Asymptote); exempt for the sources listed in `asy_exempt_sources`.
    "asy": r"\[asy\]",
    # Images the model cannot see: markdown/HTML images, image files, LaTeX graphics, "see figure".
    "image": (
        r"!\[[^\]]*\]\([^)]*\)|<img\b|\\includegraphics|\b[\w/.-]+\.(?:png|jpe?g|gif|svg|bmp)\b"
        r"|\b(?:see|in|shown in) the (?:figure|image|picture|diagram) (?:below|above)\b"
    ),
    # Inconsistent question numbering left over from scraped problem sets: "p1.", "p12."
    "numbering": r"(?:^|\s)[pP]\d{1,3}\.(?=\s|$)",
    # Bold-with-digits artefacts: "**1.**", "**2)**", "**3**"
    "bold_digits": r"\*\*\s*\d+\s*[.):]?\s*\*\*",
}


@dataclass
class ModelConfig:
    """One model used through a backend: an OpenAI-compatible endpoint or a local HF model."""

    name: str = field(metadata={"help": "Short alias used in column names (`attempt_<name>`) and reports."})
    model: str = field(
        metadata={"help": "Model id sent to the endpoint, or a local path / hub id for `local`."}
    )
    backend: str = field(
        default="openai", metadata={"help": "`openai` (any OpenAI-compatible server) or `local`."}
    )
    base_url: str = field(
        default="http://127.0.0.1:8000/v1",
        metadata={
            "help": "Base URL of the OpenAI-compatible server (what `vllm serve` exposes), up to `/v1`."
        },
    )
    api_key_env: str = field(
        default="OPENAI_API_KEY",
        metadata={
            "help": "Name of the environment variable holding the API key (never logged). Unset: no key."
        },
    )
    temperature: float = field(default=0.05, metadata={"help": "Sampling temperature (the paper: 0.05)."})
    max_tokens: int = field(default=4096, metadata={"help": "Maximum new tokens per call."})
    max_concurrency: int = field(default=16, metadata={"help": "Requests in flight at once (`openai`)."})
    max_retries: int = field(
        default=6,
        metadata={
            "help": "Retries per request (the openai client's: network errors, 408/409/429, 5xx; and empty replies)."
        },
    )
    timeout_seconds: float = field(default=600.0, metadata={"help": "Per-request timeout."})
    batch_size: int = field(default=8, metadata={"help": "Prompts per `generate` call (`local`)."})
    device: str = field(default="cpu", metadata={"help": "Device of the local model (`local`)."})
    thinking_budget: int | None = field(
        default=None,
        metadata={
            "help": "`local` reasoning models: cap thinking at this many tokens with budget forcing "
            "(`budget_forcing.BudgetForcing`); null = plain generate."
        },
    )
    thinking_format: str = field(
        default="auto", metadata={"help": "Thinking format for `thinking_budget`: auto, s1 or think."}
    )
    num_threads: int | None = field(
        default=None,
        metadata={
            "help": "torch CPU threads for the local model (1 on shared machines); null = torch's default."
        },
    )


@dataclass
class DecontaminateConfig:
    """Stage 1: n-gram decontamination against evaluation sets, cross-source and exact dedup."""

    input: str | None = field(default=None, metadata={"help": "Input file or hub id; default: the pool."})
    output: str | None = field(
        default=None, metadata={"help": "Output file; default `<output_dir>/decontaminated.parquet`."}
    )
    eval_files: list[str] = field(
        default_factory=lambda: list(DEFAULT_EVAL_FILES),
        metadata={
            "help": "Evaluation sets (JSONL/parquet). Missing default files are skipped with a warning."
        },
    )
    extra_eval_files: list[str] = field(
        default_factory=list, metadata={"help": "More evaluation sets; these must exist (`--eval_files`)."}
    )
    eval_text_columns: list[str] = field(
        default_factory=lambda: ["problem", "question", "Question"],
        metadata={"help": "Text column of an evaluation file: the first of these that it has."},
    )
    require_eval_sets: bool = field(
        default=False, metadata={"help": "Fail instead of warning when no evaluation set could be loaded."}
    )
    ngram: int = field(default=8, metadata={"help": "Word n-gram size (the paper: 8)."})
    exact_dedup: bool = field(default=True, metadata={"help": "Drop exact duplicates (after normalisation)."})
    cross_source_dedup: bool = field(
        default=True, metadata={"help": "Drop near-duplicates of other sources."}
    )
    cross_source_overlap: float = field(
        default=0.5,
        metadata={
            "help": "A row duplicates another source when at least this share of its n-grams were seen "
            "in rows of other sources kept before it (pool order)."
        },
    )


@dataclass
class FeaturizeConfig:
    """Stage 2: base-model attempts, grading, domain and trace length."""

    input: str | None = field(
        default=None, metadata={"help": "Default `<output_dir>/decontaminated.parquet`."}
    )
    output: str | None = field(default=None, metadata={"help": "Default `<output_dir>/featurized.parquet`."})
    base_models: list[ModelConfig] = field(
        default_factory=list,
        metadata={"help": "Models whose attempts define difficulty (the paper: Qwen2.5-7B/32B-Instruct)."},
    )
    judge: ModelConfig | None = field(
        default=None,
        metadata={"help": "Grader for references math-verify cannot check; null = math-verify only."},
    )
    classifier: ModelConfig | None = field(
        default=None, metadata={"help": "MSC domain classifier; null = read `domain_column`."}
    )
    domain_column: str | None = field(
        default=None,
        metadata={
            "help": "Take the domain from this column (dotted paths read into `metadata`, e.g. `metadata.domain`)."
        },
    )
    tokenizer: str = field(
        default="Qwen/Qwen2.5-32B-Instruct", metadata={"help": "Tokenizer that measures trace length."}
    )
    trace_column: str = field(
        default="thinking_trajectories", metadata={"help": "Teacher reasoning trace column."}
    )
    attempt_column: str = field(
        default="attempt", metadata={"help": "Teacher attempt (final answer) column."}
    )
    grade_teacher: bool = field(
        default=True, metadata={"help": "Grade the teacher's attempt (Algorithm 1 needs it)."}
    )
    judge_when_math_verify_fails: bool = field(
        default=False,
        metadata={
            "help": "Ask the judge when math-verify says 'wrong' on a checkable reference (costs calls)."
        },
    )
    max_plain_answer_chars: int = field(
        default=40,
        metadata={
            "help": "A reference without \\boxed{} is checkable by math-verify when it is one line this short."
        },
    )
    cache: str | None = field(
        default=None, metadata={"help": "SQLite cache; default `<output_dir>/cache.sqlite`."}
    )
    prompts_dir: str | None = field(
        default=None,
        metadata={"help": "Directory with attempt.txt/judge.txt/classify.txt; default: shipped prompts."},
    )
    msc_domains: str | None = field(
        default=None, metadata={"help": "MSC domain list JSON; default: shipped list."}
    )


@dataclass
class FilterConfig:
    """Stage 3a: quality filters (missing features, formatting) and the difficulty filter."""

    input: str | None = field(default=None, metadata={"help": "Default `<output_dir>/featurized.parquet`."})
    output: str | None = field(default=None, metadata={"help": "Default `<output_dir>/filtered.parquet`."})
    quality_output: str | None = field(
        default=None,
        metadata={"help": "Rows passing quality filters only; default `<output_dir>/quality.parquet`."},
    )
    required_features: list[str] | None = field(
        default=None, metadata={"help": "Columns that must be non-null; null = every feature column present."}
    )
    format_patterns: dict[str, str] = field(
        default_factory=lambda: dict(DEFAULT_FORMAT_PATTERNS),
        metadata={
            "help": "name -> regex on the question; a match drops the row with reason `format_<name>`."
        },
    )
    asy_exempt_sources: list[str] = field(
        default_factory=lambda: ["aime"],
        metadata={"help": "Sources (substring of source_type) where [asy] is fine."},
    )
    difficulty: bool = field(default=True, metadata={"help": "Drop questions any base model solves."})
    difficulty_models: list[str] | None = field(
        default=None, metadata={"help": "Base-model names for the difficulty filter; null = all featurized."}
    )


@dataclass
class SelectConfig:
    """Stage 3b: Algorithm 1 (method `s1k`) and the ablations."""

    input: str | None = field(default=None, metadata={"help": "Default `<output_dir>/filtered.parquet`."})
    output: str | None = field(default=None, metadata={"help": "Default `<output_dir>/selected.parquet`."})
    n: int = field(default=1000, metadata={"help": "Number of questions to select."})
    method: str = field(default="s1k", metadata={"help": "`s1k`, `random`, `diverse`, `longest` or `full`."})
    ablations: list[str] = field(
        default_factory=list,
        metadata={
            "help": "Extra methods `all` runs (`<output_dir>/selected_<method>.parquet`), on `ablation_input`."
        },
    )
    ablation_input: str | None = field(
        default=None,
        metadata={
            "help": "Input of the ablations; default: quality-filtered rows (`full`: the decontaminated pool)."
        },
    )
    keep_sources: list[str] = field(
        default_factory=lambda: ["aime", "gpqa"],
        metadata={
            "help": "Phase 1 keeps every row of these sources (substring of source_type) the teacher got right."
        },
    )
    long_trace_sources: list[str] = field(
        default_factory=lambda: ["openaimath"],
        metadata={
            "help": "Phase 1 also keeps correct rows of these sources with traces over `long_trace_min_tokens`."
        },
    )
    long_trace_min_tokens: int = field(
        default=5600, metadata={"help": "The paper's 'very long MATH trace' threshold."}
    )
    domain_column: str = field(default="domain", metadata={"help": "Domain column (written by featurize)."})
    length_column: str = field(default="trace_tokens", metadata={"help": "Trace length column (featurize)."})
    plot: bool = field(
        default=True, metadata={"help": "Write a PNG with the domain histogram and length distribution."}
    )


@dataclass
class FormatConfig:
    """Stage 4: SFT examples with a `messages` column."""

    input: str | None = field(default=None, metadata={"help": "Default `<output_dir>/selected.parquet`."})
    output: str | None = field(default=None, metadata={"help": "Default `<output_dir>/sft.parquet`."})
    format: str = field(
        default="s1", metadata={"help": "`s1` (<|im_start|>think ... <|im_start|>answer) or `think`."}
    )
    teacher: str = field(
        default="gemini",
        metadata={
            "help": "`gemini` (s1K columns), `deepseek` (s1K-1.1 columns) or `custom` (set the columns)."
        },
    )
    trace_column: str | None = field(default=None, metadata={"help": "Trace column; null = the teacher's."})
    attempt_column: str | None = field(
        default=None, metadata={"help": "Attempt column; null = the teacher's."}
    )
    answer_prefix: str | None = field(
        default="auto",
        metadata={
            "help": "Prepended to the attempt when absent; `auto` = 'Answer: ' for s1, none for think."
        },
    )
    system_prompt: str | None = field(default=None, metadata={"help": "Optional system message."})


@dataclass
class SelectionConfig:
    """The whole recipe."""

    output_dir: str = field(default="outputs/s1k", metadata={"help": "Where stage outputs and reports go."})
    pool: str = field(
        default="simplescaling/data_ablation_full59K",
        metadata={"help": "Pool: a hub dataset id or a local file."},
    )
    pool_split: str = field(default="train", metadata={"help": "Split of a hub pool."})
    seed: int = field(default=42, metadata={"help": "Seed of every random choice (numpy Generator)."})
    id_column: str = field(
        default="row_id", metadata={"help": "Row id column; added (pool index) when the pool has none."}
    )
    question_column: str = field(default="question", metadata={"help": "Question text column."})
    solution_column: str = field(default="solution", metadata={"help": "Reference solution column."})
    source_column: str = field(default="source_type", metadata={"help": "Source dataset column."})
    decontaminate: DecontaminateConfig = field(
        default_factory=DecontaminateConfig, metadata={"help": "Stage 1."}
    )
    featurize: FeaturizeConfig = field(default_factory=FeaturizeConfig, metadata={"help": "Stage 2."})
    filter: FilterConfig = field(default_factory=FilterConfig, metadata={"help": "Stage 3a."})
    select: SelectConfig = field(default_factory=SelectConfig, metadata={"help": "Stage 3b."})
    format: FormatConfig = field(default_factory=FormatConfig, metadata={"help": "Stage 4."})


def _build(cls: type, data: Any, where: str) -> Any:
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise TypeError(f"`{where or 'config'}` must be a mapping, got {type(data).__name__}.")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ValueError(f"Unknown key(s) {unknown} in `{where or 'config'}`; valid keys: {sorted(names)}.")
    kwargs: dict[str, Any] = {}
    for name, value in data.items():
        kwargs[name] = _convert(hints[name], value, f"{where}.{name}".lstrip("."))
    try:
        return cls(**kwargs)
    except TypeError as err:
        raise ValueError(f"`{where or 'config'}`: {err}") from err


def _convert(hint: Any, value: Any, where: str) -> Any:
    if value is None:
        return None
    origin = typing.get_origin(hint)
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)) and args:
        return _convert(args[0], value, where)
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, where)
    if origin is list:
        if not isinstance(value, list):
            raise TypeError(f"`{where}` must be a list, got {value!r}.")
        return [_convert(args[0], v, f"{where}[{i}]") for i, v in enumerate(value)] if args else value
    if origin is dict:
        if not isinstance(value, dict):
            raise TypeError(f"`{where}` must be a mapping, got {value!r}.")
        return dict(value)
    if hint is float and isinstance(value, int):
        return float(value)
    if hint in (int, float, str, bool) and not isinstance(value, hint):
        raise TypeError(f"`{where}` must be {hint.__name__}, got {value!r}.")
    return value


def config_from_dict(data: dict[str, Any] | None) -> SelectionConfig:
    """Build a :class:`SelectionConfig` from a (YAML-loaded) mapping, checking names and types."""
    return _build(SelectionConfig, data or {}, "")


def config_to_dict(config: SelectionConfig) -> dict[str, Any]:
    """The config as plain data (what a YAML recipe holds)."""
    return dataclasses.asdict(config)


def apply_overrides(data: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """Set dotted keys (``{"select.n": 10}``) in a nested mapping, in place; returns it."""
    for dotted, value in overrides.items():
        node = data
        parts = dotted.split(".")
        for part in parts[:-1]:
            if node.get(part) is None:
                node[part] = {}
            node = node[part]
            if not isinstance(node, dict):
                raise ValueError(f"Cannot set `{dotted}`: `{part}` is not a section.")
        node[parts[-1]] = value
    return data
