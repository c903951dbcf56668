"""s1's multi-call budget forcing, run with plain ``generate()`` calls: the reference semantics.

This is how the original s1 code forces budgets (several engine calls glued together), written in
token space with Hugging Face ``generate``: generate until the model attempts to end thinking, drop
the attempt, append "Wait" and continue; at the budget append the end sequence; then generate the
answer. It shares nothing with `budget_forcing.BudgetForcing` but the rules, so tests use it
to prove the one-pass processor token-for-token identical under greedy decoding, and
``benchmarks/overhead.py`` times the two against each other.

Example:
    >>> import torch
    >>> from budget_forcing.reference import multicall_generate
    >>> from budget_forcing.testing import tiny_model, tiny_tokenizer
    >>> tok = tiny_tokenizer(); model = tiny_model(tok)
    >>> rows = multicall_generate(model, tok, [tok.encode("Hi")], max=8, format="think", max_new_tokens=32)
    >>> rows[0].thinking_tokens
    8
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from budget_forcing.core import token_strings
from budget_forcing.formats import ThinkingFormat, encode_exact, get_format

__all__ = ["ReferenceRow", "multicall_generate"]


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


def _last_match_end(ids: list[int], pattern: list[int]) -> int:
    n = len(pattern)
    return max((i + n - 1 for i in range(len(ids) - n + 1) if ids[i : i + n] == pattern), default=-1)


@torch.no_grad()
def _generate(model: PreTrainedModel, pad_id: int, rows: list[list[int]], **kwargs) -> list[list[int]]:
    """One batched plain generate() over ragged rows (left-padded); returns the new tokens per row."""
    width = max(len(r) for r in rows)
    device = model.device
    input_ids = torch.tensor([[pad_id] * (width - len(r)) + r for r in rows], device=device)
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows], device=device)
    out = model.generate(
        input_ids=input_ids, attention_mask=mask, pad_token_id=pad_id, do_sample=False, **kwargs
    )
    return [row[width:].tolist() for row in out]


def multicall_generate(
    model: PreTrainedModel,
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
    **generate_kwargs,
) -> list[ReferenceRow]:
    """Budget forcing by repeated greedy ``generate()`` calls over a batch of token-id prompts.

    Same arguments and semantics as `budget_forcing.BudgetForcing`; ``max=None`` thinks
    until the model stops or ``max_new_tokens`` runs out. Extra keyword arguments go to every
    ``generate`` call (e.g. ``logits_processor``).
    """
    fmt = get_format(format, tokenizer)
    start = encode_exact(tokenizer, fmt.start, "start delimiter")
    end = encode_exact(tokenizer, fmt.end, "end delimiter")
    newline = encode_exact(tokenizer, "\n", "newline")
    tail = encode_exact(tokenizer, fmt.answer_sep + answer_prefix, "answer prefix") if answer_prefix else []
    wait_ids = encode_exact(tokenizer, wait, "wait string") if wait is not None else []
    eos = {tokenizer.eos_token_id}
    if fmt.answer_end and len(ids := encode_exact(tokenizer, fmt.answer_end, "answer end")) == 1:
        eos.add(ids[0])
    attempts = sorted(eos | {end[0]})
    # Ids past the tokenizer's vocabulary (models pad their embeddings) decode to nothing.
    strings = token_strings(tokenizer)
    ends_newline = [t.endswith("\n") for t in strings]
    is_space = [not t.strip() for t in strings]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id

    n = len(prompts)
    mins = [min] * n if isinstance(min, int) else list(min)
    maxs = [max] * n if max is None or isinstance(max, int) else list(max)
    rows = [ReferenceRow(ids=list(p), prompt_length=len(p)) for p in prompts]
    for row in rows:  # where does the prompt leave thinking?
        s, e = _last_match_end(row.ids, start), _last_match_end(row.ids, end)
        if s > e:
            continue
        if e > s and all(t < len(strings) and is_space[t] for t in row.ids[e + 1 :]):
            row.phase = "answer"
        else:
            row.ids += start

    def close(row: ReferenceRow, forced: bool) -> None:
        if forced:
            last = row.ids[-1]
            row.ids += ([] if last < len(strings) and ends_newline[last] else newline) + end + tail
            row.forced_end = True
        else:
            row.ids += end
        row.phase = "answer"

    while True:
        thinking = [i for i, r in enumerate(rows) if r.phase in ("think", "suppress")]
        budgets = {}
        for i in thinking:
            row, cap = rows[i], maxs[i]
            used = len(row.generated)
            left = max_new_tokens - used if cap is None else cap - row.thinking_tokens
            if left <= 0 and cap is None:
                row.phase = "cut"  # max_new_tokens ran out while thinking without a cap
            elif left <= 0:
                close(row, forced=True)
            else:
                budgets[i] = left
        if not budgets:
            break
        # Rows whose attempt must be suppressed (wait=None) get exactly one token with attempts banned.
        suppress = [i for i in budgets if rows[i].phase == "suppress"]
        free = [i for i in budgets if i not in suppress]
        for group, suppressing in ((free, False), (suppress, True)):
            if not group:
                continue
            kwargs = dict(max_new_tokens=max_(budgets[i] for i in group), eos_token_id=attempts)
            if suppressing:
                kwargs.update(max_new_tokens=1, suppress_tokens=attempts)
            outs = _generate(model, pad, [rows[i].ids for i in group], **kwargs, **generate_kwargs)
            for i, new in zip(group, outs):
                row = rows[i]
                row.calls += 1
                new = new[: budgets[i]]
                hit = next((k for k, t in enumerate(new) if t in attempts), None)
                keep = new if hit is None else new[:hit]
                row.ids += keep
                row.thinking_tokens += len(keep)
                if row.phase == "suppress":
                    row.phase = "think"
                if hit is None:
                    continue
                if row.thinking_tokens < mins[i] or row.ignored < num_waits:
                    row.ignored += 1
                    if not wait_ids:
                        row.phase = "suppress"
                    elif maxs[i] is None or row.thinking_tokens + len(wait_ids) <= maxs[i]:
                        row.ids += wait_ids
                        row.thinking_tokens += len(wait_ids)
                        row.waits += 1
                    else:
                        close(row, forced=True)
                else:
                    close(row, forced=False)

    answering = [r for r in rows if r.phase == "answer"]
    left = [max_new_tokens - len(r.generated) for r in answering]
    cap = max_(left, default=0) if max_answer_tokens is None else max_answer_tokens
    if answering and cap > 0:
        outs = _generate(
            model,
            pad,
            [r.ids for r in answering],
            max_new_tokens=cap,
            eos_token_id=sorted(eos),
            **generate_kwargs,
        )
        for row, new, room in zip(answering, outs, left):
            new = new[:room]
            hit = next((k for k, t in enumerate(new) if t in eos), None)
            answer = new if hit is None else new[:hit]
            row.ids += answer
            row.answer_tokens = len(answer)
            if hit is not None or (max_answer_tokens is not None and len(answer) == max_answer_tokens):
                row.ids.append(new[hit] if hit is not None else min_(eos))
    elif answering and cap == 0:
        for row in answering:
            row.ids.append(min_(eos))
    return rows


max_ = max  # the builtins, shadowed by the budget arguments above
min_ = min
