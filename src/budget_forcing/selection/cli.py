"""``budget-forcing select``: s1K data selection, a pool in s1's schema -> decontaminated, featurized,
filtered, 1,000 selected SFT examples (``python recipes/select_s1k.py`` runs the same command).

Usage:
    # every stage, the real s1 pool (needs `vllm serve` endpoints for base models, judge, classifier)
    budget-forcing select all --config recipes/configs/selection/s1k.yaml

    # one stage at a time, with overrides (dotted keys map 1:1 to the YAML recipe)
    budget-forcing select decontaminate --config recipes/configs/selection/s1k.yaml --eval_files my_eval.jsonl
    budget-forcing select featurize --config recipes/configs/selection/s1k.yaml --featurize.judge.max_concurrency 8
    budget-forcing select filter --config recipes/configs/selection/s1k.yaml
    budget-forcing select select --config recipes/configs/selection/s1k.yaml --seed 1 --method longest
    budget-forcing select format --config recipes/configs/selection/s1k.yaml --format.teacher deepseek

    # a synthetic pool to try the tiny local recipe
    budget-forcing select synth --rows 2000 --output outputs/s1k_tiny/pool.jsonl

Outputs and reports go to ``output_dir`` (``<output_dir>/reports/<stage>.json|.txt|.png``).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

from budget_forcing.selection import pipeline

COMMANDS = ["decontaminate", "featurize", "filter", "select", "format", "all", "synth"]


def parse_args(argv: list[str] | None = None) -> tuple[argparse.Namespace, dict[str, Any]]:
    """Known flags, and ``--section.key value`` overrides (values parsed as YAML)."""
    parser = argparse.ArgumentParser(
        prog="budget-forcing select",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("command", choices=COMMANDS)
    parser.add_argument(
        "--config", help="YAML recipe (recipes/configs/selection/*.yaml); default: built-in defaults."
    )
    parser.add_argument("--input", help="Input file of this stage (overrides <stage>.input).")
    parser.add_argument("--output", help="Output file of this stage (overrides <stage>.output).")
    parser.add_argument("--output_dir", help="Where outputs and reports go.")
    parser.add_argument(
        "--eval_files", nargs="+", help="Extra evaluation sets (JSONL/parquet) to decontaminate against."
    )
    parser.add_argument("--seed", type=int, help="Seed of the selection.")
    parser.add_argument("--n", type=int, help="Number of questions to select.")
    parser.add_argument("--method", help="Selection method: s1k, random, diverse, longest, full.")
    parser.add_argument("--rows", type=int, default=2000, help="synth: number of rows.")
    parser.add_argument("-v", "--verbose", action="store_true", help="Log retries and progress details.")
    args, rest = parser.parse_known_args(argv)
    import dataclasses

    import yaml

    from budget_forcing.selection.config import SelectionConfig

    top_level = {f.name for f in dataclasses.fields(SelectionConfig)}
    overrides: dict[str, Any] = {}
    i = 0
    while i < len(rest):
        key, eq, value = rest[i].removeprefix("--").partition("=")
        if not rest[i].startswith("--") or ("." not in key and key not in top_level):
            parser.error(
                f"Unrecognised argument {rest[i]!r}; overrides look like --select.n 1000 or --featurize.tokenizer=path."
            )
        if not eq:
            if i + 1 >= len(rest):
                parser.error(f"{rest[i]} needs a value.")
            i += 1
            value = rest[i]
        overrides[key] = yaml.safe_load(value)
        i += 1
    return args, overrides


def main(argv: list[str] | None = None) -> int:
    args, overrides = parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s"
    )
    if args.command == "synth":
        return _synth(args)
    stage = args.command
    for flag, key in (
        ("output_dir", "output_dir"),
        ("seed", "seed"),
        ("n", "select.n"),
        ("method", "select.method"),
    ):
        if getattr(args, flag) is not None:
            overrides[key] = getattr(args, flag)
    if args.eval_files:
        overrides["decontaminate.extra_eval_files"] = args.eval_files
    section = {"all": None}.get(stage, stage)
    for flag in ("input", "output"):
        if getattr(args, flag) is not None:
            if section is None:
                raise SystemExit(
                    f"--{flag} names one stage's file; with `all` set `pool` / `output_dir` instead."
                )
            overrides[f"{section}.{flag}"] = getattr(args, flag)
    config = pipeline.load_config(args.config, overrides)
    if stage == "all":
        pipeline.run_all(config)
    else:
        pipeline.STAGES[stage](config)
    return 0


def _synth(args: argparse.Namespace) -> int:
    import json

    from budget_forcing.selection.synthetic import make_pool

    output = Path(args.output or "outputs/s1k_tiny/pool.jsonl")
    pool = make_pool(args.rows, seed=args.seed or 0)
    output.parent.mkdir(parents=True, exist_ok=True)
    with output.open("w") as f:
        for row in pool.rows:
            f.write(json.dumps(row) + "\n")
    for name, questions in pool.eval_sets.items():
        with (output.parent / f"eval_{name}.jsonl").open("w") as f:
            for q in questions:
                f.write(json.dumps({"problem": q}) + "\n")
    print(f"wrote {len(pool.rows)} rows to {output} and evaluation sets eval_*.jsonl next to it")
    return 0


if __name__ == "__main__":
    sys.exit(main())
