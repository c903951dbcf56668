"""BudgetForcing: exact semantics, per row, against s1's multi-call procedure."""

from __future__ import annotations

import pytest
import torch
from helpers import QUESTIONS, Nudge, chat_prompts, strip_row
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from transformers import LogitsProcessorList

from budget_forcing import BudgetForcing, BudgetForcingLogitsProcessor, ThinkingFormat, core
from budget_forcing.formats import get_format
from budget_forcing.reference import hf_generate_fn, multicall_generate
from budget_forcing.testing import QWEN_VOCAB_SIZE, qwen_tokenizer, tiny_model, tiny_tokenizer

# Exactness, bounds and positions run on the synthetic vocabulary and on Qwen's real one (rebuilt
# offline, 151,936-row model); Qwen2.5 has no <think> token, so it runs the s1 format only.
KINDS = ["synthetic", "qwen2.5", "qwen3"]
_MODELS: dict = {}
SYNTHETIC_ONLY = {
    "test_alias_and_public_api",
    "test_min_and_wait_length_checked_up_front",
    "test_direct_calls_outside_generate",
    "test_llama_architecture",
    "test_custom_multitoken_format",
    "test_bad_arguments_raise_clear_errors",
    "test_unencodable_delimiter_and_auto_format",
    "test_auto_format_from_chat_template",
    "test_generate_argument_errors",
    "test_compiled_state_update_matches_eager",
    "test_state_update_gets_contiguous_tensors",
    "test_reuse_detects_new_calls_and_reset",
    "test_num_return_sequences_expands_per_prompt_budgets",
}


@pytest.fixture(scope="module", params=KINDS)
def tokenizer(request):
    return tiny_tokenizer() if request.param == "synthetic" else qwen_tokenizer(request.param[4:])


@pytest.fixture(scope="module")
def model(tokenizer):
    if id(tokenizer) not in _MODELS:
        qwen = len(tokenizer) > 100_000
        vocab = QWEN_VOCAB_SIZE if qwen else None
        _MODELS[id(tokenizer)] = tiny_model(tokenizer, dtype=torch.float64, vocab_size=vocab)
    return _MODELS[id(tokenizer)]


@pytest.fixture(autouse=True)
def _vocabularies(request):
    if "tokenizer" not in request.fixturenames:
        return
    kind = request.node.callspec.params.get("tokenizer") if hasattr(request.node, "callspec") else None
    if kind != "synthetic" and request.node.originalname in SYNTHETIC_ONLY:
        pytest.skip("covered on the synthetic vocabulary")
    fmt = request.node.callspec.params.get("fmt") if hasattr(request.node, "callspec") else None
    if kind == "qwen2.5" and fmt != "s1":
        pytest.skip("Qwen2.5 has no <think> token: s1 format only")


def newline_ids(tok) -> set[int]:
    return {i for i, t in enumerate(core.token_strings(tok)) if t.endswith("\n")}


def ids(tok, text):
    return tok.encode(text, add_special_tokens=False)


def run(model, tok, texts, bf, nudge=None, **gen):
    inputs = tok(texts, return_tensors="pt", padding=True)
    processors = [nudge, bf] if nudge else [bf]
    gen.setdefault("do_sample", False)
    gen.setdefault("max_new_tokens", 80)
    out = model.generate(**inputs, logits_processor=processors, **gen)
    width = inputs.input_ids.shape[1]
    return [
        strip_row(r, tok.pad_token_id, width, tok.encode(t))[len(tok.encode(t)) :] for r, t in zip(out, texts)
    ]


def nudge_for(tok, fmt, period=4):
    return Nudge([ids(tok, get_format(fmt).end)[0], tok.eos_token_id], period=period, pad_id=tok.pad_token_id)


def assert_matches_reference(model, tok, kw, nudge, max_new_tokens):
    """One pass and s1's multi-call procedure give the same tokens and statistics per row."""
    bf = BudgetForcing(tok, **kw)
    texts = chat_prompts(tok)
    rows = run(model, tok, texts, bf, nudge, max_new_tokens=max_new_tokens)
    ref = multicall_generate(
        hf_generate_fn(model, tok, logits_processor=[nudge]),
        tok,
        [tok.encode(t) for t in texts],
        max_new_tokens=max_new_tokens,
        config_eos_token_id=model.generation_config.eos_token_id,
        **kw,
    )
    assert rows == [r.generated for r in ref]
    stats = bf.stats
    assert stats.thinking_tokens == [r.thinking_tokens for r in ref]
    assert stats.waits == [r.waits for r in ref]
    assert stats.ignored == [r.ignored for r in ref]
    assert stats.forced_end == [r.forced_end for r in ref]
    assert stats.answer_tokens == [r.answer_tokens for r in ref]
    return stats


def test_alias_and_public_api():
    import budget_forcing

    assert BudgetForcing is BudgetForcingLogitsProcessor
    assert set(budget_forcing.__all__) >= {"BudgetForcing", "BudgetForcingLogitsProcessor", "BudgetStats"}


@pytest.mark.parametrize("fmt", ["s1", "think"])
def test_max_forces_end_sequence_at_exact_position(model, tokenizer, fmt):
    tok, budgets = tokenizer, [0, 1, 7, 12]
    bf = BudgetForcing(tok, max=budgets, format=fmt, answer_prefix="Final Answer:")
    rows = run(model, tok, chat_prompts(tok), bf, max_new_tokens=40)
    f = get_format(fmt)
    start, end = ids(tok, f.start), ids(tok, f.end)
    tail = ids(tok, f.answer_sep + "Final Answer:")
    newlines = newline_ids(tok)
    for _ in range(2):  # reuse: a second call behaves as a fresh processor
        for row, budget in zip(rows, budgets):
            assert row[: len(start)] == start
            thinking = row[len(start) : len(start) + budget]
            assert len(thinking) == budget
            rest = row[len(start) + budget :]
            last = (start + thinking)[-1]
            nl = [] if last in newlines else ids(tok, "\n")
            assert rest[: len(nl + end + tail)] == nl + end + tail
        stats = bf.stats
        assert stats.thinking_tokens == budgets
        assert stats.forced_end == [True] * 4
        assert stats.waits == [0] * 4
        rows = run(model, tok, chat_prompts(tok), bf, max_new_tokens=40)


@pytest.mark.parametrize("fmt", ["s1", "think"])
@pytest.mark.parametrize("wait", ["Wait", None])
def test_greedy_identical_to_multicall_reference(model, tokenizer, fmt, wait):
    tok = tokenizer
    kw = dict(min=[3, 8, 0, 5], max=[20, 12, 30, 9], format=fmt, wait=wait, num_waits=1, max_answer_tokens=6)
    stats = assert_matches_reference(model, tok, kw, nudge_for(tok, fmt, period=3), max_new_tokens=60)
    assert sum(stats.ignored) > 0, "the nudge must make rows attempt to end early"


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    fmt=st.sampled_from(["s1", "think"]),
    budgets=st.lists(st.tuples(st.integers(0, 12), st.integers(0, 24)), min_size=4, max_size=4),
    num_waits=st.integers(0, 3),
    wait=st.sampled_from(["Wait", None, "Hmm, alternatively"]),
    period=st.integers(2, 6),
    prefix=st.sampled_from(["Final Answer:", None]),
)
def test_property_identical_to_reference_and_within_bounds(
    model, tokenizer, fmt, budgets, num_waits, wait, period, prefix
):
    tok = tokenizer
    lo = [min(a, b) for a, b in budgets]
    room = len(ids(tok, wait)) - 1 if wait else 0  # a Wait must fit between min and max
    hi = [max(a, b, x + room if x else 0) for (a, b), x in zip(budgets, lo)]
    kw = dict(
        min=lo, max=hi, format=fmt, wait=wait, num_waits=num_waits, answer_prefix=prefix, max_answer_tokens=4
    )
    stats = assert_matches_reference(model, tok, kw, nudge_for(tok, fmt, period), max_new_tokens=48)
    for i in range(4):
        assert stats.thinking_tokens[i] <= hi[i]
        # Below min a row cannot have ended thinking on its own: it is at min or was forced at max.
        assert stats.thinking_tokens[i] >= lo[i] or stats.forced_end[i]
        assert stats.answer_tokens[i] <= 4


def test_waits_replace_attempts_at_exact_positions(model, tokenizer):
    tok = tokenizer
    wait_ids, end = ids(tok, "Wait"), ids(tok, "</think>")
    attempts = {end[0], tok.eos_token_id}
    # Every step, the nudge makes </think> the argmax: each attempt must become exactly "Wait",
    # except right after <think> and right after a Wait, where s1 (min_tokens=1) takes the best
    # other token.
    always = Nudge([end[0]], period=1, strength=1e4)
    bf = BudgetForcing(tok, min=0, max=50, format="think", num_waits=3, answer_prefix=None)
    (row,) = run(model, tok, chat_prompts(tok, QUESTIONS[:1]), bf, always, max_new_tokens=60)
    w = len(wait_ids)
    assert row[:1] == ids(tok, "<think>")
    body = row[1 : 1 + 4 * (1 + w) - w]
    for k in range(4):  # best other token, then Wait; three times; then one more other token
        assert body[k * (1 + w)] not in attempts
        if k < 3:
            assert body[k * (1 + w) + 1 : (k + 1) * (1 + w)] == wait_ids
    assert row[1 + len(body)] == end[0]  # the fourth attempt is allowed: natural end, no prefix
    assert bf.stats.waits == [3] and bf.stats.ignored == [3]
    assert bf.stats.thinking_tokens == [len(body)] and bf.stats.forced_end == [False]


def test_min_keeps_waiting_until_min_then_allows_end(model, tokenizer):
    tok = tokenizer
    end = ids(tok, "</think>")
    wait = ids(tok, "Wait")
    always = Nudge([end[0]], period=1, strength=1e4)
    bf = BudgetForcing(tok, min=2 * len(wait) + 1, max=50, format="think")
    (row,) = run(model, tok, chat_prompts(tok, QUESTIONS[:1]), bf, always, max_new_tokens=60)
    # No num_waits: the first attempt is replaced at once; after each Wait the best other token.
    w = len(wait)
    assert row[1 : 1 + w] == wait and row[1 + w] != end[0]
    assert row[2 + w : 2 + 2 * w] == wait and row[2 + 2 * w] != end[0]
    assert row[3 + 2 * w] == end[0]  # thinking = 2w + 2 >= min: the attempt ends thinking
    assert bf.stats.thinking_tokens == [2 * w + 2] and bf.stats.waits == [2]


def test_wait_that_would_overflow_max_forces_end(model, tokenizer):
    tok = tokenizer
    end = ids(tok, "</think>")
    always = Nudge([end[0]], period=1, strength=1e4)
    wait = ids(tok, "Wait, let me check")  # several tokens on every vocabulary
    w = len(wait)
    bf = BudgetForcing(tok, num_waits=5, max=2 * w + 1, format="think", wait="Wait, let me check")
    (row,) = run(model, tok, chat_prompts(tok, QUESTIONS[:1]), bf, always, max_new_tokens=40)
    # other token, Wait, other token: w + 2 thinking tokens; another Wait would overflow max.
    assert row[2 : 2 + w] == wait
    n = w + 2
    nl = [] if tok.decode(row[n : n + 1]).endswith("\n") else ids(tok, "\n")
    assert row[1 + n : 1 + n + len(nl) + 1] == nl + end
    assert bf.stats.thinking_tokens == [n] and bf.stats.forced_end == [True] and bf.stats.waits == [1]
    assert bf.stats.ignored == [2]


def test_min_and_wait_length_checked_up_front(tokenizer):
    w = len(ids(tokenizer, "Wait"))
    with pytest.raises(ValueError, match="Keep max - min >= "):
        BudgetForcing(tokenizer, min=5, max=5 + w - 2, format="think")
    bf = BudgetForcing(tokenizer, min=5, max=5 + w - 1, format="think")
    assert bf.wait_tokens == w


def test_natural_end_completes_multitoken_delimiter(model, tokenizer):
    tok = tokenizer
    im_start = ids(tok, "<|im_start|>")[0]
    nudge = Nudge([im_start], period=1, strength=1e4)
    bf = BudgetForcing(tok, max=30, format="s1")
    (row,) = run(model, tok, chat_prompts(tok, QUESTIONS[:1]), bf, nudge, max_new_tokens=50)
    start, end = ids(tok, "<|im_start|>think"), ids(tok, "<|im_start|>answer")
    assert len(end) > 1
    assert row[: len(start)] == start and row[len(start) : len(start) + len(end)] == end
    assert bf.stats.thinking_tokens == [0] and bf.stats.forced_end == [False]


def test_eos_in_thinking_is_replaced_by_end_delimiter(model, tokenizer):
    tok = tokenizer
    nudge = Nudge([tok.eos_token_id], period=1, strength=1e4)
    bf = BudgetForcing(tok, max=30, format="s1")
    (row,) = run(model, tok, chat_prompts(tok, QUESTIONS[:1]), bf, nudge, max_new_tokens=50)
    start, end = ids(tok, "<|im_start|>think"), ids(tok, "<|im_start|>answer")
    assert row == start + end + [tok.eos_token_id]  # the answer then ends at once (EOS)
    assert bf.stats.thinking_tokens == [0] and bf.stats.answer_tokens == [0]


def test_prompt_states_open_closed_history(model, tokenizer):
    tok = tokenizer
    base = chat_prompts(tok, QUESTIONS[:1])[0]
    history = tok.apply_chat_template(
        [
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "<think>hello</think>Hello!"},
            {"role": "user", "content": "What is 2 + 2?"},
        ],
        add_generation_prompt=True,
        tokenize=False,
    )
    texts = [base + "<think>", base + "<think>\nabc</think>\n\n", history, base]
    bf = BudgetForcing(tok, max=[6, 6, 6, 6], format="think", answer_prefix=None, max_answer_tokens=3)
    rows = run(model, tok, texts, bf, max_new_tokens=30)
    think, end = ids(tok, "<think>")[0], ids(tok, "</think>")[0]
    assert bf.stats.thinking_tokens == [6, 0, 6, 6]
    assert end not in rows[0][:6] and end in rows[0][6:8]  # open: thinking counts from the first token
    assert end not in rows[1] and bf.stats.answer_tokens[1] == 3  # closed: straight to the answer
    assert rows[2][0] == think and rows[3][0] == think  # earlier think block ignored: start forced
    assert bf.stats.forced_end == [True, False, True, True]


def test_sampling_seeded_reproducible_and_bounded(model, tokenizer):
    tok = tokenizer
    nudge = nudge_for(tok, "think", period=3)
    texts = chat_prompts(tok)
    runs = []
    for _ in range(2):
        bf = BudgetForcing(tok, min=[2, 4, 6, 0], max=[10, 10, 14, 3], format="think", num_waits=1)
        torch.manual_seed(123)
        runs.append(
            (
                run(model, tok, texts, bf, nudge, do_sample=True, temperature=0.8, top_k=50, top_p=0.9),
                bf.stats,
            )
        )
    assert runs[0] == runs[1]
    rows, stats = runs[0]
    newline = newline_ids(tok)
    for i, row in enumerate(rows):
        assert stats.thinking_tokens[i] <= [10, 10, 14, 3][i]
        assert stats.thinking_tokens[i] >= [2, 4, 6, 0][i] or stats.forced_end[i]
        assert row[0] == ids(tok, "<think>")[0]
        body = row[1 : row.index(ids(tok, "</think>")[0])]
        n = stats.thinking_tokens[i]
        forced_newline = stats.forced_end[i] and (row[n] if n else row[0]) not in newline
        assert len(body) == n + forced_newline


def test_sampling_attempts_are_the_sampled_token(model, tokenizer):
    tok = tokenizer
    end = ids(tok, "</think>")
    always = Nudge([end[0]], period=1, strength=1e4)  # the sampled token is always an attempt
    wait = ids(tok, "Wait")
    w = len(wait)
    bf = BudgetForcing(tok, min=w + 2, max=40, format="think")
    torch.manual_seed(0)
    (row,) = run(model, tok, chat_prompts(tok, QUESTIONS[:1]), bf, always, do_sample=True, temperature=1.3)
    # Wait, then a token sampled with the attempts masked (s1's min_tokens=1), then Wait again.
    assert row[1 : 1 + w] == wait and row[1 + w] != end[0]
    assert row[2 + w : 2 + 2 * w] == wait and row[2 + 2 * w] != end[0] and row[3 + 2 * w] == end[0]


def test_num_return_sequences_expands_per_prompt_budgets(model, tokenizer):
    tok = tokenizer
    bf = BudgetForcing(tok, max=[3, 9], format="think")
    torch.manual_seed(0)
    run(model, tok, chat_prompts(tok, QUESTIONS[:2]), bf, do_sample=True, num_return_sequences=3)
    assert bf.stats.thinking_tokens == [3, 3, 3, 9, 9, 9]


def test_reuse_detects_new_calls_and_reset(model, tokenizer):
    tok = tokenizer
    bf = BudgetForcing(tok, max=5, format="think")
    run(model, tok, chat_prompts(tok), bf)
    assert bf.stats.thinking_tokens == [5] * 4
    # A call whose prompt is exactly one token longer than the last call's length must not be
    # mistaken for its continuation.
    run(model, tok, chat_prompts(tok, QUESTIONS[:1]), bf)
    assert bf.stats.thinking_tokens == [5]
    fresh = BudgetForcing(tok, max=5, format="think")
    assert run(model, tok, chat_prompts(tok, QUESTIONS[:2]), bf) == run(
        model, tok, chat_prompts(tok, QUESTIONS[:2]), fresh
    )
    bf.reset()
    with pytest.raises(RuntimeError, match="No statistics"):
        bf.stats  # noqa: B018


def test_direct_calls_outside_generate(tokenizer):
    """Called by hand (no generate frame), new calls are told apart by sequence length."""
    tok = tokenizer
    bf = BudgetForcing(tok, max=2, format="think", answer_prefix=None)
    processors = LogitsProcessorList([bf])
    seq = torch.tensor([tok.encode("Hi")])
    emitted = []
    for _ in range(5):
        scores = torch.zeros(1, len(tok))
        token = processors(seq, scores).argmax(-1)
        emitted.append(int(token))
        seq = torch.cat([seq, token[:, None]], dim=1)
    think, end = ids(tok, "<think>")[0], ids(tok, "</think>")[0]
    assert emitted == [think, 0, 0, *ids(tok, "\n"), end]  # all-zero scores: argmax is token 0
    assert bf.stats.thinking_tokens == [2]


def test_llama_architecture(tokenizer):
    model = tiny_model(tokenizer, arch="llama", dtype=torch.float64)
    bf = BudgetForcing(tokenizer, max=[4, 7], format="s1")
    run(model, tokenizer, chat_prompts(tokenizer, QUESTIONS[:2]), bf)
    assert bf.stats.thinking_tokens == [4, 7]


def test_custom_multitoken_format(model, tokenizer):
    fmt = ThinkingFormat("custom", start="Let me think:", end="Final thoughts.", answer_sep=" ")
    bf = BudgetForcing(tokenizer, max=6, format=fmt, answer_prefix="Answer:")
    (row,) = run(model, tokenizer, chat_prompts(tokenizer, QUESTIONS[:1]), bf)
    text = tokenizer.decode(row)
    assert text.startswith("Let me think:")
    assert "Final thoughts. Answer:" in text
    assert bf.stats.thinking_tokens == [6]


# ------------------------------------------------------------------------------------------ errors
@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(min=5, max=3), "min=5 > max=3"),
        (dict(min=-1), "non-negative"),
        (dict(max=[1, -2]), "non-negative"),
        (dict(min=[1, 2], max=[3]), "one per prompt"),
        (dict(min=[4, 1], max=[3, 9]), "Prompt 0: min=4 > max=3"),
        (dict(num_waits=-1), "num_waits"),
        (dict(wait=""), "wait string"),
        (dict(answer_prefix=""), None),
        (dict(format="nope"), "Unknown format"),
    ],
)
def test_bad_arguments_raise_clear_errors(tokenizer, kwargs, match):
    kwargs.setdefault("format", "think")
    if match is None:
        BudgetForcing(tokenizer, **kwargs)
        return
    with pytest.raises(ValueError, match=match):
        BudgetForcing(tokenizer, **kwargs)


def test_unencodable_delimiter_and_auto_format(tokenizer):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.WordLevel({"[UNK]": 0, "hello": 1, "Wait": 2}, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    word = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]", eos_token="hello")
    with pytest.raises(ValueError, match="cannot encode the start delimiter"):
        BudgetForcing(word, format="think")
    with pytest.raises(ValueError, match="format='auto' cannot tell"):
        BudgetForcing(word)
    with pytest.raises(ValueError, match="format='auto' cannot tell"):
        BudgetForcing(tokenizer)  # has both <think> and <|im_start|>, template names neither
    single = ThinkingFormat("x", "<think>", "Final thoughts.", single_token=True)
    with pytest.raises(ValueError, match="single tokens"):
        BudgetForcing(tokenizer, format=single)


def test_auto_format_from_chat_template(tokenizer):
    import copy

    tok = copy.deepcopy(tokenizer)
    tok.chat_template = tokenizer.chat_template + "{{- '<think>\\n' }}"
    assert BudgetForcing(tok).format.name == "think"
    tok.chat_template = tokenizer.chat_template + "{{- '<|im_start|>think' }}"
    assert BudgetForcing(tok).format.name == "s1"


def test_generate_argument_errors(model, tokenizer):
    tok = tokenizer
    texts = chat_prompts(tok, QUESTIONS[:2])
    with pytest.raises(ValueError, match="raise max_new_tokens to at least"):
        run(model, tok, texts, BudgetForcing(tok, max=50, format="think"), max_new_tokens=20)
    with pytest.raises(ValueError, match="cannot honour min=30"):
        run(model, tok, texts, BudgetForcing(tok, min=30, format="think"), max_new_tokens=20)
    with pytest.raises(ValueError, match="num_beams=1"):
        run(model, tok, texts, BudgetForcing(tok, max=5, format="think"), num_beams=2)
    with pytest.raises(ValueError, match="one value per prompt"):
        run(model, tok, texts, BudgetForcing(tok, max=[1, 2, 3], format="think"))
    with pytest.raises(ValueError, match="assistant"):
        assistant = tiny_model(tok, dtype=torch.float64, seed=1)
        run(model, tok, texts[:1], BudgetForcing(tok, max=5, format="think"), assistant_model=assistant)


def test_state_update_gets_contiguous_tensors(model, tokenizer):
    """compile=True guards on strides and aliasing: a strided view (``input_ids[:, -1]``, whose
    stride is the sequence length) or one tensor passed as two arguments would make the compiled
    state update recompile at every step."""
    tok = tokenizer
    seen: list[bool] = []

    def checked(fn):
        def step(*args):
            tensors = [a for a in args if isinstance(a, torch.Tensor)]
            seen.extend(a.is_contiguous() for a in tensors)
            seen.append(len({id(a) for a in tensors}) == len(tensors))
            return fn(*args)

        return step

    bf = BudgetForcing(tok, min=3, max=14, format="s1", num_waits=2, max_answer_tokens=5)
    bf._kernels = lambda: (checked(core.absorb), checked(core.decide))
    run(model, tok, chat_prompts(tok, QUESTIONS[:3]), bf, nudge_for(tok, "s1", period=3), max_new_tokens=40)
    assert len(seen) > 20 and all(seen)
    assert sum(bf.stats.waits) > 0


@pytest.mark.slow
def test_compiled_state_update_matches_eager(model, tokenizer):
    """compile=True fuses the state update; results must be identical, across batch sizes."""
    tok = tokenizer
    nudge = nudge_for(tok, "s1", period=3)
    outputs = []
    for compile in (False, True):
        bf = BudgetForcing(tok, min=3, max=14, format="s1", num_waits=2, max_answer_tokens=5, compile=compile)
        rows = [
            run(model, tok, chat_prompts(tok, QUESTIONS[:n]), bf, nudge, max_new_tokens=40) for n in (4, 3)
        ]
        outputs.append((rows, bf.stats))
    assert outputs[0] == outputs[1]
    assert sum(outputs[0][1].waits) > 0
