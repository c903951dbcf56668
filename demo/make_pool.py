"""Synthetic reasoning pool in s1's schema: small tasks whose answer needs the written-out thinking.

Three task families play the role of s1's domains, each at several difficulties. Every trace is a
chain of small written-out steps, so the answer needs the whole chain: cut the thinking short and the
model can only guess. Each operation is written out, then the expression is rewritten with its
result, so a step only
needs the lines just above it::

    What is 94+2+9+8?          94+2+9+8
                               94+2=96
                               96+9+8
                               96+9=105
                               105+8
                               105+8=113
                               So the answer is 113.

* ``addition``: a two-digit number plus 1 to 6 digits.
* ``subtraction``: 1 to 5 digits taken from a two-digit number.
* ``mixed``: 2 to 6 digits added or taken from a two-digit number, never going below zero.

Every single step is easy (a number below 200 plus or minus a digit); what is hard without thinking
is doing several of them in one go.

Questions are short and made of their random numbers, so word 8-gram decontamination (s1's rule,
which the selection recipe applies against the evaluation set) only drops true overlaps instead of
every question that shares a template.

Every row has s1K's columns (``question``, ``solution``, ``cot_type``, ``source_type``, ``metadata``,
``thinking_trajectories`` (a list with one trace, as in s1K), ``attempt``) plus ``domain`` (the task
family, what the selection recipe samples over) and ``answer`` (the gold number). Some traces contain
a "Wait, let me check:" line that redoes the operation above it (or, at the end, the last one) and
confirms it or fixes a slip, as real traces do. The attempt is ``"Final Answer: <number>"``, exactly what budget forcing's forced ``Final Answer:`` prefix
leads into, so a model cut off mid-thought answers in the trained form.

A small share of rows is deliberately defective (a missing attempt, an ``[asy]`` figure, an exact
duplicate) so that the selection recipe's quality filters have something real to drop and count.

Usage:
    python demo/make_pool.py --out demo_outputs/data --pool-size 6000 --eval-size 200

Example:
    >>> from demo.make_pool import POOL_COLUMNS, make_row
    >>> import random
    >>> row = make_row("addition", random.Random(0), difficulty=2)
    >>> sorted(row) == sorted(POOL_COLUMNS)
    True
"""

from __future__ import annotations

import argparse
import json
import random
from collections.abc import Callable
from pathlib import Path

__all__ = [
    "FAMILIES",
    "POOL_COLUMNS",
    "make_row",
    "make_rows",
    "make_pool",
    "make_eval_set",
    "tokenizer_corpus",
    "write_jsonl",
    "main",
]

#: Columns of every pool row: s1K's schema plus the domain and the bare gold answer.
POOL_COLUMNS = [
    "question",
    "solution",
    "cot_type",
    "source_type",
    "metadata",
    "thinking_trajectories",
    "attempt",
    "domain",
    "answer",
]

#: Difficulty levels of each family (1 = easiest); the trace grows with the level.
LEVELS = {"addition": 6, "subtraction": 5, "mixed": 5}
FAMILIES = tuple(LEVELS)


#: Share of traces whose first pass is followed by "Wait" and a step-by-step re-check: after the
#: selection (which prefers long traces) most training traces, so the model learns the one-step
#: arithmetic of the re-check, yet under half of those as long as the evaluation questions, so that
#: greedy decoding ends a first pass there instead of re-checking unasked.
P_WAIT = 0.4
#: Operations a first pass does at once ("94+2+9+8=113"): quick, and where slips happen.
CHUNK = 3
#: Second "Wait" after a re-check: "Wait, the check stands: 113." (shares of 0, 1 and 2 confirmations).
CONFIRMATIONS = (0.6, 0.25, 0.15)
CHECK = "Wait, let me check it step by step."


def _slip(value: int, rng: random.Random) -> int:
    """A wrong result a slip of the mind gives: a lost or extra carry (+-10) or off by one (+-1)."""
    options = [value + d for d in (-10, -1, 1, 10) if value + d >= 0]
    return rng.choice(options)


def _expression(start: int, terms: list[tuple[str, int]]) -> str:
    return f"{start}" + "".join(f"{op}{n}" for op, n in terms)


def _first_pass(
    start: int, terms: list[tuple[str, int]], rng: random.Random, slip_at: int | None
) -> tuple[list[str], int]:
    """The quick pass: up to ``CHUNK`` operations per line (``94+2+9+8=113``), then the rest rewritten.

    A slip in chunk ``slip_at`` (its result off by one or a carry) carries on into the following lines,
    so the pass ends on a wrong answer, as a hurried first pass does.
    """
    lines = [_expression(start, terms)]
    total = start
    chunks = [terms[i : i + CHUNK] for i in range(0, len(terms), CHUNK)]
    for i, chunk in enumerate(chunks):
        new = total + sum(n if op == "+" else -n for op, n in chunk)
        if i == slip_at:
            new = _slip(new, rng)
        lines.append(f"{_expression(total, chunk)}={new}")
        rest = [t for c in chunks[i + 1 :] for t in c]
        if rest:
            lines.append(_expression(new, rest))
        total = new
    return lines, total


def _step_by_step(start: int, terms: list[tuple[str, int]]) -> tuple[list[str], int]:
    """The careful re-check: one operation per line (``94+2=96``), then the rest rewritten."""
    lines = []
    total = start
    for i, (op, n) in enumerate(terms):
        new = total + n if op == "+" else total - n
        lines.append(f"{total}{op}{n}={new}")
        if i + 1 < len(terms):
            lines.append(_expression(new, terms[i + 1 :]))
        total = new
    return lines, total


def _question(start: int, terms: list[tuple[str, int]], rng: random.Random, p_wait: float):
    """Question, trace, answer and worked solution of ``start`` followed by ``terms``.

    Every trace starts with a quick first pass and ``So the answer is <value>.``. With probability
    ``p_wait`` it goes on with ``Wait, let me check it step by step.``, redoes the whole chain one
    operation at a time and states the (possibly corrected) answer again; half of these first passes
    had a slip that the re-check fixes. A re-checked trace may then confirm once or twice more
    (``Wait, the check stands: <value>.``), what a second forced "Wait" leads into.
    """
    expression = _expression(start, terms)
    checked = rng.random() < p_wait
    n_chunks = -(-len(terms) // CHUNK)
    slip_at = rng.randrange(n_chunks) if checked and rng.random() < 0.5 else None
    lines, first = _first_pass(start, terms, rng, slip_at)
    lines.append(f"So the answer is {first}.")
    total = first
    if checked:
        careful, total = _step_by_step(start, terms)
        lines += [CHECK, *careful, f"So the answer is {total}."]
        confirmations = rng.choices(range(len(CONFIRMATIONS)), weights=CONFIRMATIONS)[0]
        lines += [f"Wait, the check stands: {total}."] * confirmations
    return f"What is {expression}?", "\n".join(lines), total, f"{expression} = {total}"


def _addition(rng: random.Random, level: int, p_wait: float) -> tuple[str, str, int, str]:
    numbers = [rng.randint(1, 9) for _ in range(level + 1)]  # 2..7 digits
    numbers[0] = rng.randint(10, 99)
    return _question(numbers[0], [("+", n) for n in numbers[1:]], rng, p_wait)


def _subtraction(rng: random.Random, level: int, p_wait: float) -> tuple[str, str, int, str]:
    numbers = [rng.randint(1, 9) for _ in range(level)]  # 1..5 digits taken away
    start = rng.randint(max(10, sum(numbers)), 99)
    return _question(start, [("-", n) for n in numbers], rng, p_wait)


def _mixed(rng: random.Random, level: int, p_wait: float) -> tuple[str, str, int, str]:
    terms = [(rng.choice("+-"), rng.randint(1, 9)) for _ in range(level + 1)]  # 2..6 operations
    start = rng.randint(max(10, sum(n for op, n in terms if op == "-")), 99)  # never below zero
    return _question(start, terms, rng, p_wait)


_MAKERS: dict[str, Callable[[random.Random, int, float], tuple[str, str, int, str]]] = {
    "addition": _addition,
    "subtraction": _subtraction,
    "mixed": _mixed,
}


def make_row(family: str, rng: random.Random, difficulty: int, p_wait: float = P_WAIT) -> dict:
    """One pool row of ``family`` at ``difficulty`` (1..4), in s1K's schema."""
    if family not in _MAKERS:
        raise ValueError(f"Unknown task family {family!r}; use one of {list(FAMILIES)}.")
    if not 1 <= difficulty <= LEVELS[family]:
        raise ValueError(f"difficulty must be in 1..{LEVELS[family]} for {family!r}, got {difficulty}.")
    question, trace, answer, worked = _MAKERS[family](rng, difficulty, p_wait)
    return {
        "question": question,
        "solution": f"{worked}, so the answer is $\\boxed{{{answer}}}$.",
        "cot_type": "math",
        "source_type": f"synthetic/{family}",
        "metadata": json.dumps({"family": family, "difficulty": difficulty}),
        "thinking_trajectories": [trace],
        "attempt": f"Final Answer: {answer}",
        "domain": family,
        "answer": str(answer),
    }


def make_rows(
    n: int,
    seed: int,
    p_wait: float = P_WAIT,
    families: tuple[str, ...] = FAMILIES,
    exclude: set[str] | None = None,
    min_level: int | dict[str, int] = 1,
) -> list[dict]:
    """Up to ``n`` rows with distinct questions, none in ``exclude``, cycling through ``families``.

    Difficulty is uniform over each family's levels from ``min_level`` up. A family with no new question left stops
    contributing, so fewer than ``n`` rows can come back.
    """
    rng = random.Random(seed)
    seen = set(exclude or ())
    rows: list[dict] = []
    active = list(families)
    i = 0
    while len(rows) < n and active:
        family = active[i % len(active)]
        for _ in range(200):
            lowest = min_level.get(family, 1) if isinstance(min_level, dict) else min_level
            row = make_row(family, rng, rng.randint(min(lowest, LEVELS[family]), LEVELS[family]), p_wait)
            if row["question"] not in seen:
                seen.add(row["question"])
                rows.append(row)
                i += 1
                break
        else:
            active.remove(family)
    return rows


def _defects(rows: list[dict], fresh: list[dict], rng: random.Random) -> list[dict]:
    """Rows broken the way real pools are: no attempt, an ``[asy]`` figure (both made from the ``fresh``
    rows, whose questions are new), and exact duplicates of ``rows``, in turn."""
    broken = []
    for i, row in enumerate(fresh):
        row = dict(row)
        if i % 3 == 0:
            row["attempt"] = ""
        elif i % 3 == 1:
            row["question"] = row["question"] + " [asy] draw((0,0)--(1,1)); [/asy]"
        else:
            row = dict(rng.choice(rows))
        broken.append(row)
    return broken


def make_pool(
    pool_size: int,
    seed: int = 0,
    p_wait: float = P_WAIT,
    defective: float = 0.03,
    exclude: set[str] | None = None,
) -> list[dict]:
    """The training pool: up to ``pool_size`` clean rows (questions not in ``exclude``, e.g. the
    evaluation set) plus ``round(defective * pool_size)`` defective ones, shuffled."""
    n_defective = round(defective * pool_size)
    rows = make_rows(pool_size + n_defective, seed, p_wait, exclude=exclude)
    rows, fresh = rows[:pool_size], rows[pool_size:]
    rng = random.Random(seed + 1)
    rows += _defects(rows, fresh, rng)
    rng.shuffle(rows)
    return rows


#: Easiest level of each family's evaluation questions: four operations and more (two quick chunks
#: or more), where first passes slip.
EVAL_MIN_LEVEL = {"addition": 4, "subtraction": 4, "mixed": 3}


def make_eval_set(
    size: int, seed: int = 12345, min_level: int | dict[str, int] = EVAL_MIN_LEVEL
) -> list[dict]:
    """Held-out evaluation questions, families in turn, levels ``min_level`` and up, no re-checks."""
    rows = make_rows(size, seed, p_wait=0.0, min_level=min_level)
    if len(rows) < size:
        raise ValueError(f"Only {len(rows)} distinct evaluation questions exist; ask for fewer than {size}.")
    return rows


def tokenizer_corpus(rows: list[dict]) -> list[str]:
    """Texts to train the demo tokenizer on: the questions, traces and attempts, plus chat words."""
    scaffold = "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n<|im_start|>assistant\n"
    texts = [scaffold + "<|im_start|>think\n<|im_start|>answer\nFinal Answer: Wait"] * max(1, len(rows) // 4)
    for row in rows:
        texts += [row["question"], *row["thinking_trajectories"], row["attempt"]]
    return texts


def write_jsonl(rows: list[dict], path: str | Path) -> Path:
    """Write ``rows`` as JSON lines (creating parent directories); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    return path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="demo_outputs/data", help="output directory")
    parser.add_argument("--pool-size", type=int, default=6000, help="clean rows in the training pool")
    parser.add_argument("--eval-size", type=int, default=200, help="held-out evaluation questions")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    eval_rows = make_eval_set(args.eval_size, seed=args.seed + 12345)
    pool = make_pool(args.pool_size, seed=args.seed, exclude={row["question"] for row in eval_rows})
    print(f"pool: {len(pool)} rows -> {write_jsonl(pool, Path(args.out) / 'pool.jsonl')}")
    print(f"eval: {len(eval_rows)} rows -> {write_jsonl(eval_rows, Path(args.out) / 'eval.jsonl')}")


if __name__ == "__main__":
    main()
