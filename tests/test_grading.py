"""Grading with math-verify: equivalent answers written differently, answer-part only, letters."""

import pytest

pytest.importorskip("math_verify")

from budget_forcing.grading import answer_part, extract_answer, extract_boxed, extract_choice, grade  # noqa: E402


@pytest.mark.parametrize(
    ("prediction", "gold"),
    [
        ("Final Answer: 7", "7"),
        ("Answer: 7.", "7"),
        ("The answer is \\boxed{\\frac{1}{2}}.", "0.5"),
        ("\\boxed{1/2}", "\\frac12"),
        ("Final Answer: $\\dfrac{3}{4}$", "\\frac{3}{4}"),
        ("\\boxed{0.75}", "3/4"),
        ("Final Answer: 033", "33"),
        ("Final Answer: 1,000", "1000"),
        ("\\boxed{3\\sqrt{2}}", "\\sqrt{18}"),
        ("\\boxed{x^2+2x+1}", "(x+1)^2"),
        ("\\boxed{\\left( 3, \\frac{\\pi}{2} \\right)}", "\\left( 3, \\frac{\\pi}{2} \\right)"),
        ("Answer: 2", "\\boxed{2}"),
        ("Final Answer: \\text{Evelyn}", "\\text{Evelyn}"),
        ("so \\boxed{\\boxed{12}} is it", "12"),
        ("The final answer is $204$.", "204"),
        # s1 format: only the answer after <|im_start|>answer counts.
        ("<|im_start|>think\nmaybe 3\n<|im_start|>answer\nFinal Answer: 4<|im_end|>", "4"),
        ("<think>\\boxed{5}? no.</think>\\boxed{6}", "6"),
        # No anchor at all: math-verify searches the answer.
        ("x = 5", "5"),
    ],
)
def test_equivalent_answers_are_correct(prediction: str, gold: str) -> None:
    assert grade(prediction, gold) is True


@pytest.mark.parametrize(
    ("prediction", "gold"),
    [
        ("Final Answer: 8", "7"),
        ("Final Answer: 0.333", "\\frac13"),
        ("no answer here", "7"),
        ("", "7"),
        # The thinking had the right answer, the answer did not: wrong.
        ("<think>Final Answer: 5</think>Final Answer: 6", "5"),
        ("<|im_start|>think\n\\boxed{5}\n<|im_start|>answer\n\\boxed{9}", "5"),
        ("\\boxed{x^2+1}", "x^2-1"),
    ],
)
def test_wrong_answers_are_wrong(prediction: str, gold: str) -> None:
    assert grade(prediction, gold) is False


def test_extract_answer_prefers_last_boxed_then_last_anchor() -> None:
    assert extract_answer("\\boxed{1} and later \\boxed{\\frac{2}{3}}") == "\\frac{2}{3}"
    assert extract_answer("Answer: 3\nWait. Final Answer: $4$.") == "4"
    assert extract_answer("Final Answer: \\(x+1\\)") == "x+1"
    assert extract_answer("Answer: 3 then \\boxed{9}") == "9"
    assert extract_answer("<think>Answer: 3</think>nothing") is None
    assert extract_answer("nothing at all") is None


def test_extract_boxed_balances_braces() -> None:
    assert extract_boxed("\\boxed{\\frac{1}{\\sqrt{2}}} tail") == "\\frac{1}{\\sqrt{2}}"
    assert extract_boxed("\\fbox{7}") == "7"
    assert extract_boxed("\\boxed{unclosed") is None


def test_answer_part_is_the_formats_answer() -> None:
    # Thinking never contains the end delimiter: the first one closes it (an answer may repeat it).
    assert answer_part("<think>a</think>b</think>c") == "b</think>c"
    assert (
        answer_part("<|im_start|>think\nx\n<|im_start|>answer\nFinal Answer: 1<|im_end|>junk")
        == "Final Answer: 1"
    )
    assert answer_part("x<|im_start|>answer\n1 </think> 2") == "1 </think> 2"  # the first delimiter's format
    assert extract_answer("<think>Answer: 3?</think>Answer: 4</think>Final Answer: 5") == "5"
    assert answer_part("no delimiter") == "no delimiter"


@pytest.mark.parametrize(
    ("text", "letter"),
    [
        ("Answer: B", "B"),
        ("The answer is (c).", "C"),
        ("\\boxed{D}", "D"),
        ("Final Answer: \\boxed{\\text{(A)}}", "A"),
        ("**Answer: C**", "C"),
        ("Final Answer: (B) 3.2 eV", "B"),
        ("A", "A"),
        (" (D). ", "D"),
        ("<think>answer is A</think>Answer: $B$", "B"),
        ("I think D is wrong", None),
        ("Answer: Because it is", None),
        ("<think>Answer: A</think>", None),
    ],
)
def test_extract_choice(text: str, letter: str | None) -> None:
    assert extract_choice(text) == letter


def test_extract_choice_respects_letters() -> None:
    assert extract_choice("Answer: E", letters="ABCDE") == "E"
    assert extract_choice("Answer: E", letters="ABCD") is None
    with pytest.raises(ValueError, match="letters"):
        extract_choice("Answer: A", letters="")
