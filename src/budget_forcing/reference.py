"""Budget forcing by repeated engine calls: the reference semantics, and a port of s1's eval loop.

Two engine-independent procedures, each driven by a greedy ``generate`` callable (`GenerateFn`):

* `multicall_generate`: the paper's method (and `budget_forcing.BudgetForcing`'s semantics) by
  several plain calls glued together: generate until the model attempts to end thinking, drop
  the attempt, append "Wait" and continue; at the budget append the end sequence; then answer.
  Tests use it to prove the one-pass processor token-for-token identical under greedy decoding.
* `s1_generate`: a faithful token-level port of s1's own evaluation loop (its lm-eval fork's
  vLLM model): every thinking call gets the full budget, the concatenated thinking is cut to the
  budget afterwards, the ``"\\n"`` check looks at the uncut text, and a row whose last call
  stopped on its own gets a plain end delimiter even when the cut removed its end. It differs from
  the paper's method only on rows whose thinking with waits overruns the budget.

`hf_generate_fn` makes the callable from a Hugging Face model; any engine can supply its own.

Example:
    >>> from budget_forcing.reference import hf_generate_fn, multicall_generate
    >>> from budget_forcing.testing import tiny_model, tiny_tokenizer
    >>> tok = tiny_tokenizer(); model = tiny_model(tok)
    >>> generate = hf_generate_fn(model, tok)
    >>> rows = multicall_generate(generate, tok, [tok.encode("Hi")], max=8, format="think", max_new_tokens=32)
    >>> rows[0].thinking_tokens
    8
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from budget_forcing import core
from budget_forcing.formats import ThinkingFormat, encode_exact, get_format

__all__ = [
    "GenerateFn",
    "ReferenceRow",
    "hf_generate_fn",
    "multicall_generate",
    "s1_auto_budget",
    "s1_generate",
]

#: ``generate(prompts, max_tokens, stop_token_ids, min_tokens)``: greedy continuations of token-id
#: prompts, each at most ``max_tokens`` long, stopping at (and dropping) the first stop id, which
#: is banned for the first ``min_tokens`` tokens (vLLM's ``min_tokens``). Returns, per prompt, the
#: generated ids without the stop id and the stop id that ended it (None: ``max_tokens`` ran out).
GenerateFn = Callable[[list[list[int]], int, list[int], int], list[tuple[list[int], int | None]]]


@dataclass
class ReferenceRow:
    """One row's result: the prompt plus every generated token, and its statistics."""

    ids: list[int]
    prompt_length: int
    thinking_tokens: int = 0
    answer_tokens: int = 0
    waits: int = 0
    ignored: int = 0
    forced_end: bool = False
    phase: str = "think"
    calls: int = field(default=0, repr=False)

    @property
    def generated(self) -> list[int]:
        return self.ids[self.prompt_length :]


def hf_generate_fn(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, **generate_kwargs
) -> GenerateFn:
    """A `GenerateFn` from a Hugging Face model: one batched greedy ``generate`` over left-padded rows.

    Extra keyword arguments go to every ``generate`` call (e.g. ``logits_processor``).
    """
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id

    @torch.no_grad()
    def generate(prompts, max_tokens, stop_token_ids, min_tokens=0):
        width = max(len(p) for p in prompts)
        device = model.device
        input_ids = torch.tensor([[pad] * (width - len(p)) + list(p) for p in prompts], device=device)
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=device)
        out = model.generate(
            input_ids=input_ids,
            attention_mask=mask,
            pad_token_id=pad,
            do_sample=False,
            max_new_tokens=max_tokens,
            min_new_tokens=min_tokens,
            eos_token_id=list(stop_token_ids),
            **generate_kwargs,
        )
        results = []
        for row in out[:, width:].tolist():
            hit = next((k for k, t in enumerate(row) if t in stop_token_ids), None)
            results.append((row, None) if hit is None else (row[:hit], row[hit]))
        return results

    return generate


def multicall_generate(
    generate: GenerateFn,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[Sequence[int]],
    min: int | Sequence[int] = 0,
    max: int | Sequence[int | None] | None = None,
    format: str | ThinkingFormat = "auto",
    wait: str | None = "Wait",
    num_waits: int = 0,
    answer_prefix: str | None = "Final Answer:",
    max_answer_tokens: int | None = None,
    max_new_tokens: int = 1024,
    eos_token_id: int | Sequence[int] | None = None,
    config_eos_token_id: int | Sequence[int] | None = None,
) -> list[ReferenceRow]:
    """Budget forcing by repeated greedy calls of ``generate`` over a batch of token-id prompts.

    Same arguments and semantics as `budget_forcing.BudgetForcing`; ``max=None`` thinks until the
    model stops or ``max_new_tokens`` runs out. ``config_eos_token_id`` plays the part of the
    generation config's EOS ids (the processor adds them to its own, as here).
    """
    fmt = get_format(format, tokenizer)
    seqs = core.encode_sequences(tokenizer, fmt, wait, answer_prefix, eos_token_id)
    eos, stop_id = core.eos_ids(seqs, config_eos_token_id)
    attempts = sorted(set(eos) | {seqs.end[0]})
    start, end, newline, tail, wait_ids = seqs.start, seqs.end, seqs.newline, seqs.tail, seqs.wait
    strings = core.token_strings(tokenizer)
    ends_newline = [t.endswith("\n") for t in strings]
    closers = [tokenizer.decode([e]) for e in eos]

    n = len(prompts)
    mins = [min] * n if isinstance(min, int) else list(min)
    maxs = [max] * n if max is None or isinstance(max, int) else list(max)
    rows = [ReferenceRow(ids=list(p), prompt_length=len(p)) for p in prompts]
    # A row's next call runs with min_tokens=1: right after the start (with waits) or a Wait, and
    # to suppress an attempt when there is no wait string.
    fresh = [False] * n
    for i, row in enumerate(rows):  # where does the prompt leave thinking?
        phase = core.prompt_phase(tokenizer.decode(row.ids), fmt, closers)
        if phase == core.ANSWER:
            row.phase = "answer"
        elif phase == core.START:
            row.ids += start
        fresh[i] = phase != core.ANSWER and num_waits > 0

    def close(row: ReferenceRow, forced: bool) -> None:
        if forced:
            last = row.ids[-1]
            row.ids += ([] if last < len(strings) and ends_newline[last] else newline) + end + tail
            row.forced_end = True
        else:
            row.ids += end
        row.phase = "answer"

    while True:
        budgets = {}
        for i, row in enumerate(rows):
            if row.phase != "think":
                continue
            cap = maxs[i]
            left = max_new_tokens - len(row.generated) if cap is None else cap - row.thinking_tokens
            if left <= 0 and cap is None:
                row.phase = "cut"  # max_new_tokens ran out while thinking without a cap
            elif left <= 0:
                close(row, forced=True)
            else:
                budgets[i] = left
        if not budgets:
            break
        groups = {m: [i for i in budgets if fresh[i] == bool(m)] for m in (0, 1)}  # before any call
        for min_tokens, group in groups.items():
            if not group:
                continue
            outs = generate(
                [rows[i].ids for i in group], max_(budgets[i] for i in group), attempts, min_tokens
            )
            for i, (new, stop) in zip(group, outs):
                row = rows[i]
                row.calls += 1
                fresh[i] = False
                stopped = (
                    stop is not None and len(new) < budgets[i]
                )  # a longer call ran past this row's budget
                keep = new[: budgets[i]]
                row.ids += keep
                row.thinking_tokens += len(keep)
                if not stopped:
                    continue
                if row.thinking_tokens < mins[i] or row.ignored < num_waits:
                    row.ignored += 1
                    if not wait_ids:
                        fresh[i] = True  # suppressed: the next token is the best non-attempt
                    elif maxs[i] is None or row.thinking_tokens + len(wait_ids) <= maxs[i]:
                        row.ids += wait_ids
                        row.thinking_tokens += len(wait_ids)
                        row.waits += 1
                        fresh[i] = True
                    else:
                        close(row, forced=True)
                else:
                    close(row, forced=False)

    answering = [r for r in rows if r.phase == "answer"]
    left = [max_new_tokens - len(r.generated) for r in answering]
    cap = max_(left, default=0) if max_answer_tokens is None else max_answer_tokens
    if answering and cap > 0:
        outs = generate([r.ids for r in answering], cap, eos, 0)
        for row, (new, stop), room in zip(answering, outs, left):
            answer = new[:room]
            row.ids += answer
            row.answer_tokens = len(answer)
            if stop is not None and len(new) < room:
                row.ids.append(stop)
            elif max_answer_tokens is not None and len(answer) == max_answer_tokens:
                row.ids.append(stop_id)
    elif answering and cap == 0:
        for row in answering:
            row.ids.append(stop_id)
    return rows


# ------------------------------------------------------------------------------ s1's eval loop
def s1_auto_budget(max_gen_toks: int, longest_prompt: int, start_len: int, end_max_len: int) -> int:
    """s1's ``max_tokens_thinking="auto"``: what is left of ``max_gen_toks`` after the longest
    prompt, the start delimiter, the forced end (``end + "\\nFinal Answer:"``) and 100 tokens."""
    return max_gen_toks - longest_prompt - start_len - end_max_len - 100


@dataclass
class S1Row:
    """One row of `s1_generate`: prompt + start + thinking + end sequence + answer, as token ids."""

    ids: list[int]
    prompt_length: int
    thinking: list[int]
    answer: list[int]
    forced_end: bool  # the last thinking call ran out of length ("\n" + end + "Final Answer:")
    waits: int
    uncut_thinking_tokens: int  # before the cut to the budget: above it, the row overran

    @property
    def generated(self) -> list[int]:
        return self.ids[self.prompt_length :]


def s1_generate(
    generate: GenerateFn,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[Sequence[int]],
    max_tokens_thinking: int | str,
    thinking_n_ignore: int | None = None,
    wait: str = "Wait",
    format: str | ThinkingFormat = "s1",
    max_gen_toks: int = 32768,
    stop_token_ids: Sequence[int] | None = None,
) -> list[S1Row]:
    """s1's evaluation loop (its lm-eval fork's vLLM ``_model_generate``), in token ids.

    Args:
        generate: the engine (greedy), see `GenerateFn`.
        prompts: chat-formatted prompts as token ids (the start delimiter is appended here).
        max_tokens_thinking: the thinking budget, or ``"auto"`` (`s1_auto_budget`).
        thinking_n_ignore: how many times an end of thinking is replaced by ``wait``; when set,
            every thinking call runs with ``min_tokens=1``.
        stop_token_ids: what ends a thinking call; defaults to the end delimiter's first token and
            the tokenizer's EOS (s1: ``<|im_start|>`` and ``<|im_end|>``). The answer call stops
            at the EOS ids among them.
    """
    fmt = get_format(format, tokenizer)
    start = encode_exact(tokenizer, fmt.start, "start delimiter")
    end = encode_exact(tokenizer, fmt.end, "end delimiter")
    end_max = encode_exact(tokenizer, fmt.end + "\nFinal Answer:", "end delimiter + answer prefix")
    newline = encode_exact(tokenizer, "\n", "newline")
    wait_ids = encode_exact(tokenizer, wait, "wait string")
    eos = [tokenizer.eos_token_id]
    stops = list(stop_token_ids) if stop_token_ids is not None else [end[0], *eos]
    answer_stops = [t for t in stops if t != end[0]] or eos
    strings = core.token_strings(tokenizer)

    requests = [list(p) + start for p in prompts]
    if max_tokens_thinking == "auto":
        budget = s1_auto_budget(max_gen_toks, max_(len(p) for p in prompts), len(start), len(end_max))
    else:
        budget = int(max_tokens_thinking)
    if budget < 1:
        raise ValueError(
            f"The thinking budget is {budget} tokens (max_gen_toks={max_gen_toks} minus the prompt and forced "
            "tokens); raise max_gen_toks or shorten the prompts."
        )
    min_tokens = 1 if thinking_n_ignore is not None else 0

    thinking: list[list[int]] = [[] for _ in prompts]
    last_new: list[list[int]] = [[] for _ in prompts]  # the last call's tokens (for the "\n" check)
    length: list[bool] = [False] * len(prompts)
    waits = [0] * len(prompts)
    active = list(range(len(prompts)))
    calls = 1 + (int(thinking_n_ignore) if thinking_n_ignore is not None else 0)
    for call in range(calls):
        if not active:  # every row finished early (s1 itself crashes on the empty batch here)
            break
        outs = generate([requests[i] + thinking[i] for i in active], budget, stops, min_tokens)
        still = []
        for i, (new, stop) in zip(active, outs):
            stopped = stop is not None
            thinking[i] += new
            last_new[i] = new
            length[i] = not stopped
            if stopped and call < calls - 1:  # ignore this end: append the wait and continue
                thinking[i] += wait_ids
                waits[i] += 1
                still.append(i)
        active = still

    rows = []
    for i, prompt in enumerate(prompts):
        cut = thinking[i][:budget]
        if length[i]:
            last = last_new[i][-1] if last_new[i] else requests[i][-1]
            uncut_ends_nl = last < len(strings) and strings[last].endswith("\n")
            forced = ([] if uncut_ends_nl else newline) + end_max
        else:
            forced = end
        rows.append(
            S1Row(
                ids=requests[i] + cut + forced,
                prompt_length=len(prompt),
                thinking=cut,
                answer=[],
                forced_end=length[i],
                waits=waits[i],
                uncut_thinking_tokens=len(thinking[i]),
            )
        )
    outs = generate([r.ids for r in rows], max_gen_toks, answer_stops, 0)
    for row, (new, _) in zip(rows, outs):
        row.answer = new
        row.ids = row.ids + new
    return rows


max_ = max  # the builtins, shadowed by the budget arguments above
min_ = min
