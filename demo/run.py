"""s1 in miniature, end to end on a laptop CPU: data selection, SFT, budget forcing, a scaling curve.

1. ``data``: a synthetic pool in s1's schema (:mod:`demo.make_pool`: addition, subtraction and
   mixed chains of small operations as domains, several difficulties, written-out traces: a quick
   first pass, in 40% of them followed by "Wait" and a step-by-step re-check that fixes its slips),
   a held-out evaluation set, the demo tokenizer (digits are single
   tokens) and a randomly initialised ~1M-parameter Qwen2 model.
2. ``select``: the real selection recipe (``recipes/select_s1k.py all``): decontamination against the
   evaluation set, the untrained model as the difficulty filter's base model, math-verify grading,
   the task family as domain, s1's Algorithm 1.
3. ``sft``: the real SFT recipe (``accelerate launch recipes/sft.py``) on the selected examples.
4. ``eval``: ``benchmarks/scaling.py``'s sweep through lm-eval with the ``hf-budget-forcing`` model at
   several maximum thinking budgets and "Wait" counts.
5. ``report``: the scaling plot, the Control / Scaling / Performance table and a markdown report.

Usage:
    make demo                       # fresh clone: venv, install, run (timings: docs/demo.md)
    python -m demo.run              # everything, outputs in demo_outputs/
    python -m demo.run --output_dir /tmp/demo --pool_size 400 --eval_size 40 --select_n 200 \
        --max_steps 50 --hidden_size 32 --num_layers 2 --budgets 0 32 --waits 1   # a one-minute try

Every option is a field of :class:`DemoArguments`; the recipes' own options live in
``demo/configs/{selection,sft,eval}.yaml``.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent

__all__ = ["DemoArguments", "main"]


@dataclass
class DemoArguments:
    """Options of the demo (``python -m demo.run --help``)."""

    output_dir: str = field(default="demo_outputs", metadata={"help": "Where every output goes."})
    pool_size: int = field(
        default=6000, metadata={"help": "Clean rows in the synthetic pool (plus 3% defective)."}
    )
    eval_size: int = field(default=200, metadata={"help": "Held-out evaluation questions."})
    seed: int = field(
        default=0, metadata={"help": "Seed of the pool, the model initialisation and the selection."}
    )
    hidden_size: int = field(default=128, metadata={"help": "Hidden size of the Qwen2 model."})
    num_layers: int = field(
        default=4,
        metadata={"help": "Layers of the Qwen2 model (hidden 128, MLP 512, 4 layers: ~1M parameters)."},
    )
    intermediate_size: int = field(default=512, metadata={"help": "MLP width of the Qwen2 model."})
    vocab_size: int = field(default=400, metadata={"help": "Vocabulary size of the demo tokenizer."})
    select_n: int | None = field(
        default=None, metadata={"help": "Questions to select; default: the selection config's."}
    )
    max_steps: int | None = field(
        default=None, metadata={"help": "SFT optimizer steps; default: the SFT config's."}
    )
    budgets: list[int] | None = field(
        default=None, metadata={"help": "Thinking budgets; default: the eval config's."}
    )
    waits: list[int] | None = field(
        default=None, metadata={"help": "Wait counts; default: the eval config's."}
    )
    selection_config: str = field(
        default="demo/configs/selection.yaml", metadata={"help": "Selection recipe."}
    )
    sft_config: str = field(default="demo/configs/sft.yaml", metadata={"help": "SFT recipe."})
    eval_config: str = field(default="demo/configs/eval.yaml", metadata={"help": "Evaluation settings."})
    sft_processes: int = field(
        default=2,
        metadata={
            "help": "Data-parallel processes of the SFT stage, one thread each, at most --threads; the "
            "global batch stays the SFT config's. Two one-thread processes train this model's small "
            "matrices ~1.5x faster than one; a second thread in one process gains only ~1.2x."
        },
    )
    threads: int | None = field(
        default=None,
        metadata={
            "help": "CPU threads of every stage; default: the cores other programs leave free "
            "(budget_forcing.threads.pick_threads)."
        },
    )


class Timer:
    """Wall time of each stage, printed as it finishes."""

    def __init__(self) -> None:
        self.start = time.perf_counter()
        self.stages: dict[str, float] = {}

    def run(self, name: str, fn: Callable[[], Any]) -> Any:
        print(f"\n=== [{name}] (t = {self.total():.0f}s) ===", flush=True)
        begin = time.perf_counter()
        result = fn()
        self.stages[name] = time.perf_counter() - begin
        print(f"=== [{name}] done in {self.stages[name]:.1f}s ===", flush=True)
        return result

    def total(self) -> float:
        return time.perf_counter() - self.start


def _load_yaml(path: str | Path) -> dict[str, Any]:
    import yaml

    return yaml.safe_load(Path(path).read_text()) or {}


def _echo(chunk: bytes) -> None:
    """Write a child's raw output to our stdout (bytes if it has a buffer, else text)."""
    buffer = getattr(sys.stdout, "buffer", None)
    if buffer is not None:
        buffer.write(chunk)
        buffer.flush()
    else:
        sys.stdout.write(chunk.decode(errors="replace"))
        sys.stdout.flush()


def _subprocess(cmd: list[str], log: Path, threads: int) -> None:
    """Run a recipe from the repository root; output goes to the terminal and to ``log``."""
    from budget_forcing.threads import thread_env

    env = {
        **thread_env(threads),
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
    }
    print("$ " + " ".join(cmd), flush=True)
    log.parent.mkdir(parents=True, exist_ok=True)
    # Bytes as they come, so progress bars (which redraw with "\r") stay live on the terminal.
    # Its own process group, so an interrupt or an error here ends the stage and every worker it started.
    proc = subprocess.Popen(
        cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True
    )
    try:
        with log.open("wb") as f:
            assert proc.stdout is not None
            while chunk := os.read(proc.stdout.fileno(), 65536):
                f.write(chunk)
                _echo(chunk)
        proc.wait()
    except BaseException:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        raise
    finally:
        proc.stdout.close()
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd[0]} ... failed with exit code {proc.returncode}; see {log}")


# ----------------------------------------------------------------------------------------------------------
# Stages
# ----------------------------------------------------------------------------------------------------------


def stage_data(args: DemoArguments, out: Path) -> dict[str, Any]:
    """Pool, evaluation set, tokenizer and the untrained model."""
    import torch

    from demo.make_pool import make_eval_set, make_pool, write_jsonl

    eval_rows = make_eval_set(args.eval_size, seed=args.seed + 12345)
    pool = make_pool(args.pool_size, seed=args.seed, exclude={row["question"] for row in eval_rows})
    pool_path = write_jsonl(pool, out / "data" / "pool.jsonl")
    eval_path = write_jsonl(eval_rows, out / "data" / "eval.jsonl")
    init_dir = out / "init_model"
    params, vocab = save_init_model(args, pool, init_dir)
    torch.manual_seed(args.seed)
    print(f"pool: {len(pool)} rows -> {pool_path}\neval: {len(eval_rows)} rows -> {eval_path}")
    print(f"untrained model: {params:,} parameters, vocabulary {vocab} -> {init_dir}")
    return {"pool": str(pool_path), "eval": str(eval_path), "init_model": str(init_dir), "parameters": params}


def save_init_model(args: DemoArguments, pool: list[dict], path: Path) -> tuple[int, int]:
    """The demo tokenizer trained on ``pool`` and the randomly initialised model of ``args``' shape,
    saved to ``path``; returns the model's parameter count and the vocabulary size."""
    from budget_forcing.testing import tiny_model
    from demo.make_pool import tokenizer_corpus
    from demo.tokenizer import demo_tokenizer

    tokenizer = demo_tokenizer(tokenizer_corpus(pool), vocab_size=args.vocab_size)
    model = tiny_model(
        tokenizer,
        hidden_size=args.hidden_size,
        num_layers=args.num_layers,
        intermediate_size=args.intermediate_size,
        seed=args.seed,
    )
    model.generation_config.max_length = None
    tokenizer.save_pretrained(path)
    model.save_pretrained(path)
    return sum(p.numel() for p in model.parameters()), len(tokenizer)


def stage_select(args: DemoArguments, out: Path, data: dict[str, Any]) -> dict[str, Any]:
    """The selection recipe, every stage; returns its reports."""
    sel_dir = out / "selection"
    base_model = {
        "name": "untrained",
        "backend": "local",
        "model": data["init_model"],
        "temperature": 0.0,
        "max_tokens": 8,
        "batch_size": 256,
        "num_threads": args.threads,
    }
    cmd = [
        sys.executable,
        "recipes/select_s1k.py",
        "all",
        "--config",
        args.selection_config,
        "--output_dir",
        str(sel_dir),
        "--eval_files",
        data["eval"],
        f"--pool={data['pool']}",
        f"--featurize.base_models={json.dumps([base_model])}",
        f"--featurize.tokenizer={data['init_model']}",
        f"--featurize.cache={sel_dir / 'cache.sqlite'}",
    ]
    if args.select_n is not None:
        cmd += ["--n", str(args.select_n)]
    _subprocess(cmd, out / "logs" / "select.log", args.threads)
    reports = {}
    for stage in ("decontaminate", "featurize", "filter", "select", "format"):
        path = sel_dir / "reports" / f"{stage}.json"
        if path.exists():
            reports[stage] = json.loads(path.read_text())
    sft_data = sel_dir / "sft.parquet"
    if not sft_data.exists():
        raise RuntimeError(f"The selection recipe wrote no {sft_data}; see {out / 'logs' / 'select.log'}")
    return {"sft_data": str(sft_data), "reports": reports, "dir": str(sel_dir)}


def sft_command(
    config: str, model: str | Path, data: str | Path, output_dir: str | Path, processes: int = 1
) -> list[str]:
    """The SFT recipe under ``accelerate launch`` on CPU, run from the repository root: one process, or
    ``processes`` data-parallel ones (gloo) that split the config's batch between them."""
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file"]
    if processes == 1:
        cmd.append("recipes/accelerate_configs/cpu.yaml")
    else:
        cmd += ["recipes/accelerate_configs/cpu_2proc.yaml", "--num_processes", str(processes)]
    cmd += ["recipes/sft.py", "--config", config]
    cmd += ["--model_name_or_path", str(model), "--dataset_name", str(data), "--output_dir", str(output_dir)]
    if processes > 1:
        batch = int(_load_yaml(ROOT / config).get("per_device_train_batch_size", 8))
        if batch % processes:
            raise ValueError(
                f"{config}: per_device_train_batch_size {batch} does not split over {processes} SFT "
                "processes; pick a multiple of --sft_processes"
            )
        cmd += ["--per_device_train_batch_size", str(batch // processes)]
    return cmd


def sft_processes(threads: int, wanted: int) -> int:
    """SFT processes for ``threads`` free cores: ``wanted`` one-thread processes, at most one per core."""
    return max(1, min(threads, wanted))


def stage_sft(
    args: DemoArguments, out: Path, data: dict[str, Any], selection: dict[str, Any]
) -> dict[str, Any]:
    """The SFT recipe under ``accelerate launch`` on CPU."""
    model_dir = out / "model"
    processes = sft_processes(args.threads, args.sft_processes)
    cmd = sft_command(args.sft_config, data["init_model"], selection["sft_data"], model_dir, processes)
    if args.max_steps is not None:
        cmd += ["--max_steps", str(args.max_steps)]
    print(f"SFT in {processes} process(es), one CPU thread each", flush=True)
    _subprocess(cmd, out / "logs" / "sft.log", 1)
    state_path = model_dir / "trainer_state.json"
    losses = []
    if state_path.exists():
        state = json.loads(state_path.read_text())
        losses = [(e["step"], e["loss"]) for e in state.get("log_history", []) if "loss" in e]
    return {"model": str(model_dir), "losses": losses}


#: The question of the closing "Try it" line (a two-operation chain: one quick pass, then a re-check).
TRY_QUESTION = "What is 12+3+7?"


def _shown(path: str | Path) -> str:
    """``path`` relative to the working directory when it lies below it (shorter to type)."""
    path = Path(path).resolve()
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def try_command(model_dir: str | Path) -> str:
    """The command that talks to the trained model, with this interpreter's ``budget-forcing`` script
    (the venv's), so it works without activating the venv."""
    script = Path(sys.executable).parent / "budget-forcing"
    exe = _shown(script) if script.exists() else "budget-forcing"
    return f"{exe} generate {_shown(model_dir)} --question '{TRY_QUESTION}' --max 256"


def main(args: DemoArguments) -> dict[str, Any]:
    """Run every stage; returns a summary (also written to ``<output_dir>/summary.json``)."""
    from budget_forcing.threads import configure_torch, other_load, pick_threads, usable_cores

    cores, load = usable_cores(), other_load()
    args.threads = pick_threads(args.threads, cores=cores, load=load)
    print(
        f"s1 in miniature: seed {args.seed}, {args.threads} CPU thread(s) "
        f"({cores} usable core(s), {load:.1f} busy with other programs)",
        flush=True,
    )
    configure_torch(args.threads)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    out = Path(args.output_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    timer = Timer()
    data = timer.run("data", lambda: stage_data(args, out))
    selection = timer.run("select", lambda: stage_select(args, out, data))
    sft = timer.run("sft", lambda: stage_sft(args, out, data, selection))
    from demo.evaluate import evaluate, write_report

    results = timer.run("eval", lambda: evaluate(args, out, sft["model"], data["eval"]))
    summary = {
        "args": asdict(args),
        "parameters": data["parameters"],
        "selection": selection["reports"],
        "losses": sft["losses"],
        "results": results,
    }
    paths = timer.run("report", lambda: write_report(out, summary, timer))
    summary["timings"] = {**timer.stages, "total": timer.total()}
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    print(f"\nDemo finished in {timer.total():.0f}s ({timer.total() / 60:.1f} min).")
    for name, path in paths.items():
        print(f"  {name}: {path}")
    print(f"  model: {sft['model']}")
    print(f"Try it: {try_command(sft['model'])}")
    return summary


if __name__ == "__main__":
    # Before torch loads OpenMP: threads that wait sleep instead of spinning on a core others need.
    os.environ.update({"OMP_WAIT_POLICY": "PASSIVE", "KMP_BLOCKTIME": "0"})
    from transformers import HfArgumentParser

    (demo_args,) = HfArgumentParser(DemoArguments).parse_args_into_dataclasses()
    main(demo_args)
