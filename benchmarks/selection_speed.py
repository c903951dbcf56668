"""Speed of the s1K selection recipe's CPU stages on a 59K-row synthetic pool.

Times decontamination + dedup (word 8-grams against evaluation sets, cross-source and exact dedup)
and selection (Algorithm 1 and the ablations), with and without the parquet reading/writing of the
stage commands. The target is under 30 s for decontamination + selection on 2 CPU cores.

Usage:
    python benchmarks/selection_speed.py                 # 59,000 rows
    python benchmarks/selection_speed.py --rows 20000 --eval 1000
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--rows", type=int, default=59_000, help="Pool size (s1: 59,029 before decontamination)."
    )
    parser.add_argument(
        "--eval", type=int, default=800, help="Evaluation questions (AIME24+MATH500+GPQA-D: 728)."
    )
    parser.add_argument("--n", type=int, default=1000, help="Questions to select.")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    import numpy as np
    from datasets import Dataset, disable_progress_bars

    from budget_forcing.selection.algorithm import select_indices
    from budget_forcing.selection.config import DecontaminateConfig, SelectionConfig
    from budget_forcing.selection.decontaminate import decontaminate
    from budget_forcing.selection.pipeline import load_config, run_decontaminate, run_select
    from budget_forcing.selection.synthetic import make_pool

    disable_progress_bars()
    t0 = time.perf_counter()
    pool = make_pool(args.rows, seed=args.seed, n_eval=args.eval)
    data = Dataset.from_list(pool.rows).add_column("row_id", list(range(args.rows)))
    words = sum(len(r["question"].split()) for r in pool.rows)
    print(
        f"pool: {args.rows} rows, {words / args.rows:.0f} words/question, {args.eval} eval questions "
        f"(built in {time.perf_counter() - t0:.1f} s, not timed)"
    )

    t = time.perf_counter()
    kept, report = decontaminate(data, DecontaminateConfig(eval_files=[]), pool.eval_sets)
    t_decon = time.perf_counter() - t
    print(
        f"decontaminate + dedup (in memory):  {t_decon:6.2f} s   {report.rows_in} -> {report.rows_out} rows"
    )

    # features for selection: what featurize + filter would leave (about 40% of the pool, s1: 24,496)
    rng = np.random.default_rng(args.seed)
    candidates = [kept[i] for i in np.sort(rng.choice(len(kept), size=int(0.42 * len(kept)), replace=False))]
    rows = [
        {
            "source": pool.rows[i]["source_type"],
            "domain": json.loads(pool.rows[i]["metadata"])["domain"],
            "length": int(rng.lognormal(7.5, 0.8)),
            "correct": bool(rng.random() < 0.6),
        }
        for i in candidates
    ]
    config = SelectionConfig()
    timings = {}
    for method in ("s1k", "random", "diverse", "longest"):
        t = time.perf_counter()
        picked = select_indices(rows, method, args.n, args.seed, config)
        timings[method] = time.perf_counter() - t
        assert len(picked) == args.n
    print(f"select s1k (Algorithm 1, {len(rows)} candidates): {timings['s1k']:6.2f} s")
    print("ablations: " + ", ".join(f"{m} {s:.3f} s" for m, s in timings.items() if m != "s1k"))

    with tempfile.TemporaryDirectory() as tmp:
        pool_path = Path(tmp) / "pool.parquet"
        data.to_parquet(str(pool_path))
        eval_path = Path(tmp) / "eval.jsonl"
        eval_path.write_text(
            "".join(json.dumps({"problem": q}) + "\n" for qs in pool.eval_sets.values() for q in qs)
        )
        cfg = load_config(
            None, {"output_dir": tmp, "pool": str(pool_path), "decontaminate.eval_files": [str(eval_path)]}
        )
        import contextlib
        import io

        t = time.perf_counter()
        with contextlib.redirect_stdout(io.StringIO()):
            result = run_decontaminate(cfg)
        t_stage_decon = time.perf_counter() - t
        feats = Dataset.from_parquet(result.output).select(range(len(rows)))
        feats = feats.add_column("domain", [r["domain"] for r in rows]).add_column(
            "trace_tokens", [r["length"] for r in rows]
        )
        feats = feats.add_column("teacher_correct", [r["correct"] for r in rows])
        feats.to_parquet(str(Path(tmp) / "filtered.parquet"))
        cfg.select.plot = True
        t = time.perf_counter()
        with contextlib.redirect_stdout(io.StringIO()):
            run_select(cfg)
        t_stage_select = time.perf_counter() - t
    print(f"stage command decontaminate (parquet in/out + report): {t_stage_decon:6.2f} s")
    print(f"stage command select (parquet in/out + report + PNG):   {t_stage_select:6.2f} s")
    total = t_decon + timings["s1k"]
    print(
        f"TOTAL decontamination + selection: {total:.2f} s in memory, {t_stage_decon + t_stage_select:.2f} s as stage "
        f"commands (target < 30 s on 2 cores)"
    )


if __name__ == "__main__":
    main()
