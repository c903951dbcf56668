"""budget_forcing.core: the engine-independent state machine, driven by hand."""

from __future__ import annotations

import pytest
import torch
from helpers import QUESTIONS, chat_prompts

from budget_forcing import core
from budget_forcing.formats import get_format


def tables_for(tok, fmt="think", **kw):
    seqs = core.encode_sequences(tok, get_format(fmt), **kw)
    ends_newline, is_space = core.vocab_flags(tok, len(tok))
    return seqs, core.build_tables(seqs, len(tok), ends_newline, is_space)


def test_init_state_per_row_equals_batched(tokenizer):
    """Rows initialised one by one (as an engine adding requests does) equal the batched init."""
    tok = tokenizer
    _, t = tables_for(tok)
    texts = chat_prompts(tok, QUESTIONS[:3])
    texts = [texts[0], texts[1] + "<think>\nhmm", texts[2] + "<think>x</think>\n"]
    batch = tok(texts, return_tensors="pt", padding=True).input_ids
    together = core.init_state(t, batch, min=torch.tensor([1, 2, 3]), max=[5, None, 7], num_waits=2)
    assert together["phase"].tolist() == [core.START, core.THINK, core.ANSWER]
    for i, text in enumerate(texts):
        alone = core.init_state(t, tok.encode(text), min=[1, 2, 3][i], max=[5, None, 7][i], num_waits=2)
        for key, value in together.items():
            assert alone[key].tolist() == value[i : i + 1].tolist(), key
    assert together["max"][1] == core.UNLIMITED


def test_advance_forces_start_cap_and_wait(tokenizer):
    """Hand-driven steps: start forced, an early attempt becomes Wait, then the cap forces the end."""
    tok = tokenizer
    seqs, t = tables_for(tok, answer_prefix=None)
    s = core.init_state(t, tok.encode("Hi"), min=3, max=4)
    attempt, word = seqs.end[0], tok.encode("a")[0]
    choices = [word] * len(seqs.start) + [word, attempt] + [word] * 10  # no choice while start is forced
    emitted, decided, last = [], [], torch.tensor([tok.encode("Hi")[-1]])
    for choice in choices:
        s, token, forced = core.advance(s, t, torch.tensor([choice]), last)
        emitted.append(int(token))
        decided.append(bool(forced))
        s = core.absorb(s, t, token)
        last = token
    # start, one thinking token, the attempt replaced by Wait, thinking up to max=4, forced end.
    thinking = [word] + seqs.wait + [word] * (4 - 1 - len(seqs.wait))
    expected = seqs.start + thinking + seqs.newline + seqs.end
    assert emitted[: len(expected)] == expected
    assert emitted[len(expected) :] == [word] * (len(choices) - len(expected))  # the free answer
    assert decided == [True] * len(expected) + [False] * (len(choices) - len(expected))
    assert core.stats(s).waits == [1] and core.stats(s).ignored == [1]
    assert core.stats(s).thinking_tokens == [4]
    assert not bool(core.finished(s)[0])


def test_settings_validation():
    with pytest.raises(ValueError, match="num_waits"):
        core.check_settings(num_waits=-1)
    with pytest.raises(ValueError, match="max_answer_tokens"):
        core.check_settings(max_answer_tokens=-2)
    with pytest.raises(ValueError, match="min=5 > max=3"):
        core.check_budgets(5, 3)
