"""The one-pass processor against a port of s1's own eval loop (`reference.s1_generate`)."""

from __future__ import annotations

import pytest
import torch
from helpers import QUESTIONS, chat_prompts, strip_row

from budget_forcing import BudgetForcing, core
from budget_forcing.formats import get_format
from budget_forcing.reference import hf_generate_fn, s1_auto_budget, s1_generate
from budget_forcing.testing import QWEN_VOCAB_SIZE, Nudge, qwen_tokenizer, tiny_model, tiny_tokenizer

_MODELS: dict = {}


@pytest.fixture(scope="module", params=["synthetic", "qwen2.5", "qwen3"])
def tokenizer(request):
    return tiny_tokenizer() if request.param == "synthetic" else qwen_tokenizer(request.param[4:])


@pytest.fixture(scope="module")
def model(tokenizer):
    if id(tokenizer) not in _MODELS:
        vocab = QWEN_VOCAB_SIZE if len(tokenizer) > 100_000 else None
        _MODELS[id(tokenizer)] = tiny_model(tokenizer, dtype=torch.float64, vocab_size=vocab)
    return _MODELS[id(tokenizer)]


PROMPTS = QUESTIONS + [q + " Explain." for q in QUESTIONS]


def compare_with_s1(model, tok, budget: int, n_ignore: int, period: int, answer_cap: int = 6):
    """Greedy rows of BudgetForcing and of s1's loop; returns (ours, s1's) per row."""
    fmt = get_format("s1")
    end = tok.encode(fmt.end, add_special_tokens=False)
    # Short periods: attempts come often (rows fit the budget); long ones: rarely (rows overrun).
    targets = [end[0], tok.eos_token_id] if period < 8 else [end[0]]
    nudge = Nudge(targets, period=period, pad_id=tok.pad_token_id)
    seqs = core.encode_sequences(tok, fmt)
    eos, _ = core.eos_ids(seqs, model.generation_config.eos_token_id)
    texts = chat_prompts(tok, PROMPTS)
    s1_rows = s1_generate(
        hf_generate_fn(model, tok, logits_processor=[nudge]),
        tok,
        [tok.encode(t) for t in texts],
        budget,
        thinking_n_ignore=n_ignore,
        max_gen_toks=answer_cap,
        stop_token_ids=[end[0], *eos],
    )
    bf = BudgetForcing(tok, max=budget, format="s1", num_waits=n_ignore, max_answer_tokens=answer_cap)
    inputs = tok(texts, return_tensors="pt", padding=True)
    out = model.generate(
        **inputs,
        logits_processor=[nudge, bf],
        max_new_tokens=budget + bf.end_overhead + answer_cap + 1,
        do_sample=False,
    )
    ours = []
    for row in out:
        new = strip_row(row, tok.pad_token_id, inputs.input_ids.shape[1], [])
        ours.append(new[:-1] if new and new[-1] in eos else new)
    return ours, s1_rows, bf.stats


@pytest.mark.parametrize("n_ignore", [1, 2])
def test_identical_to_s1_eval_loop_unless_thinking_overruns(model, tokenizer, n_ignore):
    """Every row whose thinking (with waits) stays below the budget is token-identical to s1's loop;
    rows that reach it differ only from there on (s1 cuts mid-thought, may drop the prefix, and
    lets a later call end naturally at exactly the budget, where one call would have been cut)."""
    identical = overran = 0
    for budget, period in ((6, 3), (12, 4), (12, 13), (20, 17)):
        ours, s1_rows, stats = compare_with_s1(model, tokenizer, budget, n_ignore, period)
        for mine, theirs, thought in zip(ours, s1_rows, stats.thinking_tokens):
            start = len(tokenizer.encode("<|im_start|>think", add_special_tokens=False))
            if theirs.uncut_thinking_tokens >= budget:  # reached max (with waits: maybe beyond)
                overran += 1
                # Same thinking up to where ours ends (at the budget, or where a Wait would not fit).
                assert mine[: start + thought] == theirs.generated[: start + thought]
                continue
            assert mine == theirs.generated
            identical += 1
    print(
        f"\n{tokenizer.name_or_path or 'synthetic'} n_ignore={n_ignore}: {identical} of {identical + overran} rows identical to s1's loop; {overran} reached max"
    )
    assert identical >= 8 and overran >= 8, (identical, overran)


def test_s1_auto_budget_subtracts_the_prompt():
    assert s1_auto_budget(32768, 200, 3, 8) == 32768 - 200 - 3 - 8 - 100
