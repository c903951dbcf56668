"""The ``budget-forcing`` command line: argument parsing only; the work is done by library modules.

Subcommands:

* ``generate`` (`budget_forcing.generation`): answer questions with budget forcing and print
  thinking and answer separately, with per-row statistics (``--json`` for JSON Lines, ``--stream``
  to watch it live).
* ``eval`` (`budget_forcing.integrations.lm_eval`): lm-eval with the ``hf-budget-forcing`` model and
  the packaged ``*_bf`` tasks (``pip install 'budget-forcing[eval]'``); the arguments go to lm-eval.
* ``stats`` (`budget_forcing.vllm_lm_eval`): per-sample budget statistics of a stock
  ``lm_eval --model vllm --log_samples`` run.
* ``select`` (`budget_forcing.selection`): the s1K data selection recipe.
* ``sft`` (`budget_forcing.sft`): ``accelerate launch -m budget_forcing.sft``, the code of
  ``recipes/sft.py``; arguments before ``--`` go to accelerate, the rest to the recipe.

``budget-forcing --help`` imports neither torch nor transformers.

Example:
    $ budget-forcing generate demo_outputs/model --question "What is 12 + 30?" --max 64 --waits 1
    $ budget-forcing generate simplescaling/s1.1-32B --file questions.jsonl --max 4000 --json > out.jsonl
    $ budget-forcing generate Qwen/Qwen3-0.6B --question "How many r in strawberry?" --max 512 --stream
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import asdict

from budget_forcing.generation import (
    DEFAULT_ANSWER_ALLOWANCE,
    DEFAULT_BATCH_SIZE,
    DEFAULT_UNLIMITED_NEW_TOKENS,
    DEMO_MODEL_DIR,
)

__all__ = ["build_parser", "main"]


class CLIError(Exception):
    """A user error: printed as ``budget-forcing: error: ...`` with exit status 2."""


def _check_generate_args(args: argparse.Namespace) -> None:
    if args.question and args.file:
        raise CLIError("Pass either --question or --file, not both.")
    if not args.question and not args.file:
        raise CLIError("Nothing to answer: pass --question TEXT (repeatable) or --file questions.jsonl/.txt.")
    if args.max is not None and args.min > args.max:
        raise CLIError(f"--min ({args.min}) is larger than --max ({args.max}); lower --min or raise --max.")
    if args.stream and args.batch_size not in (None, 1):
        raise CLIError(
            "--stream shows one generation at a time and supports --batch-size 1 only; drop --batch-size."
        )
    if not 0 < args.top_p <= 1:
        raise CLIError("--top-p must be in (0, 1].")


def _run_generate(args: argparse.Namespace) -> int:
    _check_generate_args(args)
    from budget_forcing import generation

    questions = list(args.question or []) or generation.read_questions(args.file)
    if not questions:
        raise CLIError(f"{args.file} holds no questions.")
    path = generation.resolve_model_path(args.model)
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"loading {path}", file=sys.stderr)
    model, tokenizer = generation.load_model(path, device=args.device, dtype=args.dtype)
    if args.format != "auto" and (warning := generation.format_mismatch(args.format, tokenizer)):
        print(f"budget-forcing: warning: {warning}", file=sys.stderr)
    results = generation.generate_rows(
        model,
        tokenizer,
        questions,
        min=args.min,
        max=args.max,
        num_waits=args.waits,
        wait=args.wait or None,
        format=args.format,
        answer_prefix=args.answer_prefix or None,
        max_answer_tokens=args.max_answer_tokens,
        compile=args.compile,
        max_new_tokens=args.max_new_tokens,
        stop=args.stop or (),
        temperature=args.temperature,
        top_p=args.top_p,
        seed=args.seed,
        batch_size=args.batch_size or (1 if args.stream else DEFAULT_BATCH_SIZE),
        system=args.system,
        chat_template=not args.no_chat_template,
        stream=sys.stdout if args.stream else None,
        progress=None if args.stream else sys.stderr,
    )
    if args.json:
        for result in results:
            print(json.dumps(asdict(result), ensure_ascii=False))
    elif not args.stream:
        for i, result in enumerate(results, 1):
            sys.stdout.write(result.render(i, len(results)))
    sys.stdout.flush()
    return 0


def _run_eval(argv: list[str]) -> int:
    try:
        from budget_forcing.integrations.lm_eval import cli_evaluate
    except ImportError as err:
        raise CLIError(
            f"`budget-forcing eval` needs lm-eval and math-verify ({err}). "
            "Install them with: pip install 'budget-forcing[eval]'"
        ) from err
    result = cli_evaluate(argv)
    return result if isinstance(result, int) else 0


def _run_stats(argv: list[str]) -> int:
    try:
        from budget_forcing.vllm_lm_eval import main as stats_main
    except ImportError as err:
        raise CLIError(f"`budget-forcing stats` needs vLLM and lm-eval ({err}).") from err
    return stats_main(argv)


def _run_select(argv: list[str]) -> int:
    from budget_forcing.selection.cli import main as select_main

    return select_main(argv)


def _run_sft(argv: list[str]) -> int:
    launcher, script_args = (
        (argv[: argv.index("--")], argv[argv.index("--") + 1 :]) if "--" in argv else ([], argv)
    )
    accelerate = shutil.which("accelerate")
    base = [accelerate, "launch"] if accelerate else [sys.executable, "-m", "accelerate.commands.launch"]
    # The same code as recipes/sft.py, from the installed package: no clone needed.
    command = [*base, *launcher, "-m", "budget_forcing.sft", *script_args]
    print("+ " + " ".join(command), file=sys.stderr, flush=True)
    return subprocess.call(command)


def _non_negative(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="budget-forcing",
        description="Budget forcing (s1: Simple test-time scaling) for Hugging Face causal LMs.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    gen = sub.add_parser(
        "generate",
        help="answer questions with budget forcing; print thinking and answer separately",
        description="Answer questions with budget forcing in one generate() call per batch, printing "
        "thinking and answer separately with per-row statistics.",
    )
    gen.add_argument(
        "model",
        nargs="?",
        help=f"model directory or hub id (default: the demo's model, {DEMO_MODEL_DIR}/, when it exists)",
    )
    src = gen.add_argument_group("questions")
    src.add_argument("--question", "-q", action="append", help="a question (repeat for several)")
    src.add_argument(
        "--file", "-f", help="questions: .jsonl/.json ('question' field) or .txt (one per line); - = stdin"
    )
    src.add_argument("--system", help="system prompt (default: the chat template's)")
    src.add_argument("--no-chat-template", action="store_true", help="use each question as the raw prompt")
    budget = gen.add_argument_group("budget forcing")
    budget.add_argument("--min", type=_non_negative, default=0, help="minimum thinking tokens (default 0)")
    budget.add_argument(
        "--max", type=_non_negative, default=None, help="maximum thinking tokens (default unlimited)"
    )
    budget.add_argument(
        "--waits",
        type=_non_negative,
        default=0,
        help="ignore the model's first N attempts to end thinking (default 0)",
    )
    budget.add_argument(
        "--wait",
        default="Wait",
        help="text injected to extend thinking (default 'Wait'; '' = only suppress the end)",
    )
    budget.add_argument("--format", default="auto", choices=["auto", "s1", "think"], help="thinking format")
    budget.add_argument(
        "--answer-prefix",
        default="Final Answer:",
        help="forced after a budget-forced end (default 'Final Answer:'; '' = none)",
    )
    budget.add_argument("--max-answer-tokens", type=_positive, default=None, help="cap on answer tokens")
    budget.add_argument(
        "--stop", action="append", help="stop string, only honoured in the answer (repeatable)"
    )
    decoding = gen.add_argument_group("decoding")
    decoding.add_argument(
        "--max-new-tokens",
        type=_positive,
        default=None,
        help=f"default: max + end sequence + {DEFAULT_ANSWER_ALLOWANCE} (or max-answer-tokens); "
        f"{DEFAULT_UNLIMITED_NEW_TOKENS} without --max",
    )
    decoding.add_argument("--temperature", type=float, default=0.0, help="> 0 samples (default 0: greedy)")
    decoding.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling (with --temperature)")
    decoding.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    decoding.add_argument(
        "--batch-size",
        type=_positive,
        default=None,
        help=f"prompts per generate() call (default {DEFAULT_BATCH_SIZE})",
    )
    runtime = gen.add_argument_group("runtime and output")
    runtime.add_argument(
        "--device", default="auto", help="auto (all GPUs if any, else cpu), cpu, cuda, cuda:1, mps ..."
    )
    runtime.add_argument(
        "--dtype",
        default="auto",
        choices=["auto", "float32", "bfloat16", "float16"],
        help="auto: float32 on CPU, the checkpoint's dtype on GPU",
    )
    runtime.add_argument("--threads", type=_positive, default=None, help="CPU threads for torch")
    runtime.add_argument(
        "--compile",
        action="store_true",
        help="fuse the processor's per-step update with torch.compile (GPUs)",
    )
    out = runtime.add_mutually_exclusive_group()
    out.add_argument("--json", action="store_true", help="print one JSON object per question (JSON Lines)")
    out.add_argument("--stream", action="store_true", help="show thinking and answer live (batch size 1)")

    sub.add_parser("eval", help="run lm-eval with budget forcing (arguments go to lm-eval)", add_help=False)
    sub.add_parser(
        "stats",
        help="budget statistics of `lm_eval --model vllm` samples (budget-forcing stats --help)",
        add_help=False,
    )
    sub.add_parser("select", help="s1K data selection (budget-forcing select --help)", add_help=False)
    sub.add_parser(
        "sft",
        help="SFT: `accelerate launch -m budget_forcing.sft` (arguments before -- go to accelerate, the rest to the recipe)",
        add_help=False,
    )
    return parser


_PASSTHROUGH = {"eval": _run_eval, "stats": _run_stats, "select": _run_select, "sft": _run_sft}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``budget-forcing``; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if argv and argv[0] in _PASSTHROUGH:
            return _PASSTHROUGH[argv[0]](argv[1:])
        parser = build_parser()
        args = parser.parse_args(argv)
        if args.command is None:
            parser.print_help()
            return 2
        return _run_generate(args)
    except (CLIError, ValueError, FileNotFoundError) as err:
        # Library errors name the fix (bad budgets, formats, files, model paths).
        print(f"budget-forcing: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
