"""The demo's evaluation (lm-eval, ``hf-budget-forcing``) and its report (plot, table, markdown).

The evaluation is a budget forcing sweep of ``benchmarks/scaling.py`` on the ``demo_synthetic`` task
(``demo/tasks``): one loaded :class:`~budget_forcing.integrations.lm_eval.BudgetForcingLM`, one
``lm_eval.simple_evaluate`` per setting, the budget of a setting passed as lm-eval ``gen_kwargs``
(``thinking_max``, ``num_waits``). The report adds accuracy by task family and s1's Control / Scaling /
Performance (``budget_forcing.metrics``) of the max-budget sweep with and without the "Wait" points.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from demo.run import ROOT, DemoArguments, _load_yaml

__all__ = ["evaluate", "scaling_metrics", "write_report"]


def sweep_config(args: DemoArguments, out: Path, model_dir: str) -> Any:
    """The ``benchmarks/scaling.py`` sweep of the demo (budget forcing: max budgets, then waits)."""
    from benchmarks.scaling import SweepConfig

    cfg = _load_yaml(ROOT / args.eval_config)
    budgets = args.budgets if args.budgets is not None else cfg["budgets"]
    waits = args.waits if args.waits is not None else cfg.get("waits", [])
    if not budgets:
        raise ValueError("The demo needs at least one thinking budget (`budgets` in demo/configs/eval.yaml).")
    return SweepConfig(
        model=model_dir,
        tasks=[cfg.get("task", "demo_synthetic")],
        include_path=[str(ROOT / cfg.get("include_path", "demo/tasks"))],
        output_dir=str(out / "eval"),
        methods=["budget_forcing"],
        budgets=list(budgets),
        waits=list(waits),
        answer_tokens=int(cfg.get("answer_tokens", 24)),
        batch_size=int(cfg.get("batch_size", 64)),
        device="cpu",
        dtype="float32",
        format=cfg.get("format", "s1"),
        backend=cfg.get("backend", "hf"),  # "vllm": run the demo in the vLLM environment
        model_args=f"max_answer_tokens={cfg['max_answer_tokens']}"
        if cfg.get("max_answer_tokens") is not None
        else "",
    )


def evaluate(args: DemoArguments, out: Path, model_dir: str, eval_path: str) -> dict[str, Any]:
    """Run the sweep through lm-eval; returns one entry per setting with accuracy, by-domain accuracy and
    thinking-token statistics."""
    from benchmarks.scaling import Runner, _plan, run_sweep
    from demo.tasks.utils import DATA_ENV

    os.environ[DATA_ENV] = str(eval_path)
    config = sweep_config(args, out, model_dir)
    results = run_sweep(config)
    task = config.tasks[0]
    domains = [
        json.loads(line)["domain"] for line in Path(eval_path).read_text().splitlines() if line.strip()
    ]
    runner = Runner(config)  # every run is cached under <out>/eval/runs: this only reads them back
    runs = []
    for _method, label, spec, _a_min, _a_max in _plan(config):
        rows = runner.run(spec)[task]
        by_domain: dict[str, list[float]] = {}
        for row in rows:
            by_domain.setdefault(domains[row["doc_id"]], []).append(row["correct"])
        thinking = [row["thinking_tokens"] for row in rows]
        run = {
            "name": label,
            "thinking_max": spec.thinking_max,
            "num_waits": spec.num_waits,
            "accuracy": sum(r["correct"] for r in rows) / len(rows),
            "n": len(rows),
            "by_domain": {d: sum(v) / len(v) for d, v in sorted(by_domain.items())},
            "mean_thinking_tokens": sum(thinking) / len(thinking),
            "max_thinking_tokens": max(thinking),
            "thinking_tokens": thinking,
            "forced_end": sum(bool(r["forced_end"]) for r in rows) / len(rows),
            "mean_waits": sum(r["waits"] for r in rows) / len(rows),
        }
        runs.append(run)
        print(
            f"{label:>18}: accuracy {run['accuracy']:.1%}, mean thinking {run['mean_thinking_tokens']:.1f} tokens "
            f"(max {run['max_thinking_tokens']}), forced end {run['forced_end']:.0%}",
            flush=True,
        )
    return {"runs": runs, "task": task, "sweep": results["tasks"][task]}


#: Points whose mean thinking differs by less than this factor count as one budget (ties merged).
MERGE_WITHIN = 1.1


def merged_curve(points: list[Any], within: float = MERGE_WITHIN) -> list[Any]:
    """``points`` (``ScalingPoint`` s) sorted by thinking, neighbours closer than ``within`` x merged.

    A budget past the model's natural thinking length changes nothing: two budgets then give (nearly)
    the same thinking, and the slope between them is noise over a width of a fraction of a token. The
    merged point has the pooled thinking tokens and the mean accuracy of the points it replaces.
    """
    from budget_forcing.metrics import ScalingPoint

    groups: list[list[Any]] = []
    for p in sorted(points, key=lambda p: p.mean_thinking):
        if groups and max(p.mean_thinking, 1.0) < within * max(groups[-1][0].mean_thinking, 1.0):
            groups[-1].append(p)
        else:
            groups.append([p])
    return [
        g[0]
        if len(g) == 1
        else ScalingPoint(
            " = ".join(p.label for p in g),
            sum(p.accuracy for p in g) / len(g),
            [t for p in g for t in p.thinking_tokens],
            a_min=g[0].a_min,
            a_max=max(p.a_max for p in g),
        )
        for g in groups
    ]


def scaling_metrics(runs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """s1's Control / Scaling / Performance (``budget_forcing.metrics``) of the max-budget sweep and of
    the "Wait" sweep (0, 1, 2, 4... Waits at the largest budget).

    Scaling is the paper's mean slope of the piecewise-linear curve (accuracy points per doubling of
    thinking tokens), taken over the budgets after merging those whose mean thinking is within 10%
    of each other (:func:`merged_curve`): two runs of the same model then differ by noise over real
    widths, not by 0.5 points over 0.1 tokens.
    """
    from budget_forcing.metrics import ScalingPoint, control, performance, scaling

    def points(selected: list[dict[str, Any]]) -> list[ScalingPoint]:
        return [
            ScalingPoint(r["name"], r["accuracy"], r["thinking_tokens"], a_min=0, a_max=r["thinking_max"])
            for r in selected
        ]

    def summary(pts: list[ScalingPoint]) -> dict[str, Any]:
        merged = merged_curve(pts)
        return {
            "control": control(pts),
            "scaling": scaling(merged),
            "scaling_unmerged": scaling(pts),
            "performance": performance(pts),
            "merged": [p.label for p in merged],
        }

    sweep = [r for r in runs if r["num_waits"] == 0]
    out = {"max budgets": summary(points(sweep))}
    waits = _wait_series(runs)
    if len(waits) > 1:
        out[f"Waits at max={waits[0]['thinking_max']}"] = summary(points(waits))
    return out


def _wait_series(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The Wait sweep: the 0-Wait run at the Waits' budget, then the Wait runs by count."""
    waits = sorted((r for r in runs if r["num_waits"] > 0), key=lambda r: r["num_waits"])
    if not waits:
        return []
    base = [r for r in runs if r["num_waits"] == 0 and r["thinking_max"] == waits[0]["thinking_max"]]
    return base[:1] + waits


def _label_points(
    ax: Any,
    xs: list[float],
    ys: list[float],
    labels: list[str],
    color: str,
    offset: tuple[int, int],
    alternate: bool = False,
) -> None:
    """Label points, joining the labels of points drawn at (nearly) the same place into one.

    ``offset`` (points) puts the labels of one series on one side of its points (right and below,
    left and above...), or with ``alternate`` every other label on the opposite side; a label that would
    run into the x axis or the top goes to the other side.
    """
    groups: list[tuple[float, float, list[str]]] = []
    for x, y, label in sorted(zip(xs, ys, labels, strict=True), key=lambda t: (t[0], labels.index(t[2]))):
        if groups and x < 1.15 * groups[-1][0] and abs(y - groups[-1][1]) < 4:
            groups[-1][2].append(label)
        else:
            groups.append((x, y, [label]))
    dx, dy = offset
    for i, (x, y, names) in enumerate(groups):
        names = sorted(names, key=labels.index)
        if alternate and i % 2:  # neighbours on the other side, so close points keep apart labels
            dx, dy = -offset[0], -offset[1]
        else:
            dx, dy = offset
        # Near the x axis or the top: all on the free side, a second series and every other label higher.
        edge = abs(offset[1]) + (12 if alternate else 0) + (10 if alternate and i % 2 else 0)
        side = dy if 12 <= y <= 90 else (edge if y < 12 else -edge)
        ax.annotate(
            ", ".join(names),
            (x, y),
            textcoords="offset points",
            xytext=(dx, side),
            ha="left" if dx >= 0 else "right",
            va="center",
            fontsize=8,
            color=color,
        )


def _plot(runs: list[dict[str, Any]], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sweep = sorted((r for r in runs if r["num_waits"] == 0), key=lambda r: r["thinking_max"])
    waits = _wait_series(runs)
    panels = 3 if len(waits) > 1 else 2
    fig, axes = plt.subplots(1, panels, figsize=(5.2 * panels, 4.4))
    ax = axes[0]
    xs = [max(r["mean_thinking_tokens"], 1.0) for r in sweep]
    ys = [100 * r["accuracy"] for r in sweep]
    ax.plot(xs, ys, "o-", color="tab:blue", label="max budget sweep (0 Waits)")
    _label_points(ax, xs, ys, [str(r["thinking_max"]) for r in sweep], "tab:blue", (5, -9))
    if len(waits) > 1:
        wx = [max(r["mean_thinking_tokens"], 1.0) for r in waits]
        wy = [100 * r["accuracy"] for r in waits]
        ax.plot(wx, wy, "s--", color="tab:red", label=f"Wait sweep (max={waits[0]['thinking_max']})")
        _label_points(ax, wx, wy, [f"{r['num_waits']}W" for r in waits], "tab:red", (-5, 8), alternate=True)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("mean thinking tokens (labels: budget, or number of Waits)")
    ax.set_ylabel("accuracy (%)")
    ax.set_title("Test-time scaling of the demo model")
    ax.set_ylim(0, 105)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", fontsize=8)
    domains = sorted(sweep[0]["by_domain"])
    ax2 = axes[1]
    for d in domains:
        ax2.plot(range(len(sweep)), [100 * r["by_domain"][d] for r in sweep], "o-", label=d)
    ax2.set_xticks(range(len(sweep)), [str(r["thinking_max"]) for r in sweep])
    ax2.set_xlabel("maximum thinking tokens (0 Waits)")
    ax2.set_ylabel("accuracy (%)")
    ax2.set_title("Max budget sweep by task family")
    ax2.set_ylim(0, 105)
    ax2.grid(alpha=0.3)
    ax2.legend(loc="upper left", fontsize=8)
    if len(waits) > 1:
        ax3 = axes[2]
        for d in domains:
            ax3.plot(range(len(waits)), [100 * r["by_domain"][d] for r in waits], "s--", label=d)
        ax3.set_xticks(range(len(waits)), [str(r["num_waits"]) for r in waits])
        ax3.set_xlabel(f'forced "Wait"s (max={waits[0]["thinking_max"]})')
        ax3.set_ylabel("accuracy (%)")
        ax3.set_title("Wait sweep by task family")
        ax3.set_ylim(0, 105)
        ax3.grid(alpha=0.3)
        ax3.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _table(runs: list[dict[str, Any]]) -> str:
    domains = sorted(runs[0]["by_domain"])
    head = (
        "| setting | accuracy | mean thinking tokens | max thinking tokens | forced end | "
        + " | ".join(domains)
        + " |"
    )
    rows = [head, "|" + "---|" * (5 + len(domains))]
    for r in runs:
        cells = [
            r["name"],
            f"{100 * r['accuracy']:.1f}%",
            f"{r['mean_thinking_tokens']:.1f}",
            str(r["max_thinking_tokens"]),
            f"{100 * r['forced_end']:.0f}%",
            *(f"{100 * r['by_domain'][d]:.0f}%" for d in domains),
        ]
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows)


def write_report(out: Path, summary: dict[str, Any], timer: Any) -> dict[str, Path]:
    """``scaling.png``, ``table.md`` and ``report.md`` in ``out``; returns their paths."""
    runs = summary["results"]["runs"]
    metrics = scaling_metrics(runs)
    summary["metrics"] = metrics
    plot = _plot(runs, out / "scaling.png")

    def fmt(value: float | None) -> str:
        return "n/a" if value is None else f"{value:.1f}"

    csp = "| budget forcing | Control | Scaling | Performance |\n|---|---|---|---|\n" + "\n".join(
        f"| {name} | {m['control']:.0f}% | {fmt(m['scaling'])} | {m['performance']:.1f} |"
        for name, m in metrics.items()
    )
    table = out / "table.md"
    table.write_text(csp + "\n\n" + _table(runs) + "\n")
    waits = _wait_series(runs)
    if len(waits) > 1:
        top = waits[0]
        steps = ", ".join(f"{r['num_waits']}: {100 * r['accuracy']:.1f}%" for r in waits)
        delta = 100 * (max(r["accuracy"] for r in waits[1:]) - top["accuracy"])
        effect = "raises" if delta > 0.5 else "does not change" if delta > -0.5 else "lowers"
        verdict = (
            f'Forcing "Wait" {effect} accuracy at max={top["thinking_max"]} (Waits: accuracy: {steps}; '
            f"best {delta:+.1f} points over no Wait)."
        )
    else:
        verdict = "No Wait settings were evaluated."
    stages = ", ".join(f"{k} {v:.0f}s" for k, v in timer.stages.items())
    sel_lines = []
    for stage, rep in summary.get("selection", {}).items():
        if not isinstance(rep, dict) or "rows_in" not in rep:
            continue
        reasons: dict[str, int] = {}
        for step in rep.get("steps", []):
            for reason, count in (step.get("dropped") or {}).items():
                reasons[reason] = reasons.get(reason, 0) + count
        why = ", ".join(f"{reason} {count}" for reason, count in reasons.items() if count)
        sel_lines.append(
            f"- {stage}: {rep['rows_in']} -> {rep.get('rows_out', '?')} rows" + (f" ({why})" if why else "")
        )
        if stage == "select" and rep.get("info", {}).get("domains"):
            sel_lines[-1] += f"; by domain: {rep['info']['domains']}"
    losses = summary.get("losses") or []
    loss_line = (
        f"Training: {losses[-1][0]} optimizer steps, loss {losses[0][1]:.3f} (step {losses[0][0]}) -> "
        f"{losses[-1][1]:.3f} (step {losses[-1][0]}).\n\n"
        if losses
        else ""
    )
    report = out / "report.md"
    report.write_text(
        "# s1 in miniature: demo report\n\n"
        f"A {summary['parameters']:,}-parameter Qwen2 model, trained from scratch with the SFT recipe on "
        "the questions the selection recipe picked from a synthetic pool, evaluated through lm-eval "
        "(`hf-budget-forcing`) on held-out questions.\n\n"
        f"![scaling](scaling.png)\n\n## Control / Scaling / Performance\n\n{csp}\n\n"
        "Control: share of runs whose average thinking stayed within the budget. Scaling: the paper's mean "
        "slope of the piecewise-linear curve of accuracy against thinking tokens, in accuracy points per "
        "doubling of thinking tokens, over the budgets with ties merged (runs within 10% of each other's "
        "mean thinking count as one point). Performance: best accuracy (%).\n\n"
        f"## Every setting\n\n{_table(runs)}\n\n{verdict}\n\n"
        "## Selection\n\n" + ("\n".join(sel_lines) or "(no reports)") + "\n\n"
        f"## Training\n\n{loss_line or '(no training log)'}"
        f"## Time\n\nStages: {stages}; total {timer.total():.0f}s ({timer.total() / 60:.1f} min) "
        f"with {summary['args']['threads']} CPU thread(s).\n"
    )
    return {"plot": plot, "table": table, "report": report}
