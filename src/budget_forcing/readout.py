"""Per-row budget-forcing state read back from token ids, for any engine.

An engine that cannot hand its processor's state back to the caller (vLLM runs the processor in
its engine process; a server returns only tokens) still knows each row's prompt and generated ids.
`replay` runs those ids through the same state machine (`budget_forcing.core`) that produced
them, so the statistics follow the same rules, not a second definition. The one thing ids cannot
tell apart is an injected "Wait" from a "Wait" the model wrote itself at a step where an attempt
to end would have been ignored: such a "Wait" is counted as injected.

Example:
    >>> import torch
    >>> from budget_forcing import core
    >>> from budget_forcing.readout import read_stats
    >>> seqs = core.Sequences(start=[10], end=[11], newline=[12], wait=[13], tail=[14], eos=[2])
    >>> flags = torch.zeros(16, dtype=torch.bool)
    >>> t = core.build_tables(seqs, 16, ends_newline=flags, is_space=flags)
    >>> # prompt [5]; generated: start, 2 thinking tokens, forced "\\n" + end + prefix, answer, EOS
    >>> read_stats(t, [[5]], [[10, 7, 8, 12, 11, 14, 9, 2]], max=2).as_rows()[0]
    {'thinking_tokens': 2, 'answer_tokens': 1, 'waits': 0, 'ignored': 0, 'forced_end': True}
"""

from __future__ import annotations

import builtins
from collections.abc import Sequence

import torch

from budget_forcing import core

__all__ = ["replay", "read_stats"]


def replay(
    t: core.Tables,
    prompts: Sequence[Sequence[int]],
    generated: Sequence[Sequence[int]],
    min: int | Sequence[int] = 0,
    max: int | Sequence[int | None] | None = None,
    num_waits: int | Sequence[int] = 0,
    max_answer: int | Sequence[int | None] | None = None,
    phase: Sequence[int] | None = None,
) -> core.State:
    """The state each row is in after ``generated`` followed its prompt (vectorised over rows).

    At every step the machine is fed the token the row actually emitted as the model's choice,
    except where the row could not end thinking yet and its next token is what an ignored attempt
    forces (the wait string, or the forced end): there the attempt is what happened. ``phase``
    (one `budget_forcing.core` phase per row, e.g. from `budget_forcing.core.prompt_phase`)
    overrides where each prompt leaves thinking.
    """
    device = t["table"].device
    rows = len(prompts)
    states = [
        core.init_state(
            t,
            list(p),
            *_settings(i, min, max, num_waits, max_answer),
            phase=None if phase is None else [phase[i]],
        )
        for i, p in enumerate(prompts)
    ]
    s = {k: torch.cat([st[k] for st in states]) for k in states[0]}
    steps = builtins.max((len(g) for g in generated), default=0)
    # Right-pad the generated ids; a row stops taking part once its ids run out.
    ids = torch.full((rows, steps), -1, dtype=torch.long, device=device)
    for i, g in enumerate(generated):
        ids[i, : len(g)] = torch.as_tensor(list(g), dtype=torch.long, device=device)
    last = torch.as_tensor([p[-1] if len(p) else 0 for p in prompts], dtype=torch.long, device=device)
    has_wait = bool(t["seq_len"][core.SEQ_WAIT] > 0)
    attempt = torch.full((rows,), int(t["end_ids"][0]), dtype=torch.long, device=device)
    for step in range(steps):
        actual = ids[:, step]
        live = actual >= 0
        token = actual.clamp(min=0)
        # Where the machine replaces an attempt (s1's min_tokens=1, suppression), the row's actual
        # token is what replaced it.
        alternative = token
        as_chosen, _, _ = core.advance(s, t, token, last, alternative)
        as_attempt, emitted_attempt, _ = core.advance(s, t, attempt, last, alternative)
        # Treat the step as an ignored attempt where the row could not end yet and the ids show
        # what an ignored attempt emits.
        could_not_end = (s["think"] < s["min"]) | (s["ignored"] < s["num_waits"])
        took_attempt = has_wait & could_not_end & (emitted_attempt == token)
        new = {k: torch.where(took_attempt, as_attempt[k], v) for k, v in as_chosen.items()}
        new = core.absorb(new, t, token)
        s = {k: torch.where(live, new[k], s[k]) for k in s}
        last = torch.where(live, token, last)
    return s


def read_stats(
    t: core.Tables, prompts: Sequence[Sequence[int]], generated: Sequence[Sequence[int]], **settings
) -> core.BudgetStats:
    """Per-row statistics (thinking tokens, answer tokens, waits, forced end) from prompt and output ids.

    ``settings`` are `replay`'s: what the rows ran with (an int for all rows or one value per row).
    """
    return core.stats(replay(t, prompts, generated, **settings))


def _settings(i: int, *values):
    """Row ``i``'s value of each setting (an int/None for all rows, or one per row)."""
    return [v if v is None or isinstance(v, int) else v[i] for v in values]
