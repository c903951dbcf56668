"""Test-time scaling sweeps: accuracy against thinking tokens for budget forcing and s1's baselines.

Every point of a sweep is one lm-eval evaluation (``lm_eval.simple_evaluate``) with ONE loaded
``hf-budget-forcing`` model; the budget of a point goes in as lm-eval ``gen_kwargs`` and the thinking
tokens really spent come from the model's per-sample records. Methods (``--methods``):

* ``budget_forcing``: a maximum of ``B`` thinking tokens for each of ``--budgets``, then the
  largest cap with ``N`` "Wait"s for each of ``--waits`` (s1's extrapolation). Bounds: ``[0, B]``.
* ``token_conditional``: the question ends with "Think for up to B tokens." (no forcing; the cap is
  ``--max_thinking``). ``token_conditional_bf``: the same prompt plus a budget-forcing cap of ``B``.
* ``class_conditional``: "Think for a short time." / "Think for a long time."; bounds ``[0, S]`` and
  ``[S, inf)`` with ``S = --class_split`` (default: median of the budgets).
* ``rejection_sampling``: from ``--samples`` sampled generations per question, take the first one
  whose thinking fits ``B`` (the last one when none does; ``accepted`` in the point says how often).
* ``majority_voting``: parallel scaling, majority vote over the first ``N`` samples for each of
  ``--vote_samples`` (answers grouped by math-verify equivalence; thinking tokens summed over the
  ``N`` samples, the compute really spent).

The sampled generations (``--samples`` runs at ``--temperature``, seeds ``seed + i``) are shared by
rejection sampling and majority voting. Each evaluation is saved under ``<output_dir>/runs/`` keyed
by a hash of everything that determines it, so a rerun skips finished points (resumable) and a
changed setting never reuses a stale one. Results: ``<output_dir>/scaling.json`` (points and the
paper's Control / Scaling / Performance per method and task) and ``<output_dir>/scaling.png``
(accuracy vs average thinking tokens, one curve per method, log-x).

Usage (from the repository root)::

    python benchmarks/scaling.py --model simplescaling/s1.1-1.5B --tasks aime24_bf \\
        --budgets 512 1024 2048 4096 8192 --waits 2 4 6 --methods budget_forcing token_conditional \\
        --device cuda --dtype bfloat16 --batch_size 30 --output_dir scaling_aime24

    # a local model and your own task directory (a task graded by exact_match):
    python benchmarks/scaling.py --model path/to/model --include_path my_tasks --tasks my_task \\
        --budgets 16 32 64 --waits 1 2 --device cpu --format s1 --answer_tokens 32

Python::

    from benchmarks.scaling import SweepConfig, run_sweep
    results = run_sweep(SweepConfig(model="path/to/model", tasks=["my_task"], include_path=["my_tasks"]))
"""

from __future__ import annotations

import hashlib
import json
import math
import statistics
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from budget_forcing.tasks import TASKS_DIR

METHODS = (
    "budget_forcing",
    "token_conditional",
    "token_conditional_bf",
    "class_conditional",
    "rejection_sampling",
    "majority_voting",
)
TOKEN_PROMPT = "Think for up to {budget} tokens."
CLASS_PROMPTS = {"short": "Think for a short time.", "long": "Think for a long time."}
LETTERS = "ABCD"
BACKENDS = ("hf", "vllm")
#: Budget settings that the vLLM backend takes per request (``extra_args``), not as model arguments.
VLLM_REQUEST_KEYS = ("wait", "answer_prefix", "max_answer_tokens")


@dataclass
class SweepConfig:
    """What to sweep; every field is a command-line flag of the same name."""

    model: str = field(metadata={"help": "Model id or local directory (lm-eval's `pretrained`)."})
    tasks: list[str] = field(default_factory=lambda: ["aime24_bf"], metadata={"help": "lm-eval task names."})
    include_path: list[str] = field(
        default_factory=list,
        metadata={"help": "Extra task directories (budget_forcing's packaged tasks are always included)."},
    )
    output_dir: str = field(default="scaling_results", metadata={"help": "Where runs, JSON and PNG go."})
    methods: list[str] = field(
        default_factory=lambda: ["budget_forcing"], metadata={"help": f"Any of {METHODS}."}
    )
    budgets: list[int] = field(
        default_factory=lambda: [512, 1024, 2048, 4096, 8192], metadata={"help": "Maximum thinking tokens."}
    )
    waits: list[int] = field(default_factory=lambda: [2, 4, 6], metadata={"help": "Wait counts (s1: 2/4/6)."})
    max_thinking: int | None = field(
        default=None,
        metadata={"help": "Thinking cap of unforced runs (waits, prompts, sampling); default max budget."},
    )
    answer_tokens: int = field(default=256, metadata={"help": "Room for the answer after thinking (tokens)."})
    samples: int = field(
        default=8, metadata={"help": "Sampled generations per question (rejection / voting)."}
    )
    vote_samples: list[int] = field(
        default_factory=lambda: [1, 2, 4, 8], metadata={"help": "N for majority@N."}
    )
    temperature: float = field(default=0.7, metadata={"help": "Temperature of the sampled generations."})
    class_split: int | None = field(
        default=None,
        metadata={"help": "Thinking tokens between 'short' and 'long' (default: median budget)."},
    )
    limit: int | None = field(default=None, metadata={"help": "Questions per task (lm-eval --limit)."})
    batch_size: int = field(default=1, metadata={"help": "lm-eval batch size."})
    device: str | None = field(default=None, metadata={"help": "cuda / cpu (default: cuda when available)."})
    dtype: str = field(default="auto", metadata={"help": "Model dtype (auto, bfloat16, float32...)."})
    format: str = field(default="auto", metadata={"help": "Thinking format: auto, s1 or think."})
    model_args: str = field(default="", metadata={"help": "Extra lm-eval model args, 'k=v,k2=v2'."})
    apply_chat_template: bool = field(default=True, metadata={"help": "Use the model's chat template."})
    metric: str = field(default="exact_match", metadata={"help": "Per-sample metric of the tasks (0/1)."})
    seed: int = field(default=1234, metadata={"help": "Seed of greedy runs; sampled run i uses seed + i."})
    backend: str = field(
        default="hf",
        metadata={
            "help": "hf: lm-eval's `hf-budget-forcing` model (transformers generate); vllm: lm-eval's "
            "`vllm` model with the budget_forcing.vllm processor (model_args go to vllm.LLM)."
        },
    )

    def __post_init__(self) -> None:
        unknown = sorted(set(self.methods) - set(METHODS))
        if unknown:
            raise ValueError(f"Unknown methods {unknown}; choose from {list(METHODS)}.")
        if not self.budgets or any(b < 0 for b in self.budgets):
            raise ValueError(f"`budgets` must be non-negative ints, got {self.budgets}.")
        if any(w < 0 for w in self.waits):
            raise ValueError(f"`waits` must be non-negative, got {self.waits}.")
        if any(n < 1 for n in self.vote_samples) or max(self.vote_samples, default=1) > self.samples:
            raise ValueError(f"`vote_samples` {self.vote_samples} must be in 1..samples ({self.samples}).")
        if self.samples < 1:
            raise ValueError("`samples` must be >= 1.")
        if self.backend not in BACKENDS:
            raise ValueError(f"Unknown backend {self.backend!r}; choose from {list(BACKENDS)}.")

    @property
    def cap(self) -> int:
        return self.max_thinking if self.max_thinking is not None else max(self.budgets)


# ------------------------------------------------------------------------------------------ runs
@dataclass(frozen=True)
class RunSpec:
    """One lm-eval evaluation: generation settings and the prompt suffix."""

    thinking_max: int | None
    num_waits: int = 0
    suffix: str = ""
    sample: int | None = None  # index of a sampled generation; None = greedy

    def key(self, config: SweepConfig) -> str:
        fingerprint = {
            "spec": asdict(self),
            "model": config.model,
            "model_args": config.model_args,
            "tasks": config.tasks,
            "limit": config.limit,
            "format": config.format,
            "dtype": config.dtype,
            "chat": config.apply_chat_template,
            "cap": config.cap,
            "answer_tokens": config.answer_tokens,
            "temperature": config.temperature if self.sample is not None else None,
            "seed": config.seed,
        }
        if config.backend != "hf":  # runs of the default backend keep their earlier keys
            fingerprint["backend"] = config.backend
        digest = hashlib.sha256(json.dumps(fingerprint, sort_keys=True).encode()).hexdigest()[:10]
        return f"{self.setting()}-{digest}"

    def setting(self) -> str:
        """The run's setting as a file name part, e.g. ``max64``, ``max192-waits2``, ``prompt-sample3``."""
        parts = ["nomax" if self.thinking_max is None else f"max{self.thinking_max}"]
        if self.num_waits:
            parts.append(f"waits{self.num_waits}")
        if self.suffix:
            parts.append("prompt")
        if self.sample is not None:
            parts.append(f"sample{self.sample}")
        return "-".join(parts)


class Runner:
    """Loads the model once and evaluates :class:`RunSpec` s, caching each under ``runs/``."""

    def __init__(self, config: SweepConfig) -> None:
        self.config = config
        self.runs_dir = Path(config.output_dir) / "runs"
        self.runs_dir.mkdir(parents=True, exist_ok=True)
        self._lm = None
        self._task_manager = None

    def _setup(self) -> None:
        if self._lm is not None:
            return
        from lm_eval.tasks import TaskManager
        from lm_eval.utils import simple_parse_args_string

        from budget_forcing.formats import get_format

        config = self.config
        extra = simple_parse_args_string(config.model_args)
        if config.backend == "vllm":
            from budget_forcing.vllm_lm_eval import BudgetForcingVLLM

            self._request = {k: extra.pop(k) for k in VLLM_REQUEST_KEYS if k in extra}
            self._lm = BudgetForcingVLLM(
                pretrained=config.model,
                dtype=config.dtype,
                batch_size=config.batch_size,
                seed=config.seed,
                **extra,
            )
            self._format = get_format(config.format, self._lm.tokenizer)
        else:
            from budget_forcing.integrations.lm_eval import BudgetForcingLM

            device = config.device
            if device is None:
                import torch

                device = "cuda" if torch.cuda.is_available() else "cpu"
            self._lm = BudgetForcingLM(
                pretrained=config.model,
                format=config.format,
                dtype=config.dtype,
                device=device,
                batch_size=config.batch_size,
                **extra,
            )
            self._format = self._lm.thinking_format
        paths = [str(TASKS_DIR), *config.include_path]
        # Indexing lm-eval's own ~15,000 task files takes ~9 s: only when a task is not one of ours.
        self._task_manager = TaskManager(include_path=paths, include_defaults=False)
        if not set(config.tasks) <= set(self._task_manager.all_tasks):
            self._task_manager = TaskManager(include_path=paths)

    def max_gen_toks(self, thinking_max: int | None) -> int:
        from budget_forcing import end_overhead

        self._setup()
        prefix = getattr(self, "_request", {}).get("answer_prefix", "Final Answer:")
        overhead = end_overhead(self._lm.tokenizer, format=self._format, answer_prefix=prefix or None)
        return (
            (self.config.cap if thinking_max is None else thinking_max) + overhead + self.config.answer_tokens
        )

    def run(self, spec: RunSpec) -> dict[str, list[dict[str, Any]]]:
        """Per task, one row per question: correct, extracted answer and the budget statistics."""
        path = self.runs_dir / f"{spec.key(self.config)}.json"
        if path.exists():
            return json.loads(path.read_text())["tasks"]
        import lm_eval

        self._setup()
        config, lm = self.config, self._lm
        tasks = self._task_manager.load(list(config.tasks))["tasks"]
        if spec.suffix:
            for task in tasks.values():
                _add_suffix(task, spec.suffix)
        sampled = spec.sample is not None
        thinking_max = config.cap if spec.thinking_max is None else spec.thinking_max
        gen_kwargs = {
            "max_gen_toks": self.max_gen_toks(spec.thinking_max),
            "do_sample": sampled,
            "temperature": config.temperature if sampled else 0.0,
        }
        seed = config.seed + (spec.sample or 0)
        if config.backend == "vllm":  # the same settings, per request (SamplingParams.extra_args)
            budget = {"min": 0, "max": thinking_max, "num_waits": spec.num_waits, "format": self._format.name}
            gen_kwargs["extra_args"] = {**budget, **self._request}
            if sampled:
                gen_kwargs["seed"] = seed
        else:
            gen_kwargs.update(thinking_min=0, thinking_max=thinking_max, num_waits=spec.num_waits)
        first = len(lm.budget_records)
        results = lm_eval.simple_evaluate(
            model=lm,
            tasks=list(tasks.values()),
            task_manager=self._task_manager,
            apply_chat_template=config.apply_chat_template,
            gen_kwargs=gen_kwargs,
            limit=config.limit,
            log_samples=True,
            random_seed=seed,
            numpy_random_seed=seed,
            torch_random_seed=seed,
            verbosity="WARNING",
        )
        records = {(r["task"], r["doc_id"]): r for r in lm.budget_records[first:]}
        out: dict[str, list[dict[str, Any]]] = {}
        for task_name, samples in results["samples"].items():
            rows = []
            for s in sorted(samples, key=lambda s: s["doc_id"]):
                if config.metric not in s:
                    raise KeyError(
                        f"Task {task_name!r} has no per-sample metric {config.metric!r} (it has "
                        f"{sorted(k for k in s if isinstance(s[k], (int, float)))}); pass --metric."
                    )
                record = records.get((task_name, s["doc_id"]))
                if record is None:
                    raise RuntimeError(
                        f"No budget record for {task_name} doc {s['doc_id']}; was the model reused?"
                    )
                target = str(s["target"])
                rows.append(
                    {
                        "doc_id": s["doc_id"],
                        "correct": float(s[config.metric]),
                        "answer": _extract(s["filtered_resps"][0], target),
                        "choice": target.strip() in LETTERS and len(target.strip()) == 1,
                        **{k: record[k] for k in ("thinking_tokens", "answer_tokens", "waits", "forced_end")},
                    }
                )
            out[task_name] = rows
        path.write_text(json.dumps({"spec": asdict(spec), "tasks": out}))
        return out


def _add_suffix(task: Any, suffix: str) -> None:
    """Make ``task`` append ``suffix`` to every question (the prompt-based baselines)."""
    original = task.doc_to_text

    def doc_to_text(doc: dict, *args: Any, **kwargs: Any) -> str:
        return f"{original(doc, *args, **kwargs)}\n\n{suffix}"

    task.doc_to_text = doc_to_text


def _extract(response: Any, target: str) -> str | None:
    from budget_forcing.grading import extract_answer, extract_choice

    text = response if isinstance(response, str) else str(response)
    if len(target.strip()) == 1 and target.strip() in LETTERS:
        return extract_choice(text, LETTERS)
    return extract_answer(text)


def _equivalent(choice: bool):
    from budget_forcing.grading import grade

    if choice:
        return lambda a, b: a == b
    return lambda rep, other: rep.strip() == other.strip() or grade(f"\\boxed{{{other}}}", rep)


# --------------------------------------------------------------------------------------- methods
def _point(label: str, rows: list[dict], a_min: int | None, a_max: int | None, **extra: Any):
    from budget_forcing.metrics import ScalingPoint

    accuracy = sum(r["correct"] for r in rows) / len(rows)
    extra = {
        "n": len(rows),
        "forced_end": sum(bool(r["forced_end"]) for r in rows) / len(rows),
        "waits": sum(r["waits"] for r in rows) / len(rows),
        **extra,
    }
    return ScalingPoint(
        label, accuracy, [r["thinking_tokens"] for r in rows], a_min=a_min, a_max=a_max, extra=extra
    )


def _plan(config: SweepConfig) -> list[tuple[str, str, RunSpec, int | None, int | None]]:
    """(method, label, run, a_min, a_max) of every greedy point."""
    plan = []
    budgets = sorted(set(config.budgets))
    if "budget_forcing" in config.methods:
        plan += [("budget_forcing", f"max={b}", RunSpec(b), 0, b) for b in budgets]
        plan += [
            ("budget_forcing", f"max={config.cap}+{w} waits", RunSpec(config.cap, num_waits=w), 0, config.cap)
            for w in sorted(set(config.waits))
            if w > 0
        ]
    if "token_conditional" in config.methods:
        plan += [
            ("token_conditional", f"prompt {b}", RunSpec(None, suffix=TOKEN_PROMPT.format(budget=b)), 0, b)
            for b in budgets
        ]
    if "token_conditional_bf" in config.methods:
        plan += [
            (
                "token_conditional_bf",
                f"prompt+max {b}",
                RunSpec(b, suffix=TOKEN_PROMPT.format(budget=b)),
                0,
                b,
            )
            for b in budgets
        ]
    if "class_conditional" in config.methods:
        split = config.class_split if config.class_split is not None else int(statistics.median(budgets))
        plan += [
            ("class_conditional", "short", RunSpec(None, suffix=CLASS_PROMPTS["short"]), 0, split),
            ("class_conditional", "long", RunSpec(None, suffix=CLASS_PROMPTS["long"]), split, None),
        ]
    return plan


def _sampled_points(config: SweepConfig, pool: list[dict[str, list[dict]]], task: str) -> dict[str, list]:
    """Rejection sampling and majority voting points of ``task`` from the shared sampled runs."""
    from budget_forcing.metrics import majority_vote

    per_doc = list(zip(*[run[task] for run in pool], strict=True))  # per question: its samples in order
    points: dict[str, list] = {}
    if "rejection_sampling" in config.methods:
        points["rejection_sampling"] = []
        for b in sorted(set(config.budgets)):
            chosen, accepted, tries = [], 0, 0
            for samples in per_doc:
                fit = next((i for i, s in enumerate(samples) if s["thinking_tokens"] <= b), None)
                accepted += fit is not None
                tries += (fit + 1) if fit is not None else len(samples)
                chosen.append(samples[fit if fit is not None else -1])
            points["rejection_sampling"].append(
                _point(
                    f"max={b}",
                    chosen,
                    0,
                    b,
                    accepted=accepted / len(per_doc),
                    mean_tries=tries / len(per_doc),
                )
            )
    if "majority_voting" in config.methods:
        points["majority_voting"] = []
        for n in sorted(set(config.vote_samples)):
            rows = []
            for samples in per_doc:
                first = samples[:n]
                _, winners = majority_vote([s["answer"] for s in first], _equivalent(first[0]["choice"]))
                rows.append(
                    {
                        "correct": first[winners[0]]["correct"] if any(s["answer"] for s in first) else 0.0,
                        "thinking_tokens": sum(s["thinking_tokens"] for s in first),
                        "forced_end": any(s["forced_end"] for s in first),
                        "waits": sum(s["waits"] for s in first),
                    }
                )
            points["majority_voting"].append(_point(f"maj@{n}", rows, None, None, samples=n))
    return points


# ------------------------------------------------------------------------------------------ sweep
def run_sweep(config: SweepConfig) -> dict[str, Any]:
    """Run (or resume) the sweep; write ``scaling.json`` and ``scaling.png``; return the results dict."""
    from budget_forcing.metrics import summarize

    out = Path(config.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    runner = Runner(config)
    plan = _plan(config)
    sampling = {"rejection_sampling", "majority_voting"} & set(config.methods)
    sampled_specs = [RunSpec(None, sample=i) for i in range(config.samples)] if sampling else []
    specs = list(dict.fromkeys([p[2] for p in plan] + sampled_specs))
    done = {spec: runner.run(spec) for spec in tqdm(specs, desc="Scaling sweep", unit="run")}

    tasks = sorted({task for rows in done.values() for task in rows})
    results: dict[str, Any] = {"config": asdict(config), "tasks": {}}
    for task in tasks:
        points: dict[str, list] = {}
        for method, label, spec, a_min, a_max in plan:
            point = _point(label, done[spec][task], a_min, a_max, num_waits=spec.num_waits)
            points.setdefault(method, []).append(point)
        if sampled_specs:
            points.update(_sampled_points(config, [done[s] for s in sampled_specs], task))
        results["tasks"][task] = {
            method: {"points": [p.as_dict() for p in pts], **summarize(pts)} for method, pts in points.items()
        }
    (out / "scaling.json").write_text(json.dumps(results, indent=2))
    plot(results, out / "scaling.png")
    _print_table(results)
    return results


def plot(results: dict[str, Any], path: str | Path) -> Path:
    """Accuracy vs average thinking tokens (log-x), one panel per task and one curve per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = list(results["tasks"])
    if not tasks:
        raise ValueError("No task results to plot.")
    fig, axes = plt.subplots(1, len(tasks), figsize=(5.5 * len(tasks), 4.2), squeeze=False)
    for ax, task in zip(axes[0], tasks, strict=True):
        for method, data in results["tasks"][task].items():
            pts = sorted(data["points"], key=lambda p: p["mean_thinking"])
            waits = [p for p in pts if p["extra"].get("num_waits")]  # the Wait sweep: its own series
            series = [(method.replace("_", " "), "o-", [p for p in pts if p not in waits])]
            if waits:
                cap = waits[0]["a_max"]
                top = [p for p in series[0][2] if p["a_max"] == cap]  # 0 waits at the same maximum
                series.append((f"{series[0][0]} + N Waits (max={cap})", "s--", top + waits))
            for name, style, sel in series:
                if not sel:
                    continue
                xs = [max(p["mean_thinking"], 1.0) for p in sel]  # log-x: a run that did not think sits at 1
                ax.plot(xs, [p["accuracy_pct"] for p in sel], style, label=name)
        top = max(
            (p["accuracy_pct"] for d in results["tasks"][task].values() for p in d["points"]), default=0
        )
        ax.set_ylim(0, min(100.0, max(5.0, top * 1.15)))
        ax.set_xscale("log", base=2)
        ax.set_xlabel("Average thinking tokens")
        ax.set_ylabel("Accuracy (%)")
        ax.set_title(task)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _print_table(results: dict[str, Any]) -> None:
    def fmt(value: float | None) -> str:
        return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.1f}"

    for task, methods in results["tasks"].items():
        print(f"\n{task}\n| method | Control | Scaling | Performance |\n|---|---|---|---|")
        for method, m in methods.items():
            print(f"| {method} | {fmt(m['control'])}% | {fmt(m['scaling'])} | {fmt(m['performance'])} |")


def main(config: SweepConfig) -> dict[str, Any]:
    return run_sweep(config)


def parse_args(argv: list[str] | None = None) -> SweepConfig:
    """Flags named like the :class:`SweepConfig` fields, or one YAML file with those keys."""
    from transformers import HfArgumentParser

    parser = HfArgumentParser(SweepConfig)
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) == 1 and argv[0].endswith((".yaml", ".yml")):
        (config,) = parser.parse_yaml_file(argv[0])
    else:
        (config,) = parser.parse_args_into_dataclasses(args=argv)
    return config


if __name__ == "__main__":
    main(parse_args())
