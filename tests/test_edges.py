"""Inputs at the edges: each is a clear error or a correct row; the tokenizer is optional."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import QUESTIONS, Nudge, chat_prompts, strip_row
from transformers import LogitsProcessor

from budget_forcing import BudgetForcing, ThinkingFormat
from budget_forcing.testing import tiny_model, tiny_tokenizer


def ids(tok, text):
    return tok.encode(text, add_special_tokens=False)


def generate(model, tok, texts, processors, **gen):
    inputs = tok(texts, return_tensors="pt", padding=True)
    gen.setdefault("do_sample", False)
    gen.setdefault("max_new_tokens", 40)
    out = model.generate(**inputs, logits_processor=processors, **gen)
    width = inputs.input_ids.shape[1]
    sequences = out.sequences if hasattr(out, "sequences") else out
    return [strip_row(r, tok.pad_token_id, width, []) for r in sequences], out


class Ban(LogitsProcessor):
    """Bans a token outright (as a bad-words list or a penalty gone wild would)."""

    def __init__(self, token: int) -> None:
        self.token = token

    def __call__(self, input_ids, scores):
        scores = scores.clone()
        scores[:, self.token] = float("-inf")
        return scores


class Boost(LogitsProcessor):
    """Puts +inf on a token (a processor that forces its own choice)."""

    def __init__(self, token: int) -> None:
        self.token = token

    def __call__(self, input_ids, scores):
        scores = scores.clone()
        scores[:, self.token] = float("inf")
        return scores


# ------------------------------------------------------------------- budgets per prompt, room
def test_per_prompt_list_must_match_the_prompts(model, tokenizer):
    texts = chat_prompts(tokenizer)  # 4 prompts
    with pytest.raises(ValueError, match="got 4 prompts; pass one value per prompt"):
        generate(model, tokenizer, texts, [BudgetForcing(tokenizer, max=[3, 20], format="think")])
    bf = BudgetForcing(tokenizer, max=[3, 9], format="think")
    generate(model, tokenizer, texts[:2], [bf], do_sample=True, num_return_sequences=2)
    assert bf.stats.thinking_tokens == [3, 3, 9, 9]


def test_room_check_covers_capped_rows_when_others_have_no_cap(model, tokenizer):
    bf = BudgetForcing(tokenizer, max=[None, 40], format="think")
    with pytest.raises(ValueError, match="max=40"):
        generate(model, tokenizer, chat_prompts(tokenizer, QUESTIONS[:2]), [bf], max_new_tokens=20)


# ------------------------------------------------------------------------------ prompt analysis
def test_start_quoted_in_system_prompt_or_left_open_in_history_is_not_open(model, tokenizer):
    tok = tokenizer
    system = [{"role": "system", "content": "Start your reasoning with <think>."}]
    unclosed = [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "<think>\nhmm"},
    ]
    texts = [
        tok.apply_chat_template([*turns, {"role": "user", "content": "What is 2 + 2?"}], tokenize=False,
                                add_generation_prompt=True)
        for turns in (system, unclosed)
    ]  # fmt: skip
    bf = BudgetForcing(tok, max=3, format="think", answer_prefix=None)
    rows, _ = generate(model, tok, texts, [bf])
    for row in rows:
        assert row[0] == ids(tok, "<think>")[0]  # the start is forced: thinking was not open
    assert bf.stats.thinking_tokens == [3, 3]


def test_multitoken_delimiters_match_whatever_the_merges_in_context(model, tokenizer):
    tok = tokenizer
    fmt = ThinkingFormat("custom", start="Let me think:", end="Final thoughts.", answer_sep="\n")
    closed = chat_prompts(tok, QUESTIONS[:1])[0] + "Let me think: ok.Final thoughts.\n"
    # In context the tokenizer merges ".\n" differently from "." alone: ids would not match.
    assert ids(tok, "Final thoughts.") != ids(tok, closed)[-len(ids(tok, "Final thoughts.")) :]
    bf = BudgetForcing(tok, max=4, format=fmt)
    generate(model, tok, [closed], [bf], max_new_tokens=30)
    assert bf.stats.thinking_tokens == [0] and bf.stats.forced_end == [False]  # read as closed
    assert bf.stats.answer_tokens[0] > 0


# ------------------------------------------------------------------------ forced sequences, EOS
@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(wait="</think>"), "wait string '</think>' contains the end delimiter"),
        (dict(answer_prefix="</think>Answer:"), "answer prefix .* contains the end delimiter"),
        (dict(wait="Wait", eos_token_id=None, answer_prefix="Final Answer:<|im_end|>"), "contains an EOS id"),
    ],
)
def test_forced_strings_that_would_end_the_row_are_rejected(tokenizer, kwargs, match):
    with pytest.raises(ValueError, match=match):
        BudgetForcing(tokenizer, format="think", **kwargs)


def test_eos_ids_that_are_part_of_a_forced_sequence_are_rejected(model, tokenizer):
    wait = ids(tokenizer, "Wait")
    with pytest.raises(ValueError, match="contains an EOS id"):
        BudgetForcing(tokenizer, format="think", eos_token_id=[tokenizer.eos_token_id, wait[0]])
    bf = BudgetForcing(tokenizer, max=5, format="think")
    with pytest.raises(ValueError, match="contains an EOS id"):
        generate(model, tokenizer, chat_prompts(tokenizer, QUESTIONS[:1]), [bf], eos_token_id=wait[0])


# -------------------------------------------------------------------------- other processors
def test_forced_tokens_win_over_processors_after_and_before(model, tokenizer):
    tok = tokenizer
    end = ids(tok, "</think>")[0]
    wait = ids(tok, "Wait")
    texts = chat_prompts(tok, QUESTIONS[:2])
    reference, _ = generate(model, tok, texts, [BudgetForcing(tok, max=6, format="think")])
    # A ban of the end delimiter after us, and a processor pushing "Wait" to +inf before us.
    for processors in ([BudgetForcing(tok, max=6, format="think"), Ban(end)],
                       [Boost(wait[0]), BudgetForcing(tok, max=6, format="think")]):  # fmt: skip
        rows, _ = generate(model, tok, texts, processors)
        for row, ref in zip(rows, reference):
            k = len(ids(tok, "<think>")) + 6
            assert row[0] == ref[0] and end in row[k : k + 3]  # start and forced end still emitted
    # Under sampling too (no NaN from an all -inf row).
    torch.manual_seed(0)
    bf = BudgetForcing(tok, max=6, format="think")
    rows, _ = generate(model, tok, texts, [bf, Ban(end)], do_sample=True, temperature=0.9, top_p=0.9)
    assert bf.stats.thinking_tokens == [6, 6] and all(end in r for r in rows)


class Count(LogitsProcessor):
    """Counts its calls and leaves the scores alone."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, input_ids, scores):
        self.calls += 1
        return scores


@pytest.mark.parametrize("sample", [False, True])
def test_processors_after_run_once_per_step_and_frames_are_read_once_per_call(
    model, tokenizer, monkeypatch, sample
):
    from budget_forcing import processor

    reads = []
    read = processor._read_generate
    monkeypatch.setattr(processor, "_read_generate", lambda: reads.append(1) or read())
    tok, after = tokenizer, Count()
    bf = BudgetForcing(tok, max=6, format="think")
    torch.manual_seed(0)
    rows, out = generate(model, tok, chat_prompts(tok, QUESTIONS[:2]), [bf, after], do_sample=sample)
    steps = (
        out.shape[1]
        - tok(chat_prompts(tok, QUESTIONS[:2]), return_tensors="pt", padding=True).input_ids.shape[1]
    )
    assert after.calls == steps  # once per step: on budget forcing's copy, never again on its output
    assert len(reads) == 1  # generate's frames: at the first step of the call only
    assert bf.stats.thinking_tokens == [6, 6] and all(ids(tok, "</think>")[0] in r for r in rows)


def test_scores_are_not_modified_in_place(model, tokenizer):
    tok = tokenizer
    bf = BudgetForcing(tok, max=4, format="think")
    inputs = tok(chat_prompts(tok, QUESTIONS[:2]), return_tensors="pt", padding=True)
    out = model.generate(
        **inputs, logits_processor=[bf], max_new_tokens=20, do_sample=False,
        return_dict_in_generate=True, output_logits=True, output_scores=True,
    )  # fmt: skip
    logits = torch.stack(out.logits)
    assert torch.isfinite(logits).all()  # raw logits untouched
    transition = model.compute_transition_scores(out.sequences, out.scores, normalize_logits=True)
    assert not torch.isnan(transition).any()


# ------------------------------------------------------------------------------------ statistics
def after_end(tok, row):
    """The answer tokens of a row: after the first end delimiter, without EOS."""
    body = row[row.index(ids(tok, "</think>")[0]) + 1 :]
    return [t for t in body if t != tok.eos_token_id]


def test_answer_tokens_exact_when_max_new_tokens_stops_generation(model, tokenizer):
    tok = tokenizer
    bf = BudgetForcing(tok, max=3, format="think", answer_prefix=None)
    rows, _ = generate(model, tok, chat_prompts(tok, QUESTIONS[:2]), [bf], max_new_tokens=12)
    assert bf.stats.answer_tokens == [len(after_end(tok, r)) for r in rows]
    assert max(bf.stats.answer_tokens) > 0


def test_rows_stopped_by_other_criteria_stop_counting(model, tokenizer):
    tok = tokenizer
    texts = chat_prompts(tok, QUESTIONS[:2])
    free = BudgetForcing(tok, max=2, format="think", answer_prefix=None)
    rows, _ = generate(model, tok, texts, [free], max_new_tokens=30)
    # A stop string from the middle of row 0's answer.
    stop = tok.decode(after_end(tok, rows[0]))[1:3]
    bf = BudgetForcing(tok, max=2, format="think", answer_prefix=None)
    stopped, _ = generate(model, tok, texts, [bf], max_new_tokens=30, stop_strings=[stop], tokenizer=tok)
    assert bf.stats.answer_tokens == [len(after_end(tok, r)) for r in stopped]
    assert bf.stats.answer_tokens[0] < free.stats.answer_tokens[0]


def test_answer_cap_ends_with_eos_with_or_without_criteria(model, tokenizer):
    tok = tokenizer
    texts = chat_prompts(tok, QUESTIONS[:2])
    outs = []
    for criteria in (False, True):
        bf = BudgetForcing(tok, max=3, format="think", max_answer_tokens=2)
        extra = dict(stopping_criteria=[bf.stopping_criteria()]) if criteria else {}
        rows, _ = generate(model, tok, texts, [bf], **extra)
        outs.append(rows)
        assert bf.stats.answer_tokens == [2, 2]
        assert all(r[-1] == tok.eos_token_id for r in rows)
    assert outs[0] == outs[1]


# ------------------------------------------------------------------------------------- types
@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(max=8.0), TypeError, "`max` must be an int"),
        (dict(min=[1, 2.5], max=[4, 6]), TypeError, r"`min\[1\]` must be an int"),
        (dict(max=(x for x in [3, 4])), TypeError, "generator"),
        (dict(num_waits=True), TypeError, "`num_waits` must be an int"),
        (dict(max_answer_tokens="5"), TypeError, "`max_answer_tokens` must be an int"),
        (dict(eos_token_id=[]), ValueError, "`eos_token_id` is empty"),
        (dict(wait=5), TypeError, "`wait` must be a string"),
    ],
)
def test_bad_types_are_clear_errors(tokenizer, kwargs, error, match):
    with pytest.raises(error, match=match):
        BudgetForcing(tokenizer, format="think", **kwargs)


def test_numpy_and_torch_integers_are_accepted(model, tokenizer):
    bf = BudgetForcing(tokenizer, min=np.int64(1), max=[torch.tensor(3), np.int32(5)], format="think",
                       num_waits=np.int64(0))  # fmt: skip
    generate(model, tokenizer, chat_prompts(tokenizer, QUESTIONS[:2]), [bf])
    assert bf.stats.thinking_tokens == [3, 5]


def test_added_tokens_without_resized_embeddings_are_a_clear_error(model):
    tok = tiny_tokenizer()
    tok.add_tokens(["<reflect>"])
    fmt = ThinkingFormat("reflect", start="<reflect>", end="</think>")
    bf = BudgetForcing(tok, max=3, format=fmt)
    with pytest.raises(ValueError, match="resize_token_embeddings"):
        generate(model, tok, chat_prompts(tok, QUESTIONS[:1]), [bf])


# ------------------------------------------------------------------------- optional tokenizer
def test_short_form_resolves_the_tokenizer_from_generate(model, tokenizer):
    texts = chat_prompts(tokenizer, QUESTIONS[:2])
    long, _ = generate(model, tokenizer, texts, [BudgetForcing(tokenizer, min=2, max=6, format="think")])
    bf = BudgetForcing(min=2, max=6, format="think")
    short, _ = generate(model, tokenizer, texts, [bf], tokenizer=tokenizer)
    assert short == long and bf.tokenizer is tokenizer
    with pytest.raises(RuntimeError, match="not known yet"):
        BudgetForcing(max=4).end_overhead  # noqa: B018


def test_short_form_resolves_from_a_saved_model_and_per_model(tmp_path):
    a, b = tiny_tokenizer(), tiny_tokenizer(vocab_size=320)
    for name, tok in (("a", a), ("b", b)):
        tiny_model(tok, dtype=torch.float64).save_pretrained(tmp_path / name)
        tok.save_pretrained(tmp_path / name)
    from transformers import AutoModelForCausalLM

    bf = BudgetForcing(max=4, format="think")
    for name, tok in (("a", a), ("b", b), ("a", a)):  # reuse; a new model means a new resolution
        model = AutoModelForCausalLM.from_pretrained(tmp_path / name, dtype=torch.float64)
        texts = chat_prompts(tok, QUESTIONS[:1])
        short, _ = generate(model, tok, texts, [bf])
        long, _ = generate(model, tok, texts, [BudgetForcing(tok, max=4, format="think")])
        assert short == long and len(bf.tokenizer) == len(tok)


def test_short_form_without_any_path_is_a_clear_error(model, tokenizer):
    bf = BudgetForcing(max=4, format="think")
    with pytest.raises(
        ValueError, match=r"BudgetForcing\(tokenizer, ...\) or model.generate\(..., tokenizer="
    ):
        generate(model, tokenizer, chat_prompts(tokenizer, QUESTIONS[:1]), [bf])


def test_nudge_and_budget_forcing_stay_deterministic(model, tokenizer):
    nudge = Nudge([ids(tokenizer, "</think>")[0]], period=3, pad_id=tokenizer.pad_token_id)
    texts = chat_prompts(tokenizer, QUESTIONS[:2])
    runs = [generate(model, tokenizer, texts, [nudge, BudgetForcing(tokenizer, max=8, format="think", num_waits=1)])[0]
            for _ in range(2)]  # fmt: skip
    assert runs[0] == runs[1]
