"""A synthetic pool in s1's schema with planted contaminants, duplicates and formatting artefacts.

Used by the tests, the speed benchmark and the local walkthrough in the docs. Questions are
random pseudo-words (so no two share a word 8-gram by chance) ending in an arithmetic task with
a checkable answer; ``truth`` says which rows were planted and why.

Example:
    >>> from budget_forcing.selection.synthetic import make_pool
    >>> pool = make_pool(200, seed=0)
    >>> len(pool.rows), sorted(pool.truth)[:2]
    (200, ['contaminated', 'duplicate_cross_source'])
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["SyntheticPool", "make_pool", "SOURCES", "DOMAINS", "task_answer"]

SOURCES = [
    "qfq/openaimath/Algebra",
    "AI-MO/NuminaMath-CoT/aops_forum",
    "qq8933/AIME_1983_2024",
    "Idavidrein/gpqa",
    "simplescaling/s1-prob",
    "KbsdJames/Omni-MATH",
]
#: Relative frequency of each source (AIME and GPQA are small, as in s1's pool).
SOURCE_WEIGHTS = [30, 40, 2, 1, 5, 22]
#: MSC codes and relative sizes (unequal on purpose: Algorithm 1 picks domains uniformly).
DOMAINS = {"05": 6, "11": 5, "12": 4, "26": 3, "51": 3, "60": 2, "68": 1, "81": 1}


@dataclass
class SyntheticPool:
    """``rows`` (s1 schema), ``eval_sets`` (name -> questions) and ``truth`` (reason -> {row index: detail})."""

    rows: list[dict[str, Any]]
    eval_sets: dict[str, list[str]]
    truth: dict[str, dict[int, str]] = field(default_factory=dict)


def task_answer(question: str) -> int | None:
    """The answer of the arithmetic task a synthetic question ends with ("Compute 12 + 30.")."""
    words = question.rsplit("Compute ", 1)
    if len(words) != 2:
        return None
    try:
        a, _, b = words[1].rstrip(". ").split()[:3]
        return int(a) + int(b)
    except ValueError:
        return None


def make_pool(
    n: int, seed: int = 0, n_eval: int = 60, planted: float = 0.02, max_trace_words: int = 300
) -> SyntheticPool:
    """``n`` rows; about ``planted`` of them each are contaminants, exact dups, cross-source dups and artefacts."""
    rng = np.random.default_rng(seed)
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
    vocab = sorted({"".join(rng.choice(letters, size=int(rng.integers(3, 9)))) for _ in range(6000)})

    def words(k: int) -> list[str]:
        return [vocab[j] for j in rng.integers(len(vocab), size=k)]

    def question_text() -> str:
        a, b = (int(x) for x in rng.integers(1, 500, size=2))
        return " ".join(words(int(rng.integers(16, 60)))) + f". Compute {a} + {b}."

    eval_sets = {
        "aime24": [question_text() for _ in range(max(1, n_eval // 3))],
        "math500": [question_text() for _ in range(n_eval - max(1, n_eval // 3))],
    }
    domains = list(DOMAINS)
    src_p = np.array(SOURCE_WEIGHTS, dtype=float) / sum(SOURCE_WEIGHTS)
    dom_p = np.array(list(DOMAINS.values()), dtype=float)
    dom_p /= dom_p.sum()
    rows: list[dict[str, Any]] = []
    for _ in range(n):
        q = question_text()
        answer = task_answer(q)
        source = SOURCES[int(rng.choice(len(SOURCES), p=src_p))]
        domain = domains[int(rng.choice(len(domains), p=dom_p))]
        trace_words = int(np.exp(rng.uniform(np.log(5), np.log(max_trace_words))))
        teacher_right = rng.random() < 0.85
        proof = rng.random() < 0.05
        solution = (
            "We argue step by step. " + " ".join(words(30)) + " This completes the proof."
            if proof
            else f"Adding gives {answer}. So the answer is $\\boxed{{{answer}}}$."
        )
        rows.append(
            {
                "question": q,
                "solution": solution,
                "cot_type": "math",
                "source_type": source,
                "metadata": json.dumps({"domain": domain}),
                "thinking_trajectories": [" ".join(words(trace_words))],
                "attempt": f"The answer is $\\boxed{{{answer if teacher_right else answer + 1}}}$.",
            }
        )
    truth: dict[str, dict[int, str]] = {
        k: {} for k in ("contaminated", "duplicate_exact", "duplicate_cross_source", "format")
    }
    k = max(1, int(planted * n)) if planted > 0 else 0
    targets = rng.permutation(n)
    modified = {int(t) for t in targets[: 4 * k + (max(1, k // 4) if k else 0)]}
    clean = np.array(sorted(set(range(n)) - modified))
    cursor = 0

    def earlier_clean(i: int) -> int | None:
        below = clean[clean < i]
        return int(below[int(rng.integers(len(below)))]) if len(below) else None

    def take(count: int) -> list[int]:
        nonlocal cursor
        out = [int(t) for t in targets[cursor : cursor + count]]
        cursor += count
        return out

    all_eval = [(name, q) for name, qs in eval_sets.items() for q in qs]
    for i in take(k):  # contaminants: an eval question with other words around it, case/space changed
        name, q = all_eval[int(rng.integers(len(all_eval)))]
        rows[i]["question"] = (
            " ".join(words(3)) + "  " + q.upper().replace(" ", "\n", 2) + " " + " ".join(words(2))
        )
        truth["contaminated"][i] = name
    for i in take(k):  # exact duplicates (after normalisation) of an earlier row
        j = earlier_clean(i)
        if j is None:
            continue
        rows[i]["question"] = "  " + rows[j]["question"].replace(" ", "\t", 1).upper()
        truth["duplicate_exact"][i] = str(j)
    for i in take(k):  # cross-source near-duplicates: the last words edited, another source
        j = earlier_clean(i)
        if j is None:
            continue
        ws = rows[j]["question"].split()
        if len(ws) < 24:
            continue
        rows[i]["question"] = " ".join(ws[:-3] + words(3))
        rows[i]["source_type"] = next(s for s in SOURCES if s != rows[j]["source_type"])
        truth["duplicate_cross_source"][i] = str(j)
    artefacts = [
        ("asy", "[asy] draw((0,0)--(1,1)); [/asy] "),
        ("image", "See ![figure](diagram.png) below. "),
        ("numbering", "p3. "),
        ("bold_digits", "**2.** "),
    ]
    for n_done, i in enumerate(take(k)):
        name, text = artefacts[n_done % len(artefacts)]
        if "AIME" in rows[i]["source_type"] and name == "asy":
            rows[i]["source_type"] = SOURCES[0]
        rows[i]["question"] = text + rows[i]["question"]
        truth["format"][i] = name
    for i in take(max(1, k // 4) if k else 0):  # AIME with [asy]: exempt, must be kept
        rows[i]["source_type"] = "qq8933/AIME_1983_2024"
        rows[i]["question"] = "[asy] size(100); [/asy] " + rows[i]["question"]
    return SyntheticPool(rows=rows, eval_sets=eval_sets, truth=truth)
