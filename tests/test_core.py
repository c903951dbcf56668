"""budget_forcing.core: the engine-independent state machine, driven by hand."""

from __future__ import annotations

import pytest
import torch
from helpers import QUESTIONS, chat_prompts
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

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


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    budgets=st.lists(
        st.tuples(st.integers(0, 6), st.integers(0, 12), st.integers(0, 2), st.sampled_from([None, 0, 3])),
        min_size=1,
        max_size=4,
    ),
    opened=st.lists(st.booleans(), min_size=4, max_size=4),
    picks=st.lists(st.integers(0, 9), min_size=4 * 40, max_size=4 * 40),
)
def test_quiet_windows_equal_step_by_step(tokenizer, budgets, opened, picks):
    """`quiet` + `coast` (what the processor runs between events) give the same tokens and state
    as `advance` + `absorb` at every step, whatever the rows choose."""
    tok = tokenizer
    seqs, t = tables_for(tok, "think", wait="Wait, let me check")  # a multi-token Wait
    rows = len(budgets)
    low = [min(lo, hi) for lo, hi, _, _ in budgets]
    high = [max(lo, hi) + len(seqs.wait) for lo, hi, _, _ in budgets]
    prompts = [tok.encode("Hi" + ("<think>\n" if opened[i] else "")) for i in range(rows)]
    width = max(len(p) for p in prompts)
    ids = torch.tensor([[tok.pad_token_id] * (width - len(p)) + p for p in prompts])
    settings = dict(min=low, max=high, num_waits=[b[2] for b in budgets], max_answer=[b[3] for b in budgets])
    # Ordinary tokens most of the time, attempts to end and EOS now and then.
    vocab = [*tok.encode("a b c d e f g", add_special_tokens=False)[:7], seqs.end[0], seqs.eos[0]]
    choices = torch.tensor([vocab[p % len(vocab)] for p in picks]).view(40, 4)[:, :rows]
    other = torch.full((rows,), vocab[0])  # the best non-attempt token

    ref, ref_tokens, last = core.init_state(t, ids, **settings), [], ids[:, -1]
    for choice in choices:
        ref, token, _ = core.advance(ref, t, choice, last, other)
        ref = core.absorb(ref, t, token)
        ref_tokens.append(token.tolist())
        last = token

    s, tokens, last, lazy, q = core.init_state(t, ids, **settings), [], ids[:, -1], 0, None
    for choice in choices:
        hit = (
            q is not None
            and q.watching
            and bool((t["is_attempt"][choice] & (q.watch if q.watch is not None else True)).any())
        )
        if q is not None and lazy < q.steps and not hit:
            token = (
                choice
                if q.queued is None
                else torch.where(q.queued, core.forced_tokens(s, t, q, lazy), choice)
            )
            lazy += 1
        else:
            if q is not None:
                s, lazy = core.coast(s, lazy, q), 0
            s, token, _, replace = core.decide(s, t, choice, last)
            token = torch.where(replace, other, token)
            s = core.absorb(s, t, token)
            q = core.quiet(s, t)
        tokens.append(token.tolist())
        last = token
    s = core.coast(s, lazy, q)
    # Rows that take the model's choice in a window: their token is the choice (as generate's argmax).
    assert tokens == ref_tokens
    for key in ref:
        assert s[key].tolist() == ref[key].tolist(), key


def test_compiled_falls_back_to_eager_with_a_warning(monkeypatch):
    """Where torch.compile cannot build a kernel (no compiler, say), the function runs as it is."""

    def broken(fn, **kwargs):
        def run(*args):
            raise RuntimeError("no C++ compiler")

        return run

    monkeypatch.setattr(torch, "compile", broken)
    double = core.compiled(lambda x: 2 * x)
    with pytest.warns(UserWarning, match="runs eagerly"):
        assert double(torch.tensor(3)).item() == 6
    assert double(torch.tensor(4)).item() == 8  # eager from then on, without another warning
