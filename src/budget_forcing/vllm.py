"""Budget forcing in vLLM: one logits processor for both of vLLM's model runners.

``BudgetForcing`` runs the same per-row state machine as the Hugging Face processor
(`budget_forcing.core`), vectorised over vLLM's persistent batch. It implements both of vLLM's
logits-processor interfaces, so one qualified name works everywhere:

* the V1 interface (``vllm.v1.sample.logits_processor``: ``update_state(BatchUpdate)`` +
  ``apply(logits)``), used by the V1 model runner (CPU builds, and GPUs with the V1 runner);
* the V2 interface (``vllm.v1.worker.gpu.sample.logits_processor``: ``add_request`` +
  ``apply(logits, ctx)``), used by the V2 model runner that GPUs run by default.

Each request opts in through ``SamplingParams.extra_args`` (over HTTP: ``vllm_xargs``) with any of
``min``, ``max``, ``num_waits``, ``wait``, ``answer_prefix``, ``max_answer_tokens``, ``format``;
requests without them run untouched. Invalid settings fail the request (HTTP 400 on a server).

Example:
    >>> from vllm import LLM, SamplingParams  # doctest: +SKIP
    >>> llm = LLM("simplescaling/s1.1-32B", logits_processors=[BudgetForcing])  # doctest: +SKIP
    >>> params = SamplingParams(max_tokens=6000, extra_args={"max": 4000, "num_waits": 1})  # doctest: +SKIP
    >>> out = llm.generate(prompts, params)  # doctest: +SKIP

From the command line: ``vllm serve MODEL --logits-processors budget_forcing.vllm:BudgetForcing``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Any

import numpy as np
import torch

from budget_forcing import core
from budget_forcing._extras import require
from budget_forcing.formats import FORMATS, get_format
from budget_forcing.readout import read_stats, replay

require("vllm", "vllm", "Budget forcing in vLLM")

from vllm.v1.sample.logits_processor import (  # noqa: E402
    BatchUpdate,
    MoveDirectionality,
)
from vllm.v1.sample.logits_processor import LogitsProcessor as V1LogitsProcessor  # noqa: E402
from vllm.v1.worker.gpu.sample.logits_processor import LogitsContext  # noqa: E402
from vllm.v1.worker.gpu.sample.logits_processor import LogitsProcessor as V2LogitsProcessor  # noqa: E402

__all__ = ["BudgetForcing", "Settings", "settings_from_params", "request_stats", "greedy_generate"]

logger = logging.getLogger(__name__)

_SAMPLING_EPS = 1e-5  # vLLM's own threshold: a lower temperature is greedy decoding
_FORCE = 1e9  # the logit a forced token gets
_PENALTIES = (("presence_penalty", 0.0), ("frequency_penalty", 0.0), ("repetition_penalty", 1.0))


# ------------------------------------------------------------------------------------ settings
@dataclass(frozen=True)
class Settings:
    """One request's budget-forcing settings (the keys of ``SamplingParams.extra_args``).

    Same meaning as the arguments of `budget_forcing.BudgetForcing`; ``wait`` may be ``None`` or
    ``""`` (only suppress attempts to end).
    """

    min: int = 0
    max: int | None = None
    num_waits: int = 0
    wait: str | None = "Wait"
    answer_prefix: str | None = "Final Answer:"
    max_answer_tokens: int | None = None
    format: str = "auto"

    @property
    def strings(self) -> tuple:
        """What the forced token sequences depend on (requests sharing it share their tables)."""
        return (self.format, self.wait or None, self.answer_prefix or None)


_KEYS = tuple(f.name for f in fields(Settings))


def settings_from_params(params) -> Settings | None:
    """The request's settings from ``params.extra_args``, validated; None when it does not opt in.

    Raises ValueError naming the fix for a bad value (vLLM turns it into HTTP 400).
    """
    extra = params.extra_args or {}
    given = {k: extra[k] for k in _KEYS if k in extra}
    if not given:
        return None
    for key in ("min", "num_waits"):
        if key in given and (not isinstance(given[key], int) or isinstance(given[key], bool)):
            raise ValueError(f"extra_args[{key!r}] must be a non-negative int, got {given[key]!r}.")
    for key in ("max", "max_answer_tokens"):
        value = given.get(key)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool)):
            raise ValueError(f"extra_args[{key!r}] must be a non-negative int or null, got {value!r}.")
    for key in ("wait", "answer_prefix"):
        if given.get(key) is not None and not isinstance(given[key], str):
            raise ValueError(f"extra_args[{key!r}] must be a string or null, got {given[key]!r}.")
    if given.get("format", "auto") not in ("auto", *FORMATS):
        raise ValueError(
            f"extra_args['format'] must be one of {['auto', *FORMATS]}, got {given['format']!r}."
        )
    settings = Settings(**given)
    core.check_budgets(settings.min, settings.max)
    core.check_settings(settings.num_waits, settings.max_answer_tokens)
    for name, default in _PENALTIES:
        if getattr(params, name, default) != default:
            raise ValueError(
                f"{name} is not supported with budget forcing (thinking tokens are chosen before vLLM "
                f"applies penalties); drop {name} or the budget-forcing extra_args."
            )
    return settings


# ------------------------------------------------------------------------------------ the rows
@dataclass(frozen=True)
class _Group:
    """What requests sharing a format, wait string and answer prefix share: their tables."""

    fmt: Any
    tables: core.Tables
    closers: list[str]
    tokenizer: Any
    attempts: int  # how many ids are attempts to end thinking
    has_wait: bool  # whether ignored attempts inject a wait string (else they are only suppressed)

    def phase(self, prompt: Sequence[int]) -> int:
        """Where the prompt leaves thinking, read from its text (as the HF processor does)."""
        return core.prompt_phase(self.tokenizer.decode(list(prompt)), self.fmt, self.closers)


def _group(tokenizer, settings: Settings, vocab: int, flags, config_eos=None) -> _Group:
    fmt = get_format(settings.format, tokenizer)
    wait, prefix = settings.wait or None, settings.answer_prefix or None
    seqs = core.encode_sequences(tokenizer, fmt, wait, prefix)
    eos, stop_id = core.eos_ids(seqs, config_eos)
    core.check_sequences(seqs, fmt, wait, prefix, eos)
    core.check_vocab(seqs, eos, vocab)
    t = core.build_tables(seqs, vocab, *flags, flags[0].device, eos_ids=eos, stop_id=stop_id)
    closers = [tokenizer.decode([e]) for e in eos]
    return _Group(fmt, t, closers, tokenizer, len(t["attempt_ids"]), bool(seqs.wait))


def _limits(settings: Sequence[Settings]) -> dict:
    """The per-row settings `budget_forcing.readout.replay` takes."""
    return dict(
        min=[s.min for s in settings],
        max=[s.max for s in settings],
        num_waits=[s.num_waits for s in settings],
        max_answer=[s.max_answer_tokens for s in settings],
    )


_RECORDS = ("token", "choice", "deferred", "attempt_won", "last")  # what a step records per slot


def _take_in(s: core.State, t: core.Tables, r: dict, appended: torch.Tensor, last: torch.Tensor) -> dict:
    """The state after the token the engine appended since the last step (``last``, one per row).

    ``r`` is what the last step recorded (``_RECORDS``). A row left to the engine's pick chose what
    the engine picked, unless that is the token decided for it and it won on the attempts' score
    (see `_plan`): then the model attempted. A row with ``appended`` False keeps its state (a
    chunked-prefill step samples a token and throws it away). Returns the state and ``"last"``.
    """
    last = torch.where(last >= 0, last, r["token"]).clamp(0, t["is_eos"].shape[0] - 1)
    attempted = r["attempt_won"] & (last == r["token"])
    picked = torch.where(attempted, t["end_ids"][:1], last)  # every attempt ends alike
    # The state does not depend on what replaced an attempt (that is the appended token).
    new = core.decide(s, t, torch.where(r["deferred"], picked, r["choice"]), r["last"])[0]
    new = core.absorb(new, t, last)
    new = {k: torch.where(appended, v, s[k]) for k, v in new.items()}
    return {**new, "last": torch.where(appended, last, r["last"])}


def _plan(s: core.State, t: core.Tables, last: torch.Tensor, logits: torch.Tensor, on: torch.Tensor) -> dict:
    """A greedy step without a pass over the vocabulary, for the rows in ``on``.

    What an attempt to end thinking turns into (the first token of a Wait, of the forced end, of
    the end delimiter, or the best non-attempt token under s1's min_tokens=1) is known from the
    state alone, so it goes into the scores: the attempts are banned (``banned``: the attempts'
    columns to write) and that token takes the best of its own and the attempts' scores
    (``value``: each row's score for its ``token``; forced rows get `_FORCE`). The engine's argmax
    is then exactly the token the row must emit, and `_take_in` reads from the token it picked
    whether that was an attempt (``attempt_won``: the attempts' best score beat the token's own;
    argmax ties go to the lower id). ``exact``: choosing rows whose suppressed attempt counts only
    if the model's own choice is one (no wait string)."""
    # One step as if every row attempted to end: forced rows get their forced token, choosing rows
    # what their attempt turns into (``replaced``: a non-attempt instead).
    _, token, decided, replaced = core.decide(s, t, t["end_ids"][:1].expand_as(last), last)
    choosing = core.choosing(s, t) & on
    scores = logits[:, t["attempt_ids"]]
    best, which = scores.max(-1)
    own = logits.gather(1, token[:, None]).squeeze(1)
    keep = choosing & ~replaced
    won = t["is_attempt"][token] | (best > own) | ((best == own) & (t["attempt_ids"][which] < token))
    # Forced rows: a logit so far above the rest that argmax takes it and softmax gives it
    # probability 1 at any temperature (finite, so vLLM's sampler never sees inf - inf). A replaced
    # row's token is the attempt itself (banned); any other row keeps its score.
    forced = decided & ~choosing & on
    folded = torch.where(keep, torch.maximum(own, best), torch.where(choosing, float("-inf"), own))
    value = torch.where(forced, _FORCE, folded)
    return {
        "token": token,
        "choosing": choosing,
        "exact": choosing & replaced & ~s["fresh"],
        "attempt_won": keep & won,
        "value": value,
        "banned": scores.masked_fill(choosing[:, None], float("-inf")),
    }


def _greedy_step(
    state: core.State,
    slot: dict,
    rows: torch.Tensor | slice,
    t: core.Tables,
    appended: torch.Tensor,
    last: torch.Tensor,
    logits: torch.Tensor,
    placeholder: int,
) -> tuple[torch.Tensor, ...]:
    """`_take_in` then `_plan` for rows of one settings group with a wait string, all greedy: the
    common step, as one function that reads and writes the per-slot tensors itself (``rows``: each
    logits row's slot, or a slice of them), so that compiled it is a few fused kernels. Returns
    `_plan`'s ``banned``, ``value`` and ``token``."""
    s, last, on = _take_in_rows(
        state, slot, rows, appended, last, lambda s, r, appended, last: _take_in(s, t, r, appended, last)
    )
    p = _plan(s, t, last, logits, on)
    # With a wait string no suppressed attempt needs the model's own choice (``exact`` is empty).
    choice = torch.full_like(last, placeholder)
    for k, v in zip(_RECORDS[:-1], (p["token"], choice, p["choosing"], p["attempt_won"])):
        slot[k][rows] = v
    return p["banned"], p["value"], p["token"]


def _take_in_rows(state: core.State, slot: dict, rows, appended, last, take_in) -> tuple:
    """`_take_in` for the slots ``rows`` (``take_in(s, r, appended, last)``): read their state and
    records, write the new state and ``"last"`` back. Returns the new state, ``last`` and ``on``."""
    on = slot["on"][rows]
    s = take_in(
        {k: v[rows] for k, v in state.items()}, {k: slot[k][rows] for k in _RECORDS}, appended & on, last
    )
    last = s.pop("last")
    for k, v in state.items():
        v[rows] = s[k]
    slot["last"][rows] = last
    return s, last, on


class _Rows:
    """Budget-forcing state for every request slot of an engine, kept in tensors on its device.

    The state is what each slot's request is in after its last appended token. Each step forces
    what the rows must emit and records what each row chose; the state advances only when the
    engine really appended a token for a slot (a chunked-prefill step samples and throws it away).
    """

    def __init__(
        self,
        tokenizer,
        vocab_size: int,
        slots: int,
        device,
        seed: int | None,
        config_eos,
        compile: bool = False,
    ) -> None:
        self.tokenizer, self.vocab, self.slots, self.config_eos = tokenizer, vocab_size, slots, config_eos
        # The common step, compiled where the engine compiles its model.
        self._greedy_step = core.compiled(_greedy_step) if compile else _greedy_step
        self.compiled = compile
        self.device = torch.device(device)
        self.arange = torch.arange(slots, device=self.device)  # V1's rows: slots 0..n-1
        self.flags = core.vocab_flags(tokenizer, vocab_size, self.device)
        self.groups: list[_Group] = []
        self._group_of: dict[tuple, int] = {}
        self.attempt_ids = torch.zeros(0, dtype=torch.long, device=self.device)  # of any group
        self.placeholder = 0  # an id no group takes for an attempt to end
        self.state: core.State | None = None
        zeros = torch.zeros(slots, dtype=torch.long, device=self.device)
        self.slot = {  # per-slot engine facts, moved along with the state
            "on": torch.zeros(slots, dtype=torch.bool, device=self.device),
            "sampling": torch.zeros(slots, dtype=torch.bool, device=self.device),
            "group": zeros.clone(),
            # What the last step recorded (see `_take_in`): the slot's token then (prompt or output),
            # the token decided, the model's choice, whether that choice is the engine's pick, and
            # whether emitting the decided token there means the model attempted to end.
            "last": zeros.clone(),
            "token": zeros.clone(),
            "choice": zeros.clone(),
            "deferred": torch.zeros(slots, dtype=torch.bool, device=self.device),
            "attempt_won": torch.zeros(slots, dtype=torch.bool, device=self.device),
            "temperature": torch.ones(slots, device=self.device),
            "top_k": torch.full((slots,), vocab_size, dtype=torch.long, device=self.device),
            "top_p": torch.ones(slots, device=self.device),
            "min_p": torch.zeros(slots, device=self.device),
        }
        # Host mirrors for decisions that must not wait for the device.
        self.host = {
            "on": np.zeros(slots, bool),
            "sampling": np.zeros(slots, bool),
            "group": np.zeros(slots, int),
            "truncate": np.zeros(slots, bool),  # min-p, top-k or top-p to apply
        }
        self.generator = torch.Generator(self.device)
        self.generator.manual_seed(0 if seed is None else seed)

    # -------------------------------------------------------------------------- batch changes
    def tables(self, settings: Settings) -> int:
        """The index of the group (forced sequences + tables) for these settings' strings."""
        key = settings.strings
        if key not in self._group_of:
            self._group_of[key] = len(self.groups)
            self.groups.append(_group(self.tokenizer, settings, self.vocab, self.flags, self.config_eos))
            attempt = torch.stack([g.tables["is_attempt"] for g in self.groups]).any(0)
            self.attempt_ids = attempt.nonzero().squeeze(1)
            self.placeholder = int((~attempt).int().argmax())
        return self._group_of[key]

    def add(self, requests: Sequence[tuple]) -> None:
        """Start (or resume, with the output generated before a preemption) requests, each given as
        ``(slot, settings, params, prompt, output)``; a request whose settings are None runs untouched."""
        by_group: dict[int, list[tuple]] = {}
        for slot, settings, params, prompt, output in requests:
            self.remove(slot)
            if settings is None:
                continue
            try:
                group = self.tables(settings)
            except ValueError as err:  # e.g. a wait string this tokenizer cannot encode
                logger.error("Budget forcing is off for a request: %s", err)
                continue
            output = [i for i in output if i >= 0]
            by_group.setdefault(group, []).append((slot, settings, params, list(prompt), output))
        for group, items in by_group.items():
            self._start(group, items)

    def _start(self, group: int, items: list[tuple]) -> None:
        """Write the state of requests of one group into their slots, all at once."""
        g = self.groups[group]
        slots, settings, params, prompts, outputs = (list(x) for x in zip(*items))
        limits, phase = _limits(settings), [g.phase(p) for p in prompts]
        if any(outputs):  # resumed: replay what they generated
            rows = replay(g.tables, prompts, outputs, **limits, phase=phase)
        else:  # new: with `phase` given, the prompt ids themselves are not read
            rows = core.init_state(
                g.tables, torch.zeros(len(items), 1, dtype=torch.long), **limits, phase=phase
            )
        if self.state is None:
            self.state = {k: v.new_zeros((self.slots,)) for k, v in rows.items()}
        index = torch.tensor(slots, device=self.device)
        for k, v in rows.items():
            self.state[k][index] = v
        last = [(p + o)[-1] if p or o else 0 for p, o in zip(prompts, outputs)]
        temperature = [float(p.temperature) for p in params]
        sampling = [t >= _SAMPLING_EPS for t in temperature]
        top_k = [min(p.top_k, self.vocab) if p.top_k and p.top_k > 0 else self.vocab for p in params]
        values = {
            "on": [True] * len(items),
            "sampling": sampling,
            "group": [group] * len(items),
            "last": last,
            "token": last,
            "choice": last,
            "deferred": [False] * len(items),
            "attempt_won": [False] * len(items),
            "temperature": [t if s else 1.0 for t, s in zip(temperature, sampling)],
            "top_k": top_k,
            "top_p": [float(p.top_p) for p in params],
            "min_p": [float(p.min_p) for p in params],
        }
        for k, v in values.items():
            self.slot[k][index] = torch.tensor(v, dtype=self.slot[k].dtype, device=self.device)
        self.host["on"][slots], self.host["sampling"][slots], self.host["group"][slots] = (
            True,
            sampling,
            group,
        )
        self.host["truncate"][slots] = [
            p.min_p > 0 or k < self.vocab or p.top_p < 1 for p, k in zip(params, top_k)
        ]

    def remove(self, slot: int) -> None:
        self.slot["on"][slot] = False
        self.host["on"][slot] = False

    def move(self, a: int, b: int, swap: bool) -> None:
        """Move slot ``a`` to ``b`` (``swap``: exchange them)."""
        for table in (self.state, self.slot, self.host):
            if table is None:
                continue
            for v in table.values():
                if swap:
                    v[[a, b]] = v[[b, a]]
                else:
                    v[b] = v[a]
        if not swap:
            self.remove(a)

    # ------------------------------------------------------------------------------- each step
    def step(
        self, logits: torch.Tensor, slots, slots_np: np.ndarray, appended: torch.Tensor, last: torch.Tensor
    ) -> torch.Tensor:
        """One decoding step (row i is slot ``slots[i]``; ``slots`` is an index tensor, or a slice of
        the persistent batch): rows whose request got ``last`` appended since the last step take it
        in (see `_take_in`), then every row's token is forced into ``logits`` and its choice recorded."""
        on_np = self.host["on"][slots_np]
        if self.state is None or not on_np.any():
            return logits
        groups = np.unique(self.host["group"][slots_np][on_np])
        sampling = (self.host["sampling"][slots_np] & on_np).any()
        if len(groups) == 1 and self.groups[int(groups[0])].has_wait and not sampling:
            tables = self.groups[int(groups[0])].tables
            # Eager, a slice of the persistent batch is read and written through views (cheaper);
            # compiled, an index tensor keeps one kernel for every batch size.
            rows = self.arange[slots] if self.compiled and isinstance(slots, slice) else slots
            record = {k: self.slot[k] for k in ("on", *_RECORDS)}
            banned, value, token = self._greedy_step(
                self.state, record, rows, tables, appended, last, logits, self.placeholder
            )
            return self._write(logits, tables, banned, value, token)
        s, last, on = _take_in_rows(
            self.state,
            self.slot,
            slots,
            appended,
            last,
            lambda s, r, appended, last: self._by_group(
                groups, slots, lambda t: _take_in(s, t, r, appended, last)
            ),
        )
        if sampling:
            choosing = self._by_group(groups, slots, lambda t: {"c": core.choosing(s, t)})["c"]
            if bool((choosing & on & self.slot["sampling"][slots]).any()):
                return self._sampled(logits, s, on, last, slots, slots_np, groups)
        return self._greedy(logits, s, on, last, slots, groups)

    @staticmethod
    def _write(logits, tables, banned, value, token) -> torch.Tensor:
        """Ban the attempts in choosing rows, then write each row's score for its token (`_plan`)."""
        logits.index_copy_(1, tables["attempt_ids"], banned)
        return logits.scatter_(1, token[:, None], value[:, None])

    def _greedy(self, logits, s, on, last, slots, groups) -> torch.Tensor:
        """Greedy rows, without a pass over the vocabulary (see `_plan`), one settings group at a time.

        Only suppression without a wait string (the model's own choice decides ``ignored``) needs
        the choosing rows' argmax, found with one max pass over their scores."""
        group = self.slot["group"][slots] if len(groups) > 1 else None
        records: dict | None = None
        for g in groups:
            mine = on if group is None else on & (group == int(g))
            tables = self.groups[int(g)].tables
            p = _plan(s, tables, last, logits, mine)
            choice = torch.full_like(last, self.placeholder)  # a non-attempt: "the model does not end"
            if not self.groups[int(g)].has_wait:
                rows = self._maybe_attempt(logits, p["exact"]).nonzero().squeeze(1)
                if len(rows):
                    choice[rows] = logits.index_select(0, rows).argmax(-1)
            p["choice"], p["deferred"] = choice, p["choosing"] & ~p["exact"]
            self._write(logits, tables, p["banned"], p["value"], p["token"])
            p = {k: p[k] for k in _RECORDS[:-1]}
            records = p if records is None else {k: torch.where(mine, p[k], v) for k, v in records.items()}
        for k, v in records.items():
            self.slot[k][slots] = v
        return logits

    def _maybe_attempt(self, logits: torch.Tensor, choosing: torch.Tensor) -> torch.Tensor:
        """Choosing rows whose best score is an attempt's (ties included): a max, no argmax."""
        count = int(choosing.sum())
        if count == 0:
            return choosing
        if 2 * count >= logits.shape[0]:
            return choosing & (logits[:, self.attempt_ids].amax(-1) >= logits.amax(-1))
        rows = choosing.nonzero().squeeze(1)  # few rows: read only theirs
        scores = logits.index_select(0, rows)
        maybe = scores[:, self.attempt_ids].amax(-1) >= scores.amax(-1)
        return torch.zeros_like(choosing).index_put_((rows,), maybe)

    def _sampled(self, logits, s, on, last, slots, slots_np, groups) -> torch.Tensor:
        """Batches with sampled thinking rows: each row's best few candidates in one pass over a
        ranking (see `_ranking`): the first is the model's choice, the first non-attempt among them
        what replaces a forbidden attempt. Every row's token is decided and forced here."""
        k = max(g.attempts for g in self.groups) + 1
        candidates = self._ranking(logits, slots, slots_np, True).topk(k, -1).indices
        choice = candidates[:, 0]

        def decide(t):
            _, token, decided, replace = core.decide(s, t, choice, last)
            if bool(replace.any()):
                allowed = ~t["is_attempt"][candidates]
                alternative = candidates.gather(1, allowed.int().argmax(-1, keepdim=True)).squeeze(1)
                token = torch.where(replace, alternative, token)
            return {"token": token, "decided": decided}

        o = self._by_group(groups, slots, decide)
        token, forced = o["token"], o["decided"] & on
        no = torch.zeros_like(forced)
        for key, value in zip(_RECORDS[:-1], (token, choice, no, no)):
            self.slot[key][slots] = value
        kept = logits.gather(1, token[:, None])
        return logits.scatter_(1, token[:, None], torch.where(forced[:, None], _FORCE, kept))

    def _by_group(self, groups: np.ndarray, slots, fn) -> dict:
        """``fn(tables)`` for each settings group in ``groups`` (those among ``slots``), merged row by row."""
        if len(groups) <= 1:
            return fn(self.groups[int(groups[0]) if len(groups) else 0].tables)
        group = self.slot["group"][slots]
        merged = None
        for g in groups:
            out = fn(self.groups[int(g)].tables)
            if merged is None:
                merged = out
            else:
                mine = group == int(g)
                merged = {k: torch.where(mine, out[k], merged[k]) for k in merged}
        return merged

    def _ranking(
        self, logits: torch.Tensor, slots: torch.Tensor, slots_np: np.ndarray, sampling: bool
    ) -> torch.Tensor:
        """Per row, scores whose order is the model's preference: the logits (greedy rows), or for
        sampled rows an exponential race over vLLM's final distribution, whose winner is a draw from
        it and whose best non-attempt is a draw from it without the attempts."""
        if not sampling:
            return logits
        # The distribution vLLM's sampler draws from: temperature, min_p, top-k, top-p.
        x = logits.float() / self.slot["temperature"][slots, None]
        if self.host["truncate"][slots_np].any():
            probs = torch.softmax(x, -1)
            x = x.masked_fill(
                probs < self.slot["min_p"][slots, None] * probs.amax(-1, keepdim=True), float("-inf")
            )
            sorted_x, order = x.sort(-1, descending=True)
            rank = torch.arange(x.shape[-1], device=x.device)
            drop = rank >= self.slot["top_k"][slots, None]
            sorted_p = torch.softmax(sorted_x, -1)
            drop |= (sorted_p.cumsum(-1) - sorted_p) >= self.slot["top_p"][slots, None]  # keeps the top token
            x = x.scatter(1, order, sorted_x.masked_fill(drop, float("-inf")))
        noise = torch.empty_like(x).exponential_(generator=self.generator)
        race = torch.softmax(x, -1) / noise
        return torch.where(self.slot["sampling"][slots, None], race, logits)


def _config_eos(model: str, revision: str | None = None) -> list[int] | None:
    """The model's generation-config EOS ids (vLLM stops on them too), if it has one."""
    from transformers import GenerationConfig

    try:
        return GenerationConfig.from_pretrained(model, revision=revision).eos_token_id
    except (OSError, ValueError):
        return None


def _compiles(vllm_config) -> bool:
    """Whether the engine compiles its model (not ``enforce_eager``); the per-step state update is
    compiled then too. ``BUDGET_FORCING_COMPILE=0`` or ``1`` overrides."""
    override = os.environ.get("BUDGET_FORCING_COMPILE")
    if override is not None:
        return override not in ("", "0")
    mode = getattr(getattr(vllm_config, "compilation_config", None), "mode", None)
    return mode is not None and int(mode) != 0  # CompilationMode.NONE


def _tokenizer(vllm_config):
    from transformers import AutoTokenizer

    mc = vllm_config.model_config
    return AutoTokenizer.from_pretrained(
        mc.tokenizer, revision=mc.tokenizer_revision, trust_remote_code=mc.trust_remote_code
    )


# --------------------------------------------------------------------------------- the processor
class BudgetForcing(V1LogitsProcessor, V2LogitsProcessor):
    """Budget forcing as a vLLM logits processor (V1 and V2 model runners).

    Pass the class itself: ``LLM(model, logits_processors=[BudgetForcing])`` or
    ``vllm serve MODEL --logits-processors budget_forcing.vllm:BudgetForcing``; each request opts
    in with ``SamplingParams(extra_args={"max": 4000, "num_waits": 1, ...})`` (see `Settings`).
    Delimiters, the wait string and the answer prefix are encoded once per distinct setting from
    the model's tokenizer (the engine config names it). Greedy decoding and sampling (temperature,
    top-k, top-p, min-p; the processor draws thinking tokens itself, from its own generator seeded
    with the engine's seed) both work; penalties and speculative decoding are rejected.

    Example:
        >>> from vllm import LLM, SamplingParams  # doctest: +SKIP
        >>> llm = LLM("Qwen/Qwen3-8B", logits_processors=[BudgetForcing])  # doctest: +SKIP
        >>> llm.generate(["..."], SamplingParams(max_tokens=2048, extra_args={"max": 1024}))  # doctest: +SKIP
    """

    def __init__(self, vllm_config, *args) -> None:
        if getattr(vllm_config, "speculative_config", None):
            raise ValueError(
                "Budget forcing does not support speculative decoding (a draft token could skip a forced "
                "token); remove --speculative-config."
            )
        if len(args) == 2:  # V1: (device, is_pin_memory)
            device, self._req_states = args[0], None
            slots = vllm_config.scheduler_config.max_num_seqs
            vocab = vllm_config.model_config.get_vocab_size()
            # Each step's (appended, last token) per row go to the device from here: pinned memory
            # copies without making the host wait for the model's forward pass to finish.
            self._staging = torch.zeros((2, slots), dtype=torch.long, pin_memory=bool(args[1]))
        else:  # V2: (req_states)
            (self._req_states,) = args
            device, slots, vocab = (
                self._req_states.device,
                self._req_states.max_num_reqs,
                self._req_states.vocab_size,
            )
            self._seen = torch.zeros(slots, dtype=torch.long, device=device)
            self._pending: list[tuple[int, Settings, Any]] = []
        tokenizer = _tokenizer(vllm_config)
        self._rows = _Rows(
            tokenizer,
            vocab,
            slots,
            device,
            vllm_config.model_config.seed,
            _config_eos(vllm_config.model_config.model, vllm_config.model_config.revision),
            compile=_compiles(vllm_config),
        )
        self._outputs: list[list[int] | None] = [None] * slots  # V1: each slot's live output list
        self._lengths = np.zeros(slots, dtype=np.int64)  # V1: output length at the last step

    @classmethod
    def validate_params(cls, sampling_params) -> None:
        settings_from_params(sampling_params)

    def is_argmax_invariant(self) -> bool:
        return False

    # ---------------------------------------------------------------------------- V1 interface
    def update_state(self, batch_update: BatchUpdate | None) -> None:
        if batch_update is None:
            return
        rows = self._rows
        for slot in batch_update.removed:
            rows.remove(slot)
            self._outputs[slot] = None
        added = [
            (slot, settings_from_params(params), params, prompt or [], output)
            for slot, params, prompt, output in batch_update.added
        ]
        rows.add(added)
        for slot, _, _, _, output in added:
            self._outputs[slot] = output if rows.host["on"][slot] else None
            self._lengths[slot] = len(output)
        for a, b, direction in batch_update.moved:
            swap = direction == MoveDirectionality.SWAP
            rows.move(a, b, swap)
            if swap:
                self._outputs[a], self._outputs[b] = self._outputs[b], self._outputs[a]
                self._lengths[[a, b]] = self._lengths[[b, a]]
            else:
                self._outputs[b], self._lengths[b], self._outputs[a] = (
                    self._outputs[a],
                    self._lengths[a],
                    None,
                )

    def _apply_v1(self, logits: torch.Tensor) -> torch.Tensor:
        n = logits.shape[0]
        rows = slice(0, n)  # V1: row i of the persistent batch is slot i
        if not self._rows.host["on"][rows].any():
            return logits
        # Which requests got a token since the last step (chunked prefill samples without keeping).
        outs = self._outputs[:n]
        lengths = np.array([len(o) if o is not None else 0 for o in outs], dtype=np.int64)
        staged = self._staging[:, :n]
        appended, last = staged.numpy()  # views: written in place
        np.greater(lengths, self._lengths[:n], out=appended)
        last[:] = [o[-1] if g else -1 for o, g in zip(outs, appended)]
        self._lengths[:n] = lengths
        # Refilling the buffer next step is safe: the engine waits for each step's sampled tokens.
        staged = staged.to(logits.device, non_blocking=True)
        return self._rows.step(logits, rows, rows, staged[0].bool(), staged[1])

    # ---------------------------------------------------------------------------- V2 interface
    def add_request(self, req_idx: int, sampling_params) -> bool:
        self._rows.remove(req_idx)
        settings = settings_from_params(sampling_params)
        if settings is None:
            return False
        self._pending.append((req_idx, settings, sampling_params))
        return True

    def apply_staged_writes(self) -> None:
        # The model runner has flushed the request's tokens to the device: read its prompt (and
        # what it generated before a preemption) once.
        rs = self._req_states
        added = []
        for slot, settings, params in self._pending:
            prompt_len, prefill_len = int(rs.prompt_len.np[slot]), int(rs.prefill_len.np[slot])
            ids = rs.all_token_ids.gpu[slot, :prefill_len].tolist()
            added.append((slot, settings, params, ids[:prompt_len], ids[prompt_len:]))
            self._seen[slot] = prefill_len
        self._rows.add(added)
        self._pending.clear()

    def _apply_v2(self, logits: torch.Tensor, ctx: LogitsContext) -> torch.Tensor:
        if logits.shape[0] != ctx.idx_mapping.shape[0]:
            raise ValueError(
                "Budget forcing does not support speculative decoding (several rows per request)."
            )
        slots, slots_np = ctx.expanded_idx_mapping.long(), np.asarray(ctx.idx_mapping_np)
        if not self._rows.host["on"][slots_np].any():
            return logits
        rs = self._req_states
        total = rs.total_len.gpu[slots].long()
        appended = total > self._seen[slots]
        last = rs.all_token_ids.gpu[slots, (total - 1).clamp(min=0)].long()
        self._seen[slots] = total
        return self._rows.step(logits, slots, slots_np, appended, last)

    def apply(self, logits: torch.Tensor, ctx: LogitsContext | None = None) -> torch.Tensor:
        return self._apply_v1(logits) if ctx is None else self._apply_v2(logits, ctx)


# ----------------------------------------------------------------------------------- statistics
def request_stats(
    tokenizer, outputs, settings: Settings | Sequence[Settings], config_eos=None
) -> core.BudgetStats:
    """Per-row statistics of vLLM ``RequestOutput``s (one row per completion), read off their ids.

    ``settings``: what the requests ran with (one for all, or one per request); ``config_eos``: the
    model's generation-config EOS ids, if any (part of the one EOS definition, as in the engine).
    """
    per_request = [settings] * len(outputs) if isinstance(settings, Settings) else list(settings)
    rows = [(o.prompt_token_ids, c.token_ids, s) for o, s in zip(outputs, per_request) for c in o.outputs]
    # The model's scores may be wider than the tokenizer (padded embeddings): cover every id seen.
    vocab = max([len(tokenizer)] + [max(ids) + 1 for p, g, _ in rows for ids in (p, g) if len(ids)])
    flags = core.vocab_flags(tokenizer, vocab)
    result = core.BudgetStats(
        [0] * len(rows), [0] * len(rows), [0] * len(rows), [0] * len(rows), [False] * len(rows)
    )
    for key in dict.fromkeys(s.strings for _, _, s in rows):
        where = [i for i, (_, _, s) in enumerate(rows) if s.strings == key]
        g = _group(tokenizer, rows[where[0]][2], vocab, flags, config_eos)
        prompts = [list(rows[i][0]) for i in where]
        got = read_stats(
            g.tables,
            prompts,
            [list(rows[i][1]) for i in where],
            **_limits([rows[i][2] for i in where]),
            phase=[g.phase(p) for p in prompts],
        )
        for name in ("thinking_tokens", "answer_tokens", "waits", "ignored", "forced_end"):
            for i, v in zip(where, getattr(got, name)):
                getattr(result, name)[i] = v
    return result


# --------------------------------------------------------------------------- s1's loop on vLLM
def greedy_generate(llm, **sampling):
    """A greedy `budget_forcing.reference.GenerateFn` on a vLLM ``LLM``.

    It is what `budget_forcing.reference` drives to run s1's multi-call procedure on vLLM: per
    prompt, the generated ids without the stop id, and the stop id that ended the call (None: out
    of length). ``sampling`` goes to every request's ``SamplingParams`` (e.g. ``logit_bias``, or
    ``extra_args`` for other logits processors).
    """
    from vllm import SamplingParams, TokensPrompt

    def generate(prompts: list[list[int]], max_tokens: int, stop_token_ids: list[int], min_tokens: int = 0):
        params = SamplingParams(
            temperature=0.0,
            max_tokens=max_tokens,
            min_tokens=min_tokens,
            stop_token_ids=list(stop_token_ids),
            ignore_eos=True,  # stop on exactly the given ids
            detokenize=False,
            **sampling,
        )
        outs = llm.generate([TokensPrompt(prompt_token_ids=list(p)) for p in prompts], params, use_tqdm=False)
        rows = []
        for out in outs:
            ids = list(out.outputs[0].token_ids)
            stop = (
                ids[-1]
                if ids and ids[-1] in stop_token_ids and out.outputs[0].finish_reason == "stop"
                else None
            )
            rows.append((ids[:-1] if stop is not None else ids, stop))
        return rows

    return generate
