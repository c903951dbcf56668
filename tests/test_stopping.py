"""BudgetForcingStoppingCriteria: answer cap and stop strings that only count inside the answer."""

from __future__ import annotations

import torch
from helpers import QUESTIONS, chat_prompts, strip_row
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from transformers import LogitsProcessor

from budget_forcing import BudgetForcing, BudgetForcingStoppingCriteria


class Script(LogitsProcessor):
    """Makes row r emit ``scripts[r][k]`` as its k-th generated token (then anything)."""

    def __init__(self, scripts: list[list[int]], prompt_width: int) -> None:
        self.scripts, self.width = scripts, prompt_width

    def __call__(self, input_ids, scores):
        k = input_ids.shape[1] - self.width
        scores = scores.clone()
        for r, script in enumerate(self.scripts):
            if k < len(script):
                scores[r] = -1e9
                scores[r, script[k]] = 0.0
        return scores


def generate(model, tok, scripts, bf, criteria=None, max_new_tokens=60):
    texts = chat_prompts(tok, QUESTIONS[: len(scripts)])
    inputs = tok(texts, return_tensors="pt", padding=True)
    width = inputs.input_ids.shape[1]
    out = model.generate(
        **inputs,
        logits_processor=[Script(scripts, width), bf],
        stopping_criteria=[criteria] if criteria else None,
        max_new_tokens=max_new_tokens,
        do_sample=False,
    )
    return [strip_row(r, tok.pad_token_id, width, []) for r in out]


def enc(tok, text):
    return tok.encode(text, add_special_tokens=False)


def test_stop_string_ignored_in_thinking_and_forced_prefix_but_stops_answer(model, tokenizer):
    tok = tokenizer
    think = enc(tok, "<think>Question: what? Answer: no")
    answer = enc(tok, " 7. Answer: 8 Question: next") + enc(tok, " more text") * 5
    scripts = [think + enc(tok, "</think>") + answer, think + enc(tok, " and so on") * 8]
    bf = BudgetForcing(tok, max=[40, 12], format="think", answer_prefix="Final Answer:")
    criteria = bf.stopping_criteria(stop_strings=["Question:", "Answer:"])
    rows = generate(model, tok, scripts, bf, criteria)
    # Row 0 ends its thinking on its own; the answer stops right after its first "Answer:".
    text0 = tok.decode(rows[0])
    assert text0 == "<think>Question: what? Answer: no</think> 7. Answer:"
    # Row 1 is forced at max=12: "Final Answer:" is forced, and must not trigger "Answer:".
    text1 = tok.decode(rows[1])
    assert "Final Answer:" in text1 and not text1.endswith("Final Answer:")
    assert bf.stats.answer_tokens[0] == len(enc(tok, " 7. Answer:"))
    assert isinstance(criteria, BudgetForcingStoppingCriteria)


def test_answer_cap_with_and_without_criteria(model, tokenizer):
    tok = tokenizer
    scripts = [enc(tok, "<think>abc</think>"), enc(tok, "<think>")]
    bf = BudgetForcing(tok, max=4, format="think", max_answer_tokens=3)
    with_criteria = generate(model, tok, scripts, bf, bf.stopping_criteria())
    assert bf.stats.answer_tokens == [3, 3]
    without = generate(model, tok, scripts, bf)
    assert bf.stats.answer_tokens == [3, 3]
    for a, b in zip(with_criteria, without):
        assert a == b and a[-1] == tok.eos_token_id  # one behaviour: EOS is forced at the cap


def test_criteria_returns_one_bool_per_row(model, tokenizer):
    tok = tokenizer
    bf = BudgetForcing(tok, max=2, format="think", max_answer_tokens=1)
    criteria = bf.stopping_criteria(["x"])
    inputs = tok(chat_prompts(tok, QUESTIONS[:3]), return_tensors="pt", padding=True)
    assert criteria(inputs.input_ids, None).tolist() == [False, False, False]  # before any generate step
    model.generate(**inputs, logits_processor=[bf], stopping_criteria=[criteria], max_new_tokens=30)
    out = criteria(inputs.input_ids, None)
    assert out.dtype == torch.bool and out.shape == (3,)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    cap=st.integers(0, 6),
    budgets=st.lists(st.integers(0, 10), min_size=3, max_size=3),
)
def test_property_answer_never_exceeds_cap(model, tokenizer, cap, budgets):
    tok = tokenizer
    bf = BudgetForcing(tok, max=budgets, format="s1", max_answer_tokens=cap)
    inputs = tok(chat_prompts(tok, QUESTIONS[:3]), return_tensors="pt", padding=True)
    out = model.generate(
        **inputs, logits_processor=[bf], stopping_criteria=[bf.stopping_criteria()], max_new_tokens=40
    )
    stats = bf.stats
    assert stats.thinking_tokens == budgets
    assert all(a <= cap for a in stats.answer_tokens)
    for row, a in zip(out, stats.answer_tokens):
        text = tok.decode(strip_row(row, tok.pad_token_id, inputs.input_ids.shape[1], []))
        assert text.count("<|im_start|>answer\nFinal Answer:") == 1
        assert len(tok.encode(text.split("Final Answer:", 1)[1], add_special_tokens=False)) >= a
