"""Stage 2: the features selection needs, computed once and cached.

For every question:

* ``attempt_<name>``: the attempt of each base model (``featurize.base_models``);
* ``correct_<name>``: whether that attempt is right, and ``teacher_correct`` for the teacher's
  attempt: math-verify when the reference answer is checkable (a ``\\boxed{}`` answer in the
  solution, or a short one-line solution), otherwise the judge (``featurize.judge``), whose last
  line says "Yes" or "No";
* ``domain``: the MSC two-digit class from the classifier, or the value of ``domain_column``;
* ``trace_tokens``: the teacher trace's length in tokens of ``featurize.tokenizer``;
* ``feature_errors``: why a feature is missing (failed calls, unparsable replies); the filter
  stage drops those rows with reason ``missing_feature``.

Every call and computed value is committed to the cache (:class:`~budget_forcing.selection.cache.Cache`)
under ``(stage, model, hash)`` as soon as it exists: rerunning after a crash redoes nothing.

Example:
    >>> from budget_forcing.selection.featurize import parse_judge, parse_domain, reference_answer
    >>> parse_judge("The answers agree.\\nYes"), reference_answer("So it is $\\\\boxed{12}$.", 40)
    (True, '12')
    >>> parse_domain("This is number theory.\\n11", {"11": "Number theory"})
    '11'
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .backends import ChatBackend, make_backend
from .cache import Cache
from .config import ModelConfig, SelectionConfig
from .io import StageReport, column, get_path_value
from .text import text_hash

__all__ = [
    "featurize",
    "feature_columns",
    "reference_answer",
    "parse_judge",
    "parse_domain",
    "load_prompts",
    "load_domains",
    "render_prompt",
    "first_text",
]

DATA_DIR = Path(__file__).parent / "data"
_PLACEHOLDER = re.compile(r"\{(question|solution|attempt|domains)\}")


def load_prompts(prompts_dir: str | None = None) -> dict[str, str]:
    """The prompt templates ``attempt``, ``judge`` and ``classify`` (text files with ``{question}`` etc.)."""
    root = Path(prompts_dir) if prompts_dir else DATA_DIR / "prompts"
    prompts = {}
    for name in ("attempt", "judge", "classify"):
        path = root / f"{name}.txt"
        if not path.exists():
            raise FileNotFoundError(
                f"Prompt file {path} is missing; `featurize.prompts_dir` needs {name}.txt."
            )
        prompts[name] = path.read_text()
    return prompts


def load_domains(path: str | None = None) -> dict[str, str]:
    """MSC two-digit codes -> names from the shipped JSON (or ``path`` with the same shape)."""
    data = json.loads(Path(path or DATA_DIR / "msc_domains.json").read_text())
    return dict(data["domains"])


def render_prompt(template: str, **values: str) -> str:
    """Fill ``{question}``/``{solution}``/``{attempt}``/``{domains}`` in one pass (LaTeX braces are safe)."""
    return _PLACEHOLDER.sub(lambda m: values.get(m.group(1), m.group(0)), template)


def first_text(value: Any) -> str | None:
    """A trace/attempt cell as text: s1K stores traces as a one-element list."""
    if isinstance(value, (list, tuple)):
        value = value[0] if value else None
    return value if isinstance(value, str) and value.strip() else None


def reference_answer(solution: str | None, max_plain_chars: int) -> str | None:
    """The answer math-verify can check against: the last ``\\boxed{}`` of the solution, or the whole
    solution when it is one short line; ``None`` when only a judge can grade it."""
    from budget_forcing.grading import extract_boxed

    if not solution or not solution.strip():
        return None
    boxed = extract_boxed(solution)
    if boxed:
        return boxed
    text = solution.strip()
    if "\n" not in text and len(text) <= max_plain_chars:
        return text
    return None


def parse_judge(reply: str) -> bool | None:
    """The verdict: the last line that is just "Yes" or "No" (markdown and punctuation ignored), else ``None``."""
    verdicts = re.findall(r"(?im)^[\W_]*(yes|no)[\W_]*$", reply)
    return None if not verdicts else verdicts[-1].lower() == "yes"


def parse_domain(reply: str, domains: dict[str, str]) -> str | None:
    """The last known two-digit MSC code in the reply (last line first)."""
    lines = [line for line in reply.strip().splitlines() if line.strip()]
    for text in ([lines[-1]] if lines else []) + [reply]:
        codes = [c for c in re.findall(r"(?<!\d)(\d{2})(?!\d)", text) if c in domains]
        if codes:
            return codes[-1]
    return None


def _safe(name: str) -> str:
    return re.sub(r"\W", "_", name)


def feature_columns(config: SelectionConfig) -> list[str]:
    """The columns featurize writes (what the filter stage requires by default)."""
    fc = config.featurize
    cols = [c for m in fc.base_models for c in (f"attempt_{_safe(m.name)}", f"correct_{_safe(m.name)}")]
    if fc.grade_teacher:
        cols.append("teacher_correct")
    return [*cols, "domain", "trace_tokens"]


def _fingerprint(*parts: Any) -> str:
    return text_hash(*map(str, parts))[:12]


class _Runner:
    """Cached calls and computations, with per-stage counts for the report."""

    def __init__(self, cache: Cache, backends: dict[str, ChatBackend] | None) -> None:
        self.cache = cache
        self.backends = backends if backends is not None else {}
        self.stats: dict[str, dict[str, int]] = {}

    def backend(self, model: ModelConfig) -> ChatBackend:
        if model.name not in self.backends:
            self.backends[model.name] = make_backend(model)
        return self.backends[model.name]

    def calls(
        self, stage: str, model: ModelConfig, requests: dict[str, list[dict[str, str]]], desc: str
    ) -> tuple[dict[str, str], dict[str, str]]:
        from tqdm.auto import tqdm

        model_key = f"{model.backend}:{model.model}"
        results = self.cache.get_many(stage, model_key, list(requests))
        missing = [k for k in requests if k not in results]
        errors: dict[str, str] = {}
        stats = self.stats.setdefault(
            f"{stage} {model.name}", {"cached": len(results), "called": 0, "failed": 0}
        )
        if missing:
            outputs = self.backend(model).generate([requests[k] for k in missing])
            for index, out in tqdm(outputs, total=len(missing), desc=desc, leave=False):
                key = missing[index]
                if isinstance(out, Exception):
                    errors[key] = str(out)
                    stats["failed"] += 1
                    continue
                self.cache.put(stage, model_key, key, out)
                results[key] = out
                stats["called"] += 1
        return results, errors

    def compute(
        self, stage: str, model: str, items: dict[str, Any], fn: Callable[[list[Any]], list[Any]], desc: str
    ) -> dict[str, Any]:
        """``fn`` maps a batch of items to their values; each batch is committed as it finishes."""
        from tqdm.auto import tqdm

        results = self.cache.get_many(stage, model, list(items))
        missing = [k for k in items if k not in results]
        stats = self.stats.setdefault(f"{stage} {model}", {"cached": len(results), "called": 0, "failed": 0})
        with tqdm(total=len(missing), desc=desc, leave=False) as progress:
            for start in range(0, len(missing), 256):
                keys = missing[start : start + 256]
                values = fn([items[k] for k in keys])
                results.update(zip(keys, values, strict=True))
                self.cache.put_many(stage, model, list(zip(keys, values, strict=True)))
                stats["called"] += len(keys)
                progress.update(len(keys))
        return results


def _count_tokens(tokenizer: Any) -> Callable[[list[str]], list[int]]:
    def count(texts: list[str]) -> list[int]:
        return [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]

    return count


def featurize(
    dataset: Any, config: SelectionConfig, cache: Cache, backends: dict[str, ChatBackend] | None = None
) -> tuple[Any, StageReport]:
    """The dataset with feature columns added, and the report (featurize drops no rows)."""
    fc = config.featurize
    report = StageReport("featurize", rows_in=len(dataset))
    prompts = load_prompts(fc.prompts_dir)
    runner = _Runner(cache, backends)
    rows = len(dataset)
    columns = dataset.column_names
    for needed in (config.question_column, config.solution_column):
        if needed not in columns:
            raise ValueError(
                f"The input has no {needed!r} column (it has {columns}); fix `question/solution_column`."
            )
    questions = [q if isinstance(q, str) else "" for q in column(dataset, config.question_column)]
    solutions = column(dataset, config.solution_column)
    qkeys = [text_hash(q) for q in questions]
    errors: list[list[str]] = [[] for _ in range(rows)]
    new: dict[str, list[Any]] = {}

    names = [_safe(m.name) for m in fc.base_models]
    if len(set(names)) != len(names):
        raise ValueError(f"Base model names must be unique, got {[m.name for m in fc.base_models]}.")

    # (a) attempts by base models
    attempts: dict[str, list[str | None]] = {}
    for model, name in zip(fc.base_models, names, strict=True):
        stage = "attempt:" + _fingerprint(prompts["attempt"], model.temperature, model.max_tokens)
        requests = {
            k: [{"role": "user", "content": render_prompt(prompts["attempt"], question=q)}]
            for k, q in zip(qkeys, questions, strict=True)
        }
        results, failed = runner.calls(stage, model, requests, f"attempts {model.name}")
        attempts[name] = [results.get(k) for k in qkeys]
        for i, k in enumerate(qkeys):
            if k in failed:
                errors[i].append(f"attempt_{name}: {failed[k]}")
        new[f"attempt_{name}"] = attempts[name]

    # (b) grading: math-verify where the reference is checkable, else (or on request) the judge
    refs = [reference_answer(s, fc.max_plain_answer_chars) if isinstance(s, str) else None for s in solutions]
    # An empty or missing solution gives nothing to grade against: neither math-verify nor the judge.
    has_solution = [isinstance(s, str) and bool(s.strip()) for s in solutions]
    to_grade: dict[str, list[str | None]] = {f"correct_{n}": attempts[n] for n in names}
    if fc.grade_teacher:
        if fc.attempt_column not in columns:
            raise ValueError(
                f"The input has no teacher attempt column {fc.attempt_column!r}; set `featurize.attempt_column` "
                "or `featurize.grade_teacher: false`."
            )
        to_grade["teacher_correct"] = [first_text(a) for a in column(dataset, fc.attempt_column)]
    methods: dict[str, dict[str, int]] = {}

    def mv_grade(items: list[tuple[str, str]]) -> list[bool]:
        from budget_forcing.grading import grade

        verdicts = []
        for prediction, gold in items:
            try:
                verdicts.append(bool(grade(prediction, gold)))
            except Exception:  # math-verify can time out or choke on odd LaTeX: not verified
                verdicts.append(False)
        return verdicts

    mv_items = {
        text_hash(refs[i], preds[i]): (preds[i], refs[i])
        for preds in to_grade.values()
        for i in range(rows)
        if preds[i] is not None and refs[i] is not None
    }
    mv = runner.compute("grade:math_verify", "math-verify", mv_items, mv_grade, "math-verify grading")

    judge_requests: dict[str, list[dict[str, str]]] = {}
    need_judge: dict[str, list[str | None]] = {}
    for target, preds in to_grade.items():
        keys: list[str | None] = []
        for i in range(rows):
            pred, ref = preds[i], refs[i]
            use_judge = pred is not None and (
                ref is None or (fc.judge_when_math_verify_fails and not mv[text_hash(ref, pred)])
            )
            if use_judge and fc.judge is not None and has_solution[i]:
                key = text_hash(questions[i], solutions[i], pred)
                text = render_prompt(
                    prompts["judge"], question=questions[i], solution=solutions[i], attempt=pred
                )
                judge_requests[key] = [{"role": "user", "content": text}]
                keys.append(key)
            else:
                keys.append(None)
        need_judge[target] = keys
    verdicts: dict[str, str] = {}
    judge_failed: dict[str, str] = {}
    if judge_requests and fc.judge is not None:
        stage = "judge:" + _fingerprint(prompts["judge"], fc.judge.temperature, fc.judge.max_tokens)
        verdicts, judge_failed = runner.calls(stage, fc.judge, judge_requests, "judge")

    for target, preds in to_grade.items():
        values: list[bool | None] = []
        counts = methods.setdefault(target, {"math_verify": 0, "judge": 0, "missing": 0})
        for i in range(rows):
            pred, ref, jkey = preds[i], refs[i], need_judge[target][i]
            value: bool | None = None
            if pred is None:
                if not target.startswith("correct_"):
                    errors[i].append(f"{target}: no teacher attempt")
            elif jkey is not None:
                if jkey in verdicts:
                    value = parse_judge(verdicts[jkey])
                    if value is None:
                        errors[i].append(f"{target}: judge reply has no Yes/No verdict")
                else:
                    errors[i].append(
                        f"{target}: judge call failed: {judge_failed.get(jkey, 'unknown error')}"
                    )
            elif ref is not None:
                value = bool(mv[text_hash(ref, pred)])
            elif not has_solution[i]:
                errors[i].append(
                    f"{target}: no reference solution (empty or missing): nothing to grade against"
                )
            else:
                errors[i].append(
                    f"{target}: reference answer not checkable by math-verify and no judge configured"
                )
            method = "missing" if value is None else "judge" if jkey is not None else "math_verify"
            counts[method] += 1
            values.append(value)
        new[target] = values
    report.info["grading"] = methods

    # (c) domain
    if fc.domain_column:
        records = dataset.select_columns([fc.domain_column.split(".")[0]]).to_list()
        domain = [get_path_value(r, fc.domain_column) for r in records]
        domain = [None if d is None or (isinstance(d, str) and not d.strip()) else str(d) for d in domain]
        for i, d in enumerate(domain):
            if d is None:
                errors[i].append(f"domain: no value in column {fc.domain_column!r}")
        report.info["domain_source"] = f"column {fc.domain_column}"
    elif fc.classifier is not None:
        msc = load_domains(fc.msc_domains)
        listing = "\n".join(f"{code}: {name}" for code, name in msc.items())
        stage = "classify:" + _fingerprint(prompts["classify"], listing, fc.classifier.temperature)
        requests = {
            k: [{"role": "user", "content": render_prompt(prompts["classify"], question=q, domains=listing)}]
            for k, q in zip(qkeys, questions, strict=True)
        }
        replies, failed = runner.calls(stage, fc.classifier, requests, "domain classification")
        domain = []
        for i, k in enumerate(qkeys):
            code = parse_domain(replies[k], msc) if k in replies else None
            if code is None:
                errors[i].append(
                    f"domain: {failed[k]}" if k in failed else "domain: no MSC code in the reply"
                )
            domain.append(code)
        report.info["domain_source"] = f"classifier {fc.classifier.name}"
    else:
        raise ValueError("Set `featurize.classifier` (an endpoint) or `featurize.domain_column` (a column).")
    new["domain"] = domain

    # (d) trace length
    if fc.trace_column not in columns:
        raise ValueError(f"The input has no trace column {fc.trace_column!r}; set `featurize.trace_column`.")
    traces = [first_text(t) for t in column(dataset, fc.trace_column)]
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(fc.tokenizer)
    count = _count_tokens(tokenizer)
    trace_items = {text_hash(t): t for t in traces if t is not None}
    lengths = runner.compute("tokens", fc.tokenizer, trace_items, count, "trace lengths")
    new["trace_tokens"] = [lengths[text_hash(t)] if t is not None else None for t in traces]
    for i, t in enumerate(traces):
        if t is None:
            errors[i].append(f"trace_tokens: empty trace in {fc.trace_column!r}")
    new["feature_errors"] = errors

    drop = [c for c in new if c in columns]
    if drop:
        dataset = dataset.remove_columns(drop)
    for name, values in new.items():
        dataset = dataset.add_column(name, values)
    report.step("featurize", rows, [])
    report.info["calls"] = runner.stats
    report.info["rows_with_missing_features"] = sum(1 for e in errors if e)
    return dataset, report
