"""Local, deterministic grading of reasoning-model answers with ``math-verify``.

Reasoning models write a long thinking trace and then a short answer. Grading looks only at the
answer (what `ThinkingFormat.split` returns after the end of thinking, or the whole text when it has
no end-of-thinking delimiter) and takes, in order:

1. the content of the last ``\\boxed{...}`` (or ``\\fbox{...}``), braces balanced;
2. otherwise the rest of the line after the last ``Final Answer:`` / ``Answer:`` / ``answer is``;
3. otherwise (``grade`` only) whatever ``math_verify.parse`` finds in the answer.

Gold and prediction are then compared by ``math_verify.verify``: ``\\frac{1}{2}``, ``1/2`` and ``0.5``
are equal, ``\\dfrac`` and ``\\frac`` too, LaTeX and plain text both parse. Multiple-choice answers are
graded by letter with `extract_choice`.

``math-verify`` is an optional dependency: ``pip install 'budget-forcing[eval]'``.

Example:
    >>> from budget_forcing.grading import extract_answer, extract_choice, grade
    >>> grade("<think>2/4 reduces</think>Final Answer: $\\\\frac{1}{2}$", "0.5")
    True
    >>> extract_answer("so the result is \\\\boxed{\\\\frac{3}{4}}.")
    '\\\\frac{3}{4}'
    >>> extract_choice("The answer is (C).")
    'C'
"""

from __future__ import annotations

import re
import threading
from typing import Any

from budget_forcing._extras import require
from budget_forcing.formats import FORMATS, ThinkingFormat

__all__ = [
    "END_OF_THINKING",
    "answer_part",
    "extract_boxed",
    "extract_answer",
    "extract_choice",
    "grade",
    "grade_choice",
]

#: End-of-thinking delimiters of the formats that ship (``"think"`` and ``"s1"``).
END_OF_THINKING: tuple[str, ...] = tuple(fmt.end for fmt in FORMATS.values())

_ANSWER_ANCHOR = re.compile(r"(?:final\s+)?answer(?:\s+is)?\s*[:：]?", re.IGNORECASE)
_BOXED = re.compile(r"\\(?:boxed|fbox)\s*\{")


def _math_verify() -> Any:
    return require("math_verify", "eval", "Grading")


def answer_part(text: str, formats: tuple[ThinkingFormat, ...] = tuple(FORMATS.values())) -> str:
    """The answer of ``text`` as `ThinkingFormat.split` finds it, or all of ``text`` when thinking never ended.

    The format is the one whose end-of-thinking delimiter comes first in ``text``.

    >>> answer_part("<think>maybe 3</think>It is 4.")
    'It is 4.'
    """
    ends = [(text.find(fmt.end), i) for i, fmt in enumerate(formats) if fmt.end in text]
    answer = formats[min(ends)[1]].split(text)[1] if ends else None
    # Chat-format leftovers that follow an answer ("<|im_end|>", "<|endoftext|>").
    return (text if answer is None else answer).split("<|im_end|>", 1)[0]


def extract_boxed(text: str) -> str | None:
    """The content of the last ``\\boxed{...}`` / ``\\fbox{...}`` in ``text``, braces balanced.

    >>> extract_boxed("\\\\boxed{1} then \\\\boxed{\\\\frac{2}{3}}")
    '\\\\frac{2}{3}'
    """
    matches = list(_BOXED.finditer(text))
    for match in reversed(matches):
        depth, start = 1, match.end()
        for i in range(start, len(text)):
            if text[i] == "{":
                depth += 1
            elif text[i] == "}":
                depth -= 1
                if depth == 0:
                    return text[start:i].strip()
    return None


def _clean(answer: str) -> str:
    answer = answer.strip()
    # "$\frac{1}{2}$." -> "\frac{1}{2}"; "**7**" -> "7"
    answer = answer.strip("*").strip()
    answer = answer.rstrip(".").strip()
    if len(answer) >= 2 and answer.startswith("$") and answer.endswith("$"):
        answer = answer.strip("$").strip()
    for opener, closer in (("\\(", "\\)"), ("\\[", "\\]")):
        if answer.startswith(opener) and answer.endswith(closer):
            answer = answer[len(opener) : -len(closer)].strip()
    return answer


def extract_answer(text: str) -> str | None:
    """The final answer written in ``text``, as a string, or ``None`` when there is none.

    Looks at the answer part only (after ``</think>`` / ``<|im_start|>answer``, see `answer_part`), and takes
    the last ``\\boxed{}``, else the rest of the line after the last ``Final Answer:`` / ``Answer:`` /
    ``answer is``.

    >>> extract_answer("Final Answer: 7")
    '7'
    >>> extract_answer("<think>Answer: 3? no</think>no idea") is None
    True
    """
    answer = answer_part(text)
    boxed = extract_boxed(answer)
    if boxed is not None:
        return boxed
    anchors = list(_ANSWER_ANCHOR.finditer(answer))
    for anchor in reversed(anchors):
        rest = answer[anchor.end() :].lstrip()
        line = rest.split("\n", 1)[0] if rest else ""
        line = _clean(line)
        if line:
            return line
    return None


def _timeout() -> int | None:
    # math-verify's timeout uses signal.alarm, which only works in the main thread.
    return 5 if threading.current_thread() is threading.main_thread() else None


def _parse_gold(gold: str) -> list[Any]:
    mv = _math_verify()
    text = gold.strip()
    if "\\boxed" not in text and "$" not in text:
        text = f"\\boxed{{{text}}}"
    return mv.parse(text, parsing_timeout=_timeout())


def grade(prediction: str, gold: str) -> bool:
    """Whether ``prediction`` (a model's full output or just its answer) answers ``gold`` correctly.

    The gold answer is plain or LaTeX text (``"1/2"``, ``"\\\\frac{1}{2}"``, ``"\\\\boxed{42}"``).

    >>> grade("Final Answer: 7", "7"), grade("\\\\boxed{\\\\dfrac{1}{2}}", "0.5"), grade("Answer: 8", "7")
    (True, True, False)
    """
    mv = _math_verify()
    gold_parsed = _parse_gold(gold)
    extracted = extract_answer(prediction)
    pred_parsed: list[Any] = []
    if extracted is not None:
        pred_parsed = mv.parse(f"\\boxed{{{extracted}}}", parsing_timeout=_timeout())
    if not pred_parsed:
        # No marked answer, or one with trailing words ("7 apples"): let math-verify search the text.
        pred_parsed = mv.parse(extracted or answer_part(prediction), parsing_timeout=_timeout())
    if gold_parsed and pred_parsed and mv.verify(gold_parsed, pred_parsed, timeout_seconds=_timeout()):
        return True
    # Answers math-verify cannot parse (words, names): compare normalised strings.
    if extracted is None:
        return False
    return _normalise_text(extracted) == _normalise_text(_clean(extract_boxed(gold) or gold))


def _normalise_text(text: str) -> str:
    text = re.sub(r"\\text\{([^{}]*)\}", r"\1", text)
    return re.sub(r"[\s$]+", "", text).lower()


def extract_choice(text: str, letters: str = "ABCD") -> str | None:
    """The multiple-choice letter answered in ``text`` (upper case), or ``None``.

    Looks at the answer part only and takes the last ``\\boxed{B}``, else the first letter right after
    the last ``Answer:`` / ``answer is`` (``"(B)"``, ``"B."``, ``"**B**"``), else an answer that is
    just a letter.

    >>> extract_choice("Final Answer: (B) 3.2 eV"), extract_choice("\\\\boxed{\\\\text{D}}")
    ('B', 'D')
    """
    if not letters or not all(c.isalpha() for c in letters):
        raise ValueError(f"`letters` must be a non-empty string of letters like 'ABCD', got {letters!r}.")
    letter_class = "[" + re.escape(letters.upper() + letters.lower()) + "]"
    answer = answer_part(text)
    boxed = extract_boxed(answer)
    if boxed is not None:
        inner = re.sub(r"\\text(?:bf)?\{([^{}]*)\}", r"\1", boxed)
        found = re.fullmatch(rf"\W*({letter_class})\W*(?:\s.*)?", inner, flags=re.DOTALL)
        if found:
            return found.group(1).upper()
    lead = re.compile(rf"[\s*$(\[{{]*(?:\\text(?:bf)?\{{)?({letter_class})(?![A-Za-z])")
    for anchor in reversed(list(_ANSWER_ANCHOR.finditer(answer))):
        found = lead.match(answer, anchor.end())
        if found:
            return found.group(1).upper()
    found = re.fullmatch(rf"[\s*$(\[]*({letter_class})[\s*$)\].]*", answer)
    if found:
        return found.group(1).upper()
    return None


def grade_choice(prediction: str, gold_letter: str, letters: str = "ABCD") -> bool:
    """Whether the letter extracted from ``prediction`` is ``gold_letter``.

    >>> grade_choice("Answer: c", "C")
    True
    """
    choice = extract_choice(prediction, letters)
    return choice is not None and choice == gold_letter.strip().upper()
