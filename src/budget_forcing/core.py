"""The engine-independent core of budget forcing: one per-row state machine in tensors.

Every engine adapter (the Hugging Face logits processor, the vLLM logits processor) shares this
module: it knows nothing about ``generate`` or schedulers, only token ids. Each row runs::

    START --(start delimiter forced)--> THINK --(end sequence)--> ANSWER --(EOS)--> DONE

An adapter does four things:

1. once per vocabulary/setting: `encode_sequences` (or a `Sequences` built by hand from token-id
   lists) and `build_tables` (per-vocabulary flags and the forced-sequence table);
2. once per request (a whole batch, a single row, or any subset of rows): `init_state` from the
   prompt ids and per-row settings (`row_tensor` expands per-prompt budgets to rows);
3. every step, after the engine appended the token it sampled: `absorb` that token;
4. every step, before the engine samples: `advance` with the model's choice, which returns the
   token each row must emit and whether it is forced.

`finished` tells which rows are done, `stats` reads the per-row statistics. Settings that need no
tokenizer are validated by `check_budgets` and `check_settings`.

Example:
    >>> import torch
    >>> from budget_forcing import core
    >>> seqs = core.Sequences(start=[10], end=[11], newline=[12], wait=[13], tail=[14], eos=[2])
    >>> flags = torch.zeros(16, dtype=torch.bool)
    >>> t = core.build_tables(seqs, 16, ends_newline=flags, is_space=flags)
    >>> s = core.init_state(t, [5, 6], min=0, max=1)  # one row, its prompt does not open thinking
    >>> tokens = []
    >>> for _ in range(5):
    ...     s, token, forced = core.advance(s, t, choice=torch.tensor([7]), last=torch.tensor([5]))
    ...     tokens.append(int(token))
    ...     s = core.absorb(s, t, token)
    >>> tokens  # start, 1 thinking token (max=1), forced "\\n" + end + answer prefix, then free
    [10, 7, 12, 11, 14]
"""

from __future__ import annotations

import contextlib
import operator
import warnings
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import torch

__all__ = [
    "START",
    "THINK",
    "ANSWER",
    "DONE",
    "NONE",
    "SEQ_START",
    "SEQ_WAIT",
    "SEQ_END",
    "SEQ_FORCED",
    "SEQ_FORCED_NL",
    "SEQ_EOS",
    "UNLIMITED",
    "Budget",
    "State",
    "Tables",
    "BudgetStats",
    "Sequences",
    "encode_sequences",
    "token_strings",
    "vocab_flags",
    "build_tables",
    "row_tensor",
    "prompt_phase",
    "init_state",
    "absorb",
    "choosing",
    "advance",
    "decide",
    "Quiet",
    "quiet",
    "coast",
    "forced_tokens",
    "finished",
    "stats",
    "check_budgets",
    "check_settings",
    "check_wait_fits",
    "check_sequences",
    "check_vocab",
    "eos_ids",
    "int_arg",
    "budget_arg",
    "eos_arg",
]

# Row phases.
START, THINK, ANSWER, DONE = 0, 1, 2, 3
# Rows of the forced-sequence table; each names what a row does once its queue is emptied.
NONE, SEQ_START, SEQ_WAIT, SEQ_END, SEQ_FORCED, SEQ_FORCED_NL, SEQ_EOS = range(7)
PHASE_AFTER = [THINK, THINK, THINK, ANSWER, ANSWER, ANSWER, DONE]
#: Stands for "no limit" in the per-row int64 budget tensors.
UNLIMITED = 2**62

Budget = int | Sequence[int | None] | None
State = dict[str, torch.Tensor]  # per-row state, one entry per row
Tables = dict[str, torch.Tensor]  # lookup tables (per vocabulary id or per forced sequence)


# ------------------------------------------------------------------------------------ sequences
@dataclass(frozen=True)
class Sequences:
    """The token ids budget forcing emits, each encoded on its own.

    Attributes:
        start: the start delimiter (forced when a prompt does not leave thinking open).
        end: the end delimiter; its first token is what "an attempt to end thinking" means.
        newline: ``"\\n"``, forced before a budget-forced end unless the last token ends with one.
        wait: the ids injected when an attempt is ignored (empty: only suppress the attempt).
        tail: ``answer_sep + answer_prefix`` forced after a budget-forced end (may be empty).
        eos: ids that end the answer (and are attempts to end while thinking).
    """

    start: list[int]
    end: list[int]
    newline: list[int]
    wait: list[int]
    tail: list[int]
    eos: list[int]

    @property
    def end_overhead(self) -> int:
        """Most forced tokens a row spends outside thinking: the start delimiter and a forced end."""
        return len(self.start) + len(self.newline) + len(self.end) + len(self.tail)

    def table(self, stop_id: int | None = None) -> list[list[int]]:
        """The forced sequences indexed by the ``SEQ_*`` ids (``stop_id`` ends a capped answer)."""
        stop = self.eos[0] if stop_id is None else stop_id
        forced = self.end + self.tail
        return [[], self.start, self.wait, self.end, forced, self.newline + forced, [stop]]


def encode_sequences(
    tokenizer,
    fmt,
    wait: str | None = "Wait",
    answer_prefix: str | None = "Final Answer:",
    eos_token_id: int | Sequence[int] | None = None,
) -> Sequences:
    """Encode a `ThinkingFormat`'s delimiters, the wait string and the answer prefix; validate them.

    EOS defaults to the tokenizer's EOS plus the format's one-token ``answer_end``.
    """
    from budget_forcing.formats import encode_exact

    start = encode_exact(tokenizer, fmt.start, f"start delimiter of format {fmt.name!r}")
    end = encode_exact(tokenizer, fmt.end, f"end delimiter of format {fmt.name!r}")
    if fmt.single_token and (len(start) != 1 or len(end) != 1):
        raise ValueError(
            f"Format {fmt.name!r} needs {fmt.start!r} and {fmt.end!r} to be single tokens, but this tokenizer "
            f"splits them into {len(start)} and {len(end)} tokens. Use format='s1' or a ThinkingFormat "
            "with single_token=False for multi-token delimiters."
        )
    newline = encode_exact(tokenizer, "\n", "newline")
    tail = encode_exact(tokenizer, fmt.answer_sep + answer_prefix, "answer prefix") if answer_prefix else []
    wait_ids = (
        encode_exact(tokenizer, wait, "wait string (use wait=None to only suppress the end)")
        if wait is not None
        else []
    )
    eos = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
    if fmt.answer_end:
        answer_end = encode_exact(tokenizer, fmt.answer_end, f"answer end of format {fmt.name!r}")
        if len(answer_end) == 1:
            eos.add(answer_end[0])
    if eos_token_id is not None:
        eos = {eos_token_id} if isinstance(eos_token_id, int) else set(eos_token_id)
    if not eos:
        raise ValueError("The tokenizer has no EOS token; pass `eos_token_id`.")
    return Sequences(start=start, end=end, newline=newline, wait=wait_ids, tail=tail, eos=sorted(eos))


# ----------------------------------------------------------------------------- vocabulary flags
_VOCAB_CACHE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def token_strings(tokenizer) -> list[str]:
    """Each token id decoded on its own (cached per tokenizer; computed once)."""
    try:
        return _VOCAB_CACHE[tokenizer]
    except (KeyError, TypeError):
        pass
    strings = tokenizer.batch_decode(
        [[i] for i in range(len(tokenizer))], skip_special_tokens=False, clean_up_tokenization_spaces=False
    )
    with contextlib.suppress(TypeError):  # tokenizers that cannot be weakly referenced are not cached
        _VOCAB_CACHE[tokenizer] = strings
    return strings


def vocab_flags(tokenizer, vocab_size: int, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per token id: does it end with ``"\\n"``, is it only whitespace (ids past the tokenizer: no)."""
    strings = token_strings(tokenizer)[:vocab_size]
    ends_newline = torch.zeros(vocab_size, dtype=torch.bool)
    is_space = torch.zeros(vocab_size, dtype=torch.bool)
    ends_newline[: len(strings)] = torch.tensor([t.endswith("\n") for t in strings], dtype=torch.bool)
    is_space[: len(strings)] = torch.tensor([not t.strip() for t in strings], dtype=torch.bool)
    return ends_newline.to(device), is_space.to(device)


def build_tables(
    seqs: Sequences,
    vocab_size: int,
    ends_newline: torch.Tensor,
    is_space: torch.Tensor,
    device=None,
    eos_ids: Sequence[int] | None = None,
    stop_id: int | None = None,
) -> Tables:
    """The lookup tables `init_state`, `absorb` and `advance` read.

    Args:
        seqs: the forced token sequences.
        vocab_size: width of the engine's scores (ids past it are ignored).
        ends_newline, is_space: per-token flags (see `vocab_flags`), length ``vocab_size``.
        eos_ids: ids that end the answer; defaults to ``seqs.eos``.
        stop_id: the id forced when the answer reaches its cap; defaults to the first EOS.
    """
    device = torch.device(device) if device is not None else ends_newline.device
    eos = [e for e in (seqs.eos if eos_ids is None else eos_ids) if e < vocab_size]
    is_eos = torch.zeros(vocab_size, dtype=torch.bool, device=device)
    is_eos[eos] = True
    is_attempt = is_eos.clone()
    is_attempt[seqs.end[0]] = True
    sequences = seqs.table(stop_id)
    width = max(len(q) for q in sequences)
    return {
        "is_eos": is_eos,
        "is_attempt": is_attempt,
        "attempt_ids": is_attempt.nonzero().squeeze(1),
        "ends_newline": ends_newline.to(device),
        "is_space": is_space.to(device),
        "table": torch.tensor(
            [q + [0] * (width - len(q)) for q in sequences], dtype=torch.long, device=device
        ),
        "seq_len": torch.tensor([len(q) for q in sequences], dtype=torch.long, device=device),
        "phase_after": torch.tensor(PHASE_AFTER, dtype=torch.long, device=device),
        "start_ids": torch.tensor(seqs.start, dtype=torch.long, device=device),
        "end_ids": torch.tensor(seqs.end, dtype=torch.long, device=device),
    }


# ----------------------------------------------------------------------------------- settings
def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def check_budgets(low: Budget, high: Budget) -> None:
    """Budgets are non-negative ints (or None for no cap), one per prompt when lists, and min <= max."""
    lists = {}
    for name, value in (("min", low), ("max", high)):
        values = [value] if value is None or isinstance(value, int) else list(value)
        if not values:
            raise ValueError(f"`{name}` is an empty list; pass an int or one value per prompt.")
        for v in values:
            if v is not None and (not _is_int(v) or v < 0):
                raise ValueError(f"`{name}` must be non-negative ints (or None for no limit), got {v!r}.")
        lists[name] = values
    lows, highs = lists["min"], lists["max"]
    both_lists = not isinstance(low, int) and not (high is None or isinstance(high, int))
    if both_lists and len(lows) != len(highs):
        raise ValueError(f"`min` has {len(lows)} entries and `max` {len(highs)}; give one per prompt.")
    per_prompt = not isinstance(low, int) or not (high is None or isinstance(high, int))
    for i in range(max(len(lows), len(highs))):
        lo, hi = lows[i % len(lows)], highs[i % len(highs)]
        if lo is not None and hi is not None and lo > hi:
            where = f"Prompt {i}: " if per_prompt else ""
            raise ValueError(f"{where}min={lo} > max={hi}: lower `min` or raise `max`.")


def _int(v, name: str):
    """``v`` as a Python int (numpy and torch integer scalars too); a clear error otherwise."""
    if isinstance(v, (bool, float, str)):
        raise TypeError(f"`{name}` must be an int, got {v!r} ({type(v).__name__}).")
    try:
        return operator.index(v)
    except TypeError:
        raise TypeError(f"`{name}` must be an int, got {v!r} ({type(v).__name__}).") from None


def int_arg(value, name: str, optional: bool = False) -> int | None:
    """An int setting (None allowed when ``optional``), numpy/torch integer scalars accepted."""
    if value is None and optional:
        return None
    return _int(value, name)


def budget_arg(value, name: str) -> Budget:
    """A budget as None, an int, or a list of ints/None (tuples, arrays and tensors accepted)."""
    if value is None:
        return None
    if isinstance(value, torch.Tensor) and value.dim() == 0:
        value = value.item()
    if isinstance(value, (list, tuple)) or (hasattr(value, "tolist") and not isinstance(value, int)):
        values = value.tolist() if hasattr(value, "tolist") else value
        if not isinstance(values, list):
            return _int(values, name)
        return [None if v is None else _int(v, f"{name}[{i}]") for i, v in enumerate(values)]
    if isinstance(value, (str, bytes)) or hasattr(value, "__iter__"):
        raise TypeError(
            f"`{name}` must be an int, None or a list with one value per prompt, got {type(value).__name__}; "
            "pass list(...) for a generator."
        )
    return _int(value, name)


def eos_arg(value) -> list[int] | None:
    """``eos_token_id`` as a non-empty list of ints, or None."""
    if value is None:
        return None
    values = [value] if not isinstance(value, (list, tuple, set)) and not hasattr(value, "tolist") else value
    values = values.tolist() if hasattr(values, "tolist") else list(values)
    values = values if isinstance(values, list) else [values]
    if not values:
        raise ValueError(
            "`eos_token_id` is empty; pass one or more token ids, or None for the tokenizer's EOS."
        )
    return [_int(v, "eos_token_id") for v in values]


def check_settings(num_waits: int = 0, max_answer_tokens: int | None = None) -> None:
    """``num_waits`` is a non-negative int; ``max_answer_tokens`` a non-negative int or None."""
    if not isinstance(num_waits, int) or num_waits < 0:
        raise ValueError(f"`num_waits` must be a non-negative int, got {num_waits!r}.")
    if max_answer_tokens is not None and max_answer_tokens < 0:
        raise ValueError(f"`max_answer_tokens` must be >= 0 or None, got {max_answer_tokens!r}.")


def check_wait_fits(low: Budget, high: Budget, wait_len: int) -> None:
    """``min`` is guaranteed only if a Wait always fits below ``max``: ``max - min >= wait_len - 1``.

    A row that attempts to end below ``min`` gets a Wait only if it fits (``think + wait <= max``);
    otherwise the end is forced, below ``min``. So each prompt's ``max - min`` must leave room.
    """
    if not wait_len:
        return
    lows = low if isinstance(low, list) else [low]
    highs = high if isinstance(high, list) else [high]
    for i in range(max(len(lows), len(highs))):
        lo, hi = lows[i % len(lows)] or 0, highs[i % len(highs)]
        if lo and hi is not None and hi - lo < wait_len - 1:
            where = f"prompt {i}: " if len(lows) > 1 or len(highs) > 1 else ""
            raise ValueError(
                f"{where}min={lo}, max={hi}: the wait string is {wait_len} tokens, so a Wait may not fit "
                f"below max and thinking could end below min. Keep max - min >= {wait_len - 1} "
                "(raise max or lower min), or use a shorter wait string."
            )


def check_sequences(seqs: Sequences, fmt, wait: str | None, prefix: str | None, eos=None) -> None:
    """Forced sequences must not contain what ends thinking or the answer (they would break rows)."""
    for name, text in (("wait string", wait), ("answer prefix", prefix), ("start delimiter", fmt.start)):
        if text and fmt.end in text:
            raise ValueError(
                f"The {name} {text!r} contains the end delimiter {fmt.end!r}; remove it (the end "
                "delimiter is added by budget forcing itself)."
            )
    eos = set(seqs.eos if eos is None else eos)
    for name, ids in (
        ("wait string", seqs.wait),
        ("answer prefix", seqs.tail),
        ("start delimiter", seqs.start),
        ("end delimiter", seqs.end),
        ("newline", seqs.newline),
    ):
        clash = sorted(set(ids) & eos)
        if clash:
            raise ValueError(
                f"The {name} (token ids {ids}) contains an EOS id {clash}; forcing it would end the row. "
                "Remove that id from `eos_token_id` (of BudgetForcing or generate) or change the string."
            )


def check_vocab(seqs: Sequences, eos: Sequence[int], vocab_size: int) -> None:
    """Every forced id must exist in the model's scores (tokens added without resizing do not)."""
    ids = [*seqs.start, *seqs.end, *seqs.newline, *seqs.wait, *seqs.tail]
    if ids and max(ids) >= vocab_size:
        raise ValueError(
            f"Token id {max(ids)} of a forced sequence is outside the model's vocabulary ({vocab_size} "
            "scores). Tokens were added to the tokenizer without resizing the model: call "
            "model.resize_token_embeddings(len(tokenizer))."
        )


def eos_ids(seqs: Sequences, config_eos: int | Sequence[int] | None = None) -> tuple[list[int], int]:
    """The one definition of EOS: the processor's ids plus the generation config's; and the id
    forced when an answer reaches its cap (the config's first EOS, else the processor's first)."""
    config = [] if config_eos is None else [config_eos] if isinstance(config_eos, int) else list(config_eos)
    return sorted(set(seqs.eos) | set(config)), (config[0] if config else seqs.eos[0])


def row_tensor(
    value: Budget, name: str, default: int, rows: int, device=None, per_prompt: int = 1
) -> torch.Tensor:
    """A setting (int, per-prompt list or None) as one int64 per row: each prompt's value repeated
    for its ``per_prompt`` consecutive rows (``num_return_sequences``, as generate lays them out)."""
    if value is None or isinstance(value, int):
        return torch.full((rows,), default if value is None else value, dtype=torch.long, device=device)
    values = [default if v is None else v for v in value]
    if len(values) * per_prompt != rows:
        raise ValueError(
            f"`{name}` has {len(values)} entries but generate() got {rows // per_prompt} prompts; pass one "
            "value per prompt, or a single int."
        )
    return torch.tensor(values, dtype=torch.long, device=device).repeat_interleave(per_prompt)


# --------------------------------------------------------------------------------------- state
def _last_match_end(input_ids: torch.Tensor, pattern: torch.Tensor) -> torch.Tensor:
    """Per row, the position of the last token of the last occurrence of ``pattern`` (-1 if none)."""
    rows, length = input_ids.shape
    n = pattern.numel()
    if length < n:
        return torch.full((rows,), -1, dtype=torch.long, device=input_ids.device)
    hits = (input_ids.unfold(1, n, 1) == pattern).all(-1)  # (rows, windows): pattern ends at window + n - 1
    ends = torch.arange(n - 1, length, device=input_ids.device)
    return torch.where(hits, ends, -1).amax(-1)


def _last_any(input_ids: torch.Tensor, flags: torch.Tensor) -> torch.Tensor:
    """Per row, the position of the last token whose flag is set (-1 if none)."""
    vocab = flags.shape[0]
    hit = flags[input_ids.clamp(max=vocab - 1)] & (input_ids < vocab)
    return torch.where(hit, torch.arange(input_ids.shape[1], device=input_ids.device), -1).amax(-1)


def prompt_phase(text: str, fmt, closers: Sequence[str] = ()) -> int:
    """Where a prompt (as text) leaves thinking: THINK, ANSWER or START (see `init_state`).

    Thinking is open when the last start delimiter comes after the last end delimiter and after
    every ``closers`` string (EOS / end-of-turn text such as ``<|im_end|>``), so a start delimiter
    quoted in a system prompt or left open in an earlier turn does not count. It is closed when the
    end delimiter is followed by whitespace only. Text matching is immune to how the tokenizer
    merges the delimiters with their neighbours.

    Example:
        >>> from budget_forcing.formats import THINK_FORMAT
        >>> prompt_phase("Say <think> first.<|im_end|>\\n<|im_start|>assistant\\n", THINK_FORMAT, ["<|im_end|>"])
        0
        >>> prompt_phase("<|im_start|>assistant\\n<think>\\nSo", THINK_FORMAT, ["<|im_end|>"])
        1
    """
    start, end = text.rfind(fmt.start), text.rfind(fmt.end)
    close = max((text.rfind(c) for c in closers if c), default=-1)
    if start > end and start > close:
        return THINK
    if end > start and end > close and not text[end + len(fmt.end) :].strip():
        return ANSWER
    return START


def _per_row(value, default: int, rows: int, device) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value.to(device=device, dtype=torch.long).expand(rows).clone()
    if value is None or isinstance(value, int):
        return torch.full((rows,), default if value is None else value, dtype=torch.long, device=device)
    return torch.tensor([default if v is None else v for v in value], dtype=torch.long, device=device)


def init_state(
    t: Tables,
    prompt_ids: torch.Tensor | Sequence[int],
    min: int | torch.Tensor | Sequence[int] = 0,
    max: int | torch.Tensor | Sequence[int | None] | None = None,
    num_waits: int | torch.Tensor | Sequence[int] = 0,
    max_answer: int | torch.Tensor | Sequence[int | None] | None = None,
    phase: torch.Tensor | Sequence[int] | None = None,
) -> State:
    """Fresh per-row state from the prompt ids: where each prompt leaves thinking.

    ``prompt_ids`` is a ``(rows, length)`` tensor (left padding allowed) or the ids of a single
    prompt; the settings are an int (every row), one value per row, or None for no limit. An adapter
    that adds requests one at a time calls this per request and writes the entries into its slots.

    * thinking left open (the last start delimiter after the last end): THINK, counting from the
      first generated token;
    * closed right at the end of the prompt (only whitespace after the end delimiter): ANSWER;
    * otherwise (no delimiters, or an earlier closed block in a chat history): START is forced.

    Matching token ids is exact only where the delimiters tokenize the same in context; adapters
    with a tokenizer pass ``phase`` from `prompt_phase` (text matching) instead.
    """
    device = t["table"].device
    ids = torch.as_tensor(prompt_ids, dtype=torch.long, device=device)
    if ids.dim() == 1:
        ids = ids[None]
    rows, length = ids.shape
    last_start = _last_match_end(ids, t["start_ids"])
    last_end = _last_match_end(ids, t["end_ids"])
    after_end = torch.arange(length, device=device) > last_end[:, None]
    vocab = t["is_space"].shape[0]
    only_space = (t["is_space"][ids.clamp(max=vocab - 1)] & (ids < vocab) | ~after_end).all(-1)
    is_open = last_start > torch.maximum(last_end, _last_any(ids, t["is_eos"]))
    closed = (last_end > last_start) & only_space
    if phase is None:
        phase = torch.where(is_open, THINK, torch.where(closed, ANSWER, START))
    else:
        phase = torch.as_tensor(phase, dtype=torch.long, device=device).reshape(rows)

    zeros = torch.zeros(rows, dtype=torch.long, device=device)
    waits = _per_row(num_waits, 0, rows, device)
    return {
        "phase": phase,
        "seq": torch.where(phase == START, SEQ_START, NONE),
        "pos": zeros.clone(),
        "think": zeros.clone(),
        "answer": zeros.clone(),
        "waits": zeros.clone(),
        "ignored": zeros.clone(),
        "forced": torch.zeros(rows, dtype=torch.bool, device=device),
        "pending": torch.zeros(rows, dtype=torch.bool, device=device),
        "min": _per_row(min, 0, rows, device),
        "max": _per_row(max, UNLIMITED, rows, device),
        "num_waits": waits,
        "max_answer": _per_row(max_answer, UNLIMITED, rows, device),
        # s1's min_tokens=1: with num_waits set, the first thinking token cannot end thinking.
        "fresh": (phase == THINK) & (waits > 0),
    }


def absorb(s: State, t: Tables, last: torch.Tensor) -> State:
    """Account for the token the engine just appended (``last``, one per row); EOS ends the row.

    Only answer tokens are unknown until sampled: every other token was decided by `advance`.
    """
    pending = s["pending"]
    eos = pending & t["is_eos"][last]
    return {
        **s,
        "answer": s["answer"] + (pending & ~eos),
        "phase": s["phase"].masked_fill(eos, DONE),
        "pending": torch.zeros_like(pending),
    }


def _free(s: State, t: Tables) -> tuple[torch.Tensor, torch.Tensor]:
    """Thinking rows with nothing queued, and those of them at ``max``."""
    free = (s["phase"] == THINK) & (s["pos"] >= t["seq_len"][s["seq"]])
    return free, free & (s["think"] >= s["max"])


def _free_attempts(s: State, t: Tables, choice: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Thinking rows free to choose, those at ``max``, and those whose choice attempts to end."""
    free, at_max = _free(s, t)
    attempt = free & ~at_max & t["is_attempt"][choice]
    return free, at_max, attempt


def choosing(s: State, t: Tables) -> torch.Tensor:
    """Per row: the model's choice matters at the next `advance` (a thinking row with nothing
    queued, below ``max``). Every other row emits a forced token or its own answer token, so an
    adapter may skip looking at those rows' scores."""
    free, at_max = _free(s, t)
    return free & ~at_max


def advance(
    s: State,
    t: Tables,
    choice: torch.Tensor,
    last: torch.Tensor,
    alternative: torch.Tensor | None = None,
) -> tuple[State, torch.Tensor, torch.Tensor]:
    """One decoding step of every row's state machine: the token each row must emit, if forced.

    Args:
        s, t: the state and tables.
        choice: what the model would emit per row (argmax or sample).
        last: the token before this step per row (decides whether a forced end needs ``"\\n"``).
        alternative: per row, the best (or a sampled) token that is not an attempt to end; needed
            only for the rows `decide` names as replaced (None when there are none).

    Returns:
        The new state, the token per row, and whether that token is decided here (forced tokens
        and free thinking tokens; the engine's own choice is left alone only for answer tokens).
    """
    state, token, decided, replace = decide(s, t, choice, last)
    if alternative is not None:
        token = torch.where(replace, alternative, token)
    return state, token, decided


def decide(
    s: State, t: Tables, choice: torch.Tensor, last: torch.Tensor
) -> tuple[State, torch.Tensor, torch.Tensor, torch.Tensor]:
    """`advance` without the alternative: also returns the rows whose token must be replaced by
    their best non-attempt token (an attempt right at the start of thinking or right after an
    injected "Wait", or an ignored attempt with no wait string). Neither the state nor any other
    row's token depends on that alternative, so a caller can pick it only when some row needs it."""
    phase, seq, pos, think = s["phase"], s["seq"], s["pos"], s["think"]
    queued = pos < t["seq_len"][seq]
    free, at_max, attempt = _free_attempts(s, t, choice)

    # An attempt right at the start of thinking or right after a Wait is not an attempt (s1's
    # min_tokens=1): the row takes its best non-attempt token instead.
    skip = attempt & s["fresh"]
    attempt = attempt & ~skip
    allowed = (think >= s["min"]) & (s["ignored"] >= s["num_waits"])
    ignore = attempt & ~allowed
    wait_len = t["seq_len"][SEQ_WAIT]
    has_wait = wait_len > 0
    wait = ignore & has_wait & (think + wait_len <= s["max"])
    force = at_max | (ignore & has_wait & ~wait)  # a Wait that would overflow max forces the end instead
    replace = skip | (ignore & ~has_wait)  # suppressed: the best non-attempt token instead
    ends = attempt & allowed  # natural end, or an EOS replaced by the whole end delimiter
    capped = (phase == ANSWER) & ~queued & (s["answer"] >= s["max_answer"])

    # Queue the forced sequences that start now (position 0 is emitted this step).
    forced_seq = torch.where(t["ends_newline"][last], SEQ_FORCED, SEQ_FORCED_NL)
    start_seq = torch.where(force, forced_seq, torch.where(wait, SEQ_WAIT, SEQ_END))
    starts = force | wait | ends | capped
    seq = torch.where(starts, torch.where(capped, SEQ_EOS, start_seq), seq)
    pos = torch.where(starts, 0, pos)
    queued = queued | starts

    # The token each row emits: its queued token, else its free thinking choice (a replaced row
    # is never queued, so the alternative can be put in afterwards).
    table = t["table"]
    token = torch.where(queued, table[seq, pos.clamp(max=table.shape[1] - 1)], choice)
    think = think + ((free & ~queued) | (queued & (seq == SEQ_WAIT)))

    # Advance queues; a finished queue moves its row to the next phase.
    pos = pos + queued
    done = queued & (pos >= t["seq_len"][seq])
    # The next thinking token is "fresh" right after an injected Wait, and after the forced start
    # when waits are configured; any other thinking token clears it.
    fresh = torch.where(
        done, (seq == SEQ_WAIT) | ((seq == SEQ_START) & (s["num_waits"] > 0)), s["fresh"] & ~free
    )
    state = {
        **s,
        "phase": torch.where(done, t["phase_after"][seq], phase),
        "seq": torch.where(done, NONE, seq),
        "pos": torch.where(done, 0, pos),
        "think": think,
        "ignored": s["ignored"] + ignore,
        "waits": s["waits"] + wait,
        "forced": s["forced"] | force,
        "fresh": fresh,
        "pending": (phase == ANSWER) & ~queued,  # answer tokens are sampled by the engine itself
    }
    return state, token, queued | free, replace


def _distinct_sizes():
    try:
        from torch.fx.experimental import _config
    except ImportError:  # pragma: no cover - a torch without it
        return contextlib.nullcontext()
    return _config.patch(use_duck_shape=False)


def compiled(fn):
    """``fn`` under ``torch.compile(dynamic=True)``; if compiling fails (no C++ compiler, no Triton,
    ...), a warning, and ``fn`` itself from then on. Compiling happens at the first call."""
    state = {"fn": torch.compile(fn, dynamic=True)}

    def run(*args):
        try:
            # Without grad (as engines decode: a change would recompile), and without size
            # equalities guessed from sizes that merely coincide (the batch and a table's width).
            with torch.no_grad(), _distinct_sizes():
                return state["fn"](*args)
        except Exception as err:  # torch.compile raises many error types
            if state["fn"] is fn:
                raise
            warnings.warn(f"torch.compile failed ({err!r:.200}); budget forcing runs eagerly.", stacklevel=2)
            state["fn"] = fn
            return fn(*args)

    return run


class Quiet(NamedTuple):
    """The next steps in which no row meets an event fixed in advance (see `quiet`)."""

    steps: int  #: for how many next steps only a row's own choice can change its course
    choosing: bool  #: whether the model's choice matters to any row now (no token is forced on it)
    thinking: torch.Tensor  #: rows that think freely in those steps
    answering: torch.Tensor  #: rows that answer freely in those steps
    queued: torch.Tensor | None  #: rows that emit queued (forced) tokens in those steps; None: none
    watch: torch.Tensor | None  #: ``thinking | answering``; None when that is every row
    watching: bool  #: whether any row is watched


def quiet(s: State, t: Tables, rows: torch.Tensor | None = None) -> Quiet:
    """How many next steps are free of events fixed in advance, for the rows in ``rows`` (all if None).

    Those events are the last token of a forced sequence (the row changes phase), thinking
    reaching ``max`` and the answer reaching its cap. In such a step a queued row emits its next
    forced token, ``t["table"][seq, pos]``, and any other row's course changes only if its choice
    is an attempt to end (thinking) or an EOS (answer), i.e. ``t["is_attempt"][choice]`` for a
    ``watch`` row. While none is, `coast` applies any number of steps at once and equals that many
    `advance` + `absorb` steps (each row's token being its forced one or its choice). One host sync.
    """
    phase = s["phase"]
    left = t["seq_len"][s["seq"]] - s["pos"]  # forced tokens still queued
    queued = left > 0
    thinking, answering = phase == THINK, phase == ANSWER
    room = torch.where(thinking, s["max"] - s["think"], s["max_answer"] - s["answer"])
    room = torch.where(thinking | answering, room, UNLIMITED)
    room = torch.where(queued, left - 1, room)
    if rows is not None:
        room = room.masked_fill(~rows, UNLIMITED)
        queued = queued & rows
    # A row at max or at the answer cap is forced whatever it chose; a queued one too.
    choosing = ~queued & (room > 0)
    if rows is not None:
        choosing = choosing & rows
    thinking, answering = thinking & choosing, answering & choosing
    watch = thinking | answering
    steps, *flags = torch.stack([room.min(), choosing.any(), watch.all(), watch.any(), queued.any()]).tolist()
    any_choosing, all_watched, watching, any_queued = map(bool, flags)
    return Quiet(
        steps,
        any_choosing,
        thinking,
        answering,
        queued if any_queued else None,
        None if all_watched else watch,
        watching,
    )


def coast(s: State, steps: int, q: Quiet) -> State:
    """``steps`` quiet steps of `quiet`'s window ``q`` at once: each thinking row thinks ``steps``
    more tokens (and is no longer fresh), each answering row answers ``steps`` more, each queued
    row moves ``steps`` tokens on (an injected Wait counts as thinking)."""
    if not steps:
        return s
    s = {
        **s,
        "think": s["think"] + steps * q.thinking,
        "answer": s["answer"] + steps * q.answering,
        "fresh": s["fresh"] & ~q.thinking,
    }
    if q.queued is not None:
        s["pos"] = s["pos"] + steps * q.queued
        s["think"] = s["think"] + steps * (q.queued & (s["seq"] == SEQ_WAIT))
    return s


def forced_tokens(s: State, t: Tables, q: Quiet, step: int) -> torch.Tensor:
    """The token each queued row of window ``q`` emits ``step`` steps after `quiet` (others: any id)."""
    table = t["table"]
    return table[s["seq"], (s["pos"] + step).clamp(max=table.shape[1] - 1)]


def finished(s: State) -> torch.Tensor:
    """Per row: the answer ended with EOS (its own, or the one forced at the answer cap)."""
    return s["phase"] == DONE


# ---------------------------------------------------------------------------------- statistics
@dataclass
class BudgetStats:
    """Per-row statistics of the last ``generate`` call, one entry per output row.

    Attributes:
        thinking_tokens: generated tokens strictly between the start delimiter and the end
            sequence, injected "Wait" tokens included.
        answer_tokens: tokens after the end sequence (after the forced answer prefix), EOS excluded.
        waits: how many times the ``wait`` string was injected.
        ignored: attempts to end thinking that were ignored (waits, or suppressions with ``wait=None``).
        forced_end: whether the end of thinking was forced by the ``max`` budget.
    """

    thinking_tokens: list[int]
    answer_tokens: list[int]
    waits: list[int]
    ignored: list[int]
    forced_end: list[bool]

    def as_rows(self) -> list[dict]:
        """The statistics as one dict per row (handy for JSONL logs)."""
        return [
            dict(thinking_tokens=t, answer_tokens=a, waits=w, ignored=i, forced_end=f)
            for t, a, w, i, f in zip(
                self.thinking_tokens, self.answer_tokens, self.waits, self.ignored, self.forced_end
            )
        ]


def stats(s: State) -> BudgetStats:
    """The statistics of every row of a state (one host sync)."""
    return BudgetStats(
        thinking_tokens=s["think"].tolist(),
        answer_tokens=s["answer"].tolist(),
        waits=s["waits"].tolist(),
        ignored=s["ignored"].tolist(),
        forced_end=s["forced"].tolist(),
    )
