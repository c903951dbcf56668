"""Statistics read back from token ids agree with the processor's own, row by row."""

from __future__ import annotations

import pytest
from helpers import QUESTIONS, Nudge, chat_prompts

from budget_forcing import BudgetForcing, core
from budget_forcing.formats import get_format
from budget_forcing.readout import read_stats


@pytest.mark.parametrize(
    "settings",
    [
        dict(max=6),
        dict(max=12, num_waits=2),
        dict(min=5, max=20, num_waits=1),
        dict(max=9, answer_prefix=None),
        dict(max=15, num_waits=1, wait=None),
        dict(min=3, max=7, max_answer_tokens=3),
        dict(max=10, wait="Hmm", num_waits=3),
    ],
)
def test_read_stats_matches_the_processor(model, tokenizer, settings):
    tok = tokenizer
    # Rows end with EOS (the processor counts a token when the next step sees it, so a row cut by
    # max_new_tokens would lag its last answer token).
    settings = {"max_answer_tokens": 4, **settings}
    nudge = Nudge(
        [tok.convert_tokens_to_ids("<|im_start|>"), tok.eos_token_id], period=7, pad_id=tok.pad_token_id
    )
    inputs = tok(chat_prompts(tok, QUESTIONS), return_tensors="pt", padding=True, add_special_tokens=False)
    bf = BudgetForcing(tok, format="s1", **settings)
    out = model.generate(**inputs, logits_processor=[nudge, bf], max_new_tokens=48, do_sample=False)
    width = inputs["input_ids"].shape[1]
    prompts = [row[mask.bool()].tolist() for row, mask in zip(inputs["input_ids"], inputs["attention_mask"])]
    generated = []
    for row in out[:, width:].tolist():
        while row and row[-1] == tok.pad_token_id:  # generate pads finished rows
            row.pop()
        generated.append(row)
    fmt = get_format("s1", tok)
    seqs = core.encode_sequences(
        tok, fmt, settings.get("wait", "Wait"), settings.get("answer_prefix", "Final Answer:")
    )
    t = core.build_tables(seqs, len(tok), *core.vocab_flags(tok, len(tok)))
    limits = dict(min=settings.get("min", 0), max=settings.get("max"), num_waits=settings.get("num_waits", 0))
    got = read_stats(t, prompts, generated, **limits, max_answer=settings["max_answer_tokens"])
    expected = bf.stats
    if settings.get("wait", "Wait") is None:  # a suppressed attempt leaves no trace in the ids
        got.ignored = expected.ignored
    assert got == expected
    assert sum(expected.waits) + sum(expected.forced_end) > 0  # the rules did act
