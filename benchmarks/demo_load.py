"""The demo's SFT stage on a busy machine: seconds per step with and without a CPU-bound competitor.

Runs the demo's real SFT stage (``accelerate launch recipes/sft.py --config demo/configs/sft.yaml``
on the demo model and pool) for ``--steps`` optimizer steps, side by side:

1. ``quiet``: what the demo does: cores picked by ``budget_forcing.threads``, then one one-thread
   SFT process per free core (at most two, data parallel), nothing else;
2. ``competitor``: the same, while one CPU-bound process spins on a core;
3. ``competitor started later``: the demo's pick on the quiet machine (two one-thread processes), then
   the competitor starts: one process shares its core, and the other waits for it at every step;
4. ``competitor, old settings``: as the demo ran before, one process with every core's worth of
   threads and OpenMP's default spin-waiting, while the competitor spins.

It prints seconds per step (the trainer's own ``train_runtime``, so start-up is not counted) and the
slowdown of each setting against the quiet one. With one competitor on 2 cores the demo should slow
about in proportion to the cores it loses (up to ~2x), never the 50x that spinning threads caused.
Other programs running at the same time move every figure: compare the ratios of one run.

Usage:
    python -m benchmarks.demo_load                 # 60 steps per setting
    python -m benchmarks.demo_load --steps 30 --competitors 2
    python -m benchmarks.demo_load --settings quiet late
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]  # run as `python -m benchmarks.demo_load` from here


def _competitor() -> subprocess.Popen:
    """A CPU-bound program of its own (own session, so the scheduler treats it as another program)."""
    return subprocess.Popen([sys.executable, "-c", "while True: pass"], start_new_session=True)


def prepare(workdir: Path, pool_size: int) -> tuple[Path, Path]:
    """The demo's untrained model and a pool in s1K columns (what the SFT recipe reads)."""
    from demo.make_pool import make_pool, write_jsonl
    from demo.run import DemoArguments, save_init_model

    pool = make_pool(pool_size, seed=0, defective=0.0)
    data = write_jsonl(pool, workdir / "pool.jsonl")
    save_init_model(DemoArguments(), pool, workdir / "init_model")
    return workdir / "init_model", data


def train(model: Path, data: Path, out: Path, steps: int, env: dict[str, str], processes: int) -> float:
    """Seconds per optimizer step of the demo's SFT recipe (the trainer's ``train_runtime``)."""
    from demo.run import sft_command

    cmd = [
        *sft_command("demo/configs/sft.yaml", model, data, out, processes),
        "--answer_prefix",
        "",
        "--max_steps",
        str(steps),
        "--logging_steps",
        str(steps),
        "--disable_tqdm",
        "true",
    ]
    env = {
        **env,
        "PYTHONPATH": os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]),
        "HF_HUB_OFFLINE": "1",
    }
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"SFT failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    state = json.loads((out / "trainer_state.json").read_text())
    runtime = next(e["train_runtime"] for e in state["log_history"] if "train_runtime" in e)
    return runtime / steps


def main(argv: list[str] | None = None) -> None:
    from budget_forcing.threads import pick_threads, thread_env, usable_cores
    from demo.run import DemoArguments, sft_processes

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=60, help="optimizer steps per setting")
    parser.add_argument("--competitors", type=int, default=1, help="CPU-bound processes to compete with")
    parser.add_argument("--pool_size", type=int, default=1000)
    parser.add_argument(
        "--threads", type=int, default=None, help="threads of the quiet run (default: picked from the load)"
    )
    parser.add_argument(
        "--settings",
        nargs="+",
        default=["quiet", "competitor", "late", "old"],
        choices=["quiet", "competitor", "late", "old"],
        help="which settings to run (the slowdowns are against the first one run)",
    )
    args = parser.parse_args(argv)

    cores = usable_cores()
    print(f"{cores} usable cores; load average at the start {os.getloadavg()}")
    old_env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "KMP_BLOCKTIME")}
    old_env |= {"OMP_NUM_THREADS": str(cores), "TOKENIZERS_PARALLELISM": "true"}
    settings = {
        "quiet": ("quiet", 0, "auto"),
        "competitor": ("competitor", args.competitors, "auto"),
        "late": ("competitor started later", args.competitors, "late"),
        "old": ("competitor, old settings", args.competitors, "old"),
    }
    settings = [settings[key] for key in args.settings]
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        model, data = prepare(Path(tmp), args.pool_size)
        for name, competitors, mode in settings:
            if mode == "late":  # picked on the quiet machine, as if the competitor came later
                threads = pick_threads(args.threads, cores=cores)
            spinners = [_competitor() for _ in range(competitors)]
            time.sleep(2 if competitors else 0)  # let the load show before picking threads
            try:
                if mode == "auto":  # what the demo does: look at the machine now (competitor running), pick
                    threads = pick_threads(args.threads if competitors == 0 else None, cores=cores)
                if mode == "old":
                    threads, processes, env = cores, 1, old_env
                else:
                    processes, env = sft_processes(threads, DemoArguments.sft_processes), thread_env(1)
                begin = time.perf_counter()
                out = Path(tmp) / mode / str(competitors)
                per_step = train(model, data, out, args.steps, env, processes)
                wall = time.perf_counter() - begin
            finally:
                for p in spinners:
                    p.terminate()
                    p.wait()
            results.append((name, competitors, f"{processes} x {env['OMP_NUM_THREADS']}", per_step, wall))
            print(
                f"{name:>26}: {results[-1][2]} thread(s), {competitors} competitor(s): {per_step:.3f} s/step "
                f"({wall:.0f} s wall)",
                flush=True,
            )
    base = results[0][3]
    print(
        "\n| setting | processes x threads | competitors | s/step | slowdown vs quiet |\n|---|---|---|---|---|"
    )
    for name, competitors, threads, per_step, _ in results:
        print(f"| {name} | {threads} | {competitors} | {per_step:.3f} | {per_step / base:.2f}x |")
    print(f"load average at the end: {os.getloadavg()}")


if __name__ == "__main__":
    main()
