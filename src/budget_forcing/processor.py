"""The budget forcing logits processor: s1's test-time scaling in one ``generate()`` call.

Every row of the batch runs a small state machine whose state lives in tensors on the model's
device and is updated with vectorised ops each step::

    START --(start delimiter forced)--> THINK --(end sequence)--> ANSWER --(EOS)--> DONE

* START: the prompt did not leave thinking open, so the start delimiter is forced first.
* THINK: every generated token (injected "Wait" tokens included) counts against ``max``. At
  ``max`` the end sequence is forced: ``"\\n"`` (unless the last token ends in one), the end
  delimiter, then ``answer_sep + answer_prefix``. While thinking is below ``min`` or fewer than
  ``num_waits`` attempts were ignored, an attempt to end (the first token of the end delimiter or
  an EOS) is replaced by the ``wait`` tokens. An allowed attempt completes the end delimiter; an
  allowed EOS is replaced by the whole end delimiter, so every row gets an answer.
* ANSWER: runs until EOS or ``max_answer_tokens`` (then EOS is forced).

Forced tokens are queued per row as (sequence id, position) into a small table of token
sequences, so a multi-token "Wait" or delimiter is emitted atomically without Python loops. The
state machine itself lives in `budget_forcing.core`, shared with the other engine adapters; this
module adapts it to ``transformers``' ``generate``.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, NamedTuple

import torch
from transformers import (
    EosTokenCriteria,
    GenerationConfig,
    LogitsProcessor,
    LogitsProcessorList,
    MaxLengthCriteria,
    PreTrainedTokenizerBase,
    StoppingCriteria,
    StoppingCriteriaList,
)

from budget_forcing import core
from budget_forcing.core import Budget, BudgetStats
from budget_forcing.formats import ThinkingFormat, get_format

if TYPE_CHECKING:
    from budget_forcing.stopping import BudgetForcingStoppingCriteria

__all__ = ["BudgetForcing", "BudgetForcingLogitsProcessor", "BudgetStats", "end_overhead"]


def end_overhead(
    tokenizer: PreTrainedTokenizerBase,
    format: str | ThinkingFormat = "auto",
    answer_prefix: str | None = "Final Answer:",
) -> int:
    """Most tokens budget forcing adds outside thinking: the start delimiter plus a forced end
    (``"\n"``, end delimiter, answer separator and prefix). Size ``max_new_tokens`` with it.

    Example:
        >>> from budget_forcing.testing import tiny_tokenizer
        >>> end_overhead(tiny_tokenizer(), format="think", answer_prefix=None)  # start, newline, end
        3
    """
    fmt = get_format(format, tokenizer)
    eos = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else 0  # EOS plays no part here
    return core.encode_sequences(tokenizer, fmt, None, answer_prefix, eos).end_overhead


class BudgetForcingLogitsProcessor(LogitsProcessor):
    """Budget forcing as a `transformers` logits processor: cap and extend thinking per row.

    Args:
        tokenizer: the model's tokenizer (encodes delimiters and the wait string once). Optional:
            when omitted it is resolved on the first step of ``generate``, from
            ``generate(..., tokenizer=tok)`` or else from the model's ``name_or_path``.
        min: minimum thinking tokens, an int or one int per prompt. Below it, attempts to end
            thinking are replaced by ``wait``.
        max: maximum thinking tokens, an int, one per prompt, or None for no cap. At the cap the
            end sequence is forced.
        format: ``"auto"``, ``"s1"``, ``"think"`` or a `budget_forcing.ThinkingFormat`.
        wait: string injected to extend thinking (encoded on its own). None only suppresses the end.
        num_waits: ignore the model's first N attempts to end thinking (s1's ``thinking_n_ignore``).
            As in s1 (vLLM ``min_tokens=1``), the first thinking token and the first token after an
            injected "Wait" are never an attempt: the best other token is taken.
        answer_prefix: forced after a budget-forced end, so the model answers with its best guess.
        max_answer_tokens: cap on answer tokens (EOS is forced at the cap); None for no cap.
        eos_token_id: ids that end the answer (and, while thinking, attempt to end it); defaults to
            the tokenizer's EOS and the format's ``answer_end``. The ids of the calling
            ``generate``'s generation config are always added (Qwen2.5 ships two).
        compile: fuse the per-step state update with ``torch.compile`` (a few kernels instead of
            ~60 small ones per step; worth it on GPUs for long generations, costs a one-off compile
            of some seconds). A compile failure falls back to eager with a warning.

    Works with greedy decoding and multinomial sampling (temperature, top-k, top-p, ...), ragged
    left-padded batches and ``num_return_sequences``. With greedy decoding an attempt to end is
    the argmax; with sampling the processor draws the token itself from the final distribution
    (after the sampling warpers that ``generate`` applies) and forces it, so "the sampled token
    was an attempt" means exactly what it means in s1's multi-call procedure. Forced tokens win
    over any other processor in the list; scores are never modified in place.

    Example:
        >>> from budget_forcing.testing import tiny_model, tiny_tokenizer
        >>> tok = tiny_tokenizer(); model = tiny_model(tok)
        >>> inputs = tok(["What is 2 + 2?"], return_tensors="pt")
        >>> bf = BudgetForcing(min=4, max=16, format="think")  # the tokenizer is found on the first step
        >>> out = model.generate(**inputs, logits_processor=[bf], max_new_tokens=32, tokenizer=tok)
        >>> 4 <= bf.stats.thinking_tokens[0] <= 16
        True
    """

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase | None = None,
        min: Budget = 0,
        max: Budget = None,
        format: str | ThinkingFormat = "auto",
        wait: str | None = "Wait",
        num_waits: int = 0,
        answer_prefix: str | None = "Final Answer:",
        max_answer_tokens: int | None = None,
        eos_token_id: int | Sequence[int] | None = None,
        compile: bool = False,
    ) -> None:
        min, max = core.budget_arg(min, "min"), core.budget_arg(max, "max")
        core.check_budgets(min, max)
        num_waits = core.int_arg(num_waits, "num_waits")
        max_answer_tokens = core.int_arg(max_answer_tokens, "max_answer_tokens", optional=True)
        core.check_settings(num_waits, max_answer_tokens)
        eos_token_id = core.eos_arg(eos_token_id)
        for name, value in (("wait", wait), ("answer_prefix", answer_prefix)):
            if value is not None and not isinstance(value, str):
                raise TypeError(f"`{name}` must be a string or None, got {type(value).__name__}.")
        if not isinstance(format, (str, ThinkingFormat)):
            raise TypeError(f"`format` must be 'auto', 's1', 'think' or a ThinkingFormat, got {format!r}.")
        if isinstance(format, str) and format != "auto":
            get_format(format)  # unknown names fail here, before any generate call

        self.min, self.max, self.num_waits, self.max_answer_tokens = min, max, num_waits, max_answer_tokens
        self.wait, self.answer_prefix, self.compile = wait, answer_prefix, compile
        self._format_arg, self._eos_arg = format, eos_token_id
        self.tokenizer: PreTrainedTokenizerBase | None = None
        self._given_tokenizer = tokenizer is not None
        self._resolved_from = None  # what the tokenizer was resolved from (a model's name_or_path)
        self._owner = None  # the generation config of the generate call the state belongs to
        self._bound: _Bound | None = None  # this processor's entry in that call's processor list
        self._state: core.State | None = None
        self._rows = self._length = -1
        self._compiled: tuple | None = None
        self._table_cache: tuple | None = None  # (key, tables) of the last call
        self._quiet = self._lazy = 0  # steps left in the current quiet window, steps not applied yet
        if tokenizer is not None:
            self._use_tokenizer(tokenizer)

    def _use_tokenizer(self, tokenizer: PreTrainedTokenizerBase) -> None:
        """Encode and validate everything that needs the tokenizer (once per tokenizer)."""
        fmt = get_format(self._format_arg, tokenizer)
        seqs = core.encode_sequences(tokenizer, fmt, self.wait, self.answer_prefix, self._eos_arg)
        core.check_sequences(seqs, fmt, self.wait, self.answer_prefix)
        core.check_wait_fits(self.min, self.max, len(seqs.wait))
        self.tokenizer, self.format, self._seqs = tokenizer, fmt, seqs

    # ----------------------------------------------------------------------------------- public API
    @property
    def end_overhead(self) -> int:
        """Most forced tokens a row can spend outside thinking: the start delimiter and a forced end."""
        return self._resolved().end_overhead

    @property
    def wait_tokens(self) -> int:
        """Length of the wait string in tokens (``max - min`` must be at least this minus one)."""
        return len(self._resolved().wait)

    def _resolved(self) -> core.Sequences:
        if self.tokenizer is None:
            raise RuntimeError(
                "The tokenizer is not known yet (it is resolved on the first generate step). Pass it: "
                "BudgetForcing(tokenizer, ...), or use budget_forcing.end_overhead(tokenizer, ...)."
            )
        return self._seqs

    def reset(self) -> None:
        """Forget the state of the last ``generate`` call (a new call is also detected on its own)."""
        self._owner, self._state, self._bound = None, None, None

    def stopping_criteria(self, stop_strings: Sequence[str] = ()) -> BudgetForcingStoppingCriteria:
        """A stopping criteria that ends rows at the answer cap or at a stop string in the answer."""
        from budget_forcing.stopping import BudgetForcingStoppingCriteria

        return BudgetForcingStoppingCriteria(self, stop_strings)

    @property
    def stats(self) -> BudgetStats:
        """Per-row statistics of the last ``generate`` call (one host sync, on access)."""
        if self._state is None:
            raise RuntimeError(
                "No statistics yet: pass the processor to model.generate(logits_processor=[...])."
            )
        self._settle()
        return core.stats(self._state)

    @property
    def finished(self) -> torch.Tensor | None:
        """Per row of the current call: the answer ended with EOS (None before a call)."""
        return None if self._state is None else core.finished(self._state)

    @property
    def answer_tail(self) -> torch.Tensor | None:
        """Per row of the current call: how many of its last tokens are answer tokens (0 outside
        the answer; the forced answer prefix is not counted). None before a call."""
        if self._state is None:
            return None
        self._settle()
        s = self._state
        return torch.where(s["phase"] == core.ANSWER, s["answer"], 0)

    def finish_rows(self, rows: torch.Tensor) -> None:
        """Mark rows (a bool per row) as finished: the caller stops them, so their statistics freeze."""
        if self._state is None:
            return
        rows = rows.to(self._live.device) & (self._state["phase"] != core.DONE)
        if bool(rows.any()):
            self._settle()
            self._state["phase"] = self._state["phase"].masked_fill(rows, core.DONE)
            self._quiet, self._window = 0, self._window._replace(choosing=True)

    def absorb(self, input_ids: torch.LongTensor) -> None:
        """Check the tokens generate appended against the ones decided (idempotent per length).

        Rows generate has stopped (it pads them) freeze; any other difference means something
        after the logits processors changed a token, which is raised rather than miscounted.
        """
        if self._state is None or input_ids.shape[1] <= self._length:
            return
        self._length = input_ids.shape[1]
        if self._token is None:  # a quiet greedy step: generate's own argmax, no attempt among them
            return
        last = input_ids[:, -1].to(self._token.device)
        # One comparison in the common case: every live row got the token decided for it.
        if (
            torch.equal(last, self._token)
            if self._all_live
            else not bool((self._live & (last != self._token)).any())
        ):
            return
        differs = self._live & (last != self._token)
        padded = differs & (last == self._pad)
        if self._owner is not None and bool((differs & ~padded).any()):  # inside generate only
            row = int((differs & ~padded).nonzero()[0, 0])
            raise RuntimeError(
                f"Row {row}: budget forcing decided token {int(self._token[row])} but generate appended "
                f"{int(last[row])}: something after the logits processors changed it (a custom sampler?). "
                "Remove it, or apply it as a logits processor."
            )
        self._stop(padded)

    def _stop(self, rows: torch.Tensor) -> None:
        """Rows that generate stopped (padded, or ended by a stopping criteria): they freeze."""
        self._settle()
        self._live = self._live & ~rows.to(self._live.device)
        self._all_live, self._quiet = False, 0

    def _settle(self) -> None:
        """Apply the quiet steps taken since the window opened (see `budget_forcing.core.quiet`)."""
        if self._lazy:
            self._state = core.coast(self._state, self._lazy, self._window)
            self._lazy = 0

    # --------------------------------------------------------------------------------- the hot path
    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        # Inside generate only the first step of a call gets here: `_begin` puts a `_Bound` in its
        # place in that call's processor list, which runs the later steps.
        call = _read_generate()
        if call.config is not None:  # generate deep-copies its config per call: identity marks the call
            new_call = call.config is not self._owner
        else:  # called outside generate(): within one call every step adds exactly one token
            new_call = input_ids.shape[0] != self._rows or input_ids.shape[1] != self._length + 1
        if self._state is None or new_call:
            self._begin(input_ids, scores, call)
        else:
            self.absorb(input_ids)
        return self._step(input_ids, scores)

    def _step(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        self._picked = False  # whether the processors after this one ran on a copy (`_pick`)
        if input_ids.shape[1] >= self._stop_length:  # generate's look-ahead step after max_length
            self._forced_rows = None
            return scores
        if self._quiet:
            return self._coast(input_ids, scores)
        # Forced tokens only (the start, a Wait, the end): under greedy decoding no max pass.
        choice = self._pick(input_ids, scores) if self._window.choosing or self._sampling else None
        return self._decide(input_ids, scores, choice)

    def _coast(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        """A step of a quiet window (`budget_forcing.core.quiet`): queued rows emit their next forced
        token; any other row's course changes only if its choice is an attempt (or an EOS in the
        answer), which sends the step to `_decide`. The counts are applied later, all at once."""
        w, t = self._window, self._tables
        choice = None
        if not self._plain and (w.choosing or self._sampling):
            choice = self._pick(input_ids, scores)
        if w.watching:
            if self._plain:
                # Greedy, nothing after us: generate takes the argmax itself, so all that matters
                # is whether it may be an attempt. The best attempt score against the row's best
                # score tells (the max of the values alone is many times faster than the argmax);
                # a tie (or a NaN) goes to the full step, which takes the exact first maximum.
                hit = ~(scores.index_select(1, t["attempt_ids"]).amax(-1) < scores.amax(-1))
            else:
                hit = t["is_attempt"][choice]
            if w.watch is not None:
                hit = hit & w.watch
            if bool(hit.any()):
                return self._decide(
                    input_ids, scores, self._pick(input_ids, scores) if choice is None else choice
                )
        token = choice
        if w.queued is not None:
            forced = core.forced_tokens(self._state, t, w, self._lazy)
            token = forced if choice is None else torch.where(w.queued, forced, choice)
        self._quiet -= 1
        self._lazy += 1
        # The tokens decided here (None: some rows take generate's own argmax, which is no attempt).
        self._token = token if choice is not None or not w.choosing else None
        if self._force_all:
            return self._force(scores, token, self._live)
        every = not w.choosing and self._all_live  # every row is queued
        return self._force(scores, token, self._live if every else w.queued)

    def _decide(
        self, input_ids: torch.LongTensor, scores: torch.FloatTensor, choice: torch.Tensor | None
    ) -> torch.FloatTensor:
        """A full step of every row's state machine."""
        self._settle()
        s, t = self._state, self._tables
        # Contiguous: a compiled state update guards on strides, and this view's stride grows each step.
        last = input_ids[:, -1].to(s["phase"].device).contiguous()
        # With no choice every row's token is forced (or frozen): any ids do as the choice (not
        # ``last`` itself: a compiled state update guards against a tensor passed twice).
        new, token, _, replace = self._step_fn(
            s, t, torch.zeros_like(last) if choice is None else choice, last
        )
        # Rows whose attempt is skipped or suppressed take the best (or a sampled) non-attempt token.
        if choice is not None and bool(replace.any()):
            alternative = self._pick(input_ids, scores.masked_fill(t["is_attempt"], float("-inf")))
            token = torch.where(replace, alternative, token)
        # Every row's token is known now (the answer's too: it is ``choice``), so count it at once:
        # the statistics are then exact whichever criterion ends generate. Stopped rows freeze.
        new = self._absorb_fn(new, t, token)
        if not self._all_live:
            new = {k: torch.where(self._live, v, s[k]) for k, v in new.items()}
        self._state, self._token = new, token
        # The next steps in which no row meets a fixed event (one host sync).
        self._window = core.quiet(new, t, None if self._all_live else self._live)
        self._quiet = self._window.steps
        # Force on a copy, only where needed: -inf everywhere but the token, so that nothing before
        # or after this processor undoes it. Under sampling (and with processors after us) every
        # row; under plain greedy only rows whose token is not already the argmax.
        if self._force_all or choice is None:
            return self._force(scores, token, self._live)
        return self._force(scores, token, self._live & (token != choice))

    def _force(self, scores: torch.FloatTensor, token: torch.Tensor, rows: torch.Tensor | None):
        """``scores`` with ``token`` forced in ``rows`` (on a copy; None: no row)."""
        self._forced_rows = None
        if rows is None:
            return scores
        if rows is self._live and self._all_live:  # every row: no copy of the scores needed
            self._forced_rows, self._forced_tokens = _ALL, token
            return torch.full_like(scores, float("-inf")).scatter_(1, token[:, None], 0.0)
        if not bool(rows.any()):
            return scores
        out = scores.clone()
        rows = rows.nonzero().squeeze(1)
        out[rows] = float("-inf")
        out[rows, token[rows]] = 0.0
        self._forced_rows, self._forced_tokens = rows, token[rows]
        return out

    def _pick(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.LongTensor:
        # Apply what generate applies after us (sampling warpers, later processors), on copies.
        final = scores
        self._picked = bool(self._downstream)
        for processor in self._downstream:
            final = processor(input_ids, final.clone())
        if not self._sampling:
            return final.max(-1).indices  # faster than argmax on CPU; same first-maximum rule
        return torch.multinomial(torch.softmax(final, dim=-1), num_samples=1).squeeze(1)

    # ------------------------------------------------------------------------------------- a call
    def _resolve_tokenizer(self, call: _Call) -> None:
        """Find the tokenizer when none was given: generate's ``tokenizer=``, else the model's path."""
        if self._given_tokenizer:
            return
        if call.tokenizer is not None:
            if call.tokenizer is not self.tokenizer:
                self._use_tokenizer(call.tokenizer)
            self._resolved_from = None
            return
        path = getattr(call.model, "name_or_path", "") or ""
        if self.tokenizer is not None and self._resolved_from == path and path:
            return
        if not path:
            raise ValueError(
                "BudgetForcing needs the model's tokenizer and cannot find it: the model has no "
                "name_or_path (built from a config?). Pass it: BudgetForcing(tokenizer, ...) or "
                "model.generate(..., tokenizer=tokenizer)."
            )
        from transformers import AutoTokenizer

        try:
            tokenizer = AutoTokenizer.from_pretrained(path)
        except Exception as err:  # missing files, offline mode, ...: one clear message
            raise ValueError(
                f"BudgetForcing could not load the tokenizer of {path!r} ({err!r:.200}). Pass it: "
                "BudgetForcing(tokenizer, ...) or model.generate(..., tokenizer=tokenizer)."
            ) from err
        self._use_tokenizer(tokenizer)
        self._resolved_from = path

    def _begin(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, call: _Call) -> None:
        """Start a new generate call: build per-vocab tables and analyse each row's prompt."""
        config = call.config
        if config is not None and config.num_beams not in (None, 1):
            raise ValueError(
                "BudgetForcing does not support beam search; use num_beams=1 (s1 decodes greedily)."
            )
        self._resolve_tokenizer(call)
        if self.tokenizer is None:
            raise ValueError(
                "BudgetForcing was called outside generate() without a tokenizer; pass it: "
                "BudgetForcing(tokenizer, ...)."
            )
        rows, length = input_ids.shape
        device, vocab = scores.device, scores.shape[-1]
        self._rows, self._length = rows, length
        self._sampling = bool(config is not None and config.do_sample)
        self._downstream = self._after_me(call.processors)
        self._force_all = self._sampling or bool(self._downstream)
        self._plain = not self._force_all and config is not None  # greedy in generate, nothing after us
        if self._downstream:
            self._protect(call.processors)

        config_eos = None if config is None else config.eos_token_id
        eos, stop_id = core.eos_ids(self._seqs, config_eos)
        core.check_sequences(self._seqs, self.format, self.wait, self.answer_prefix, eos)
        core.check_vocab(self._seqs, eos, vocab)
        pad = None if config is None else config.pad_token_id
        self._pad = torch.tensor(-1 if pad is None else pad, device=device)

        key = (id(self.tokenizer), self._seqs, vocab, device, tuple(eos), stop_id)
        if self._table_cache is None or self._table_cache[0] != key:  # per vocabulary, not per call
            ends_newline, is_space = core.vocab_flags(self.tokenizer, vocab, device)
            tables = core.build_tables(
                self._seqs, vocab, ends_newline, is_space, device, eos_ids=eos, stop_id=stop_id
            )
            self._table_cache = (key, tables)
        self._tables = t = self._table_cache[1]
        self._absorb_fn, self._step_fn = self._kernels()
        per_prompt = (config.num_return_sequences or 1) if config is not None else 1
        prompts = self.tokenizer.batch_decode(input_ids, skip_special_tokens=False)
        closers = [self.tokenizer.decode([e]) for e in eos]
        phase = torch.tensor([core.prompt_phase(p, self.format, closers) for p in prompts], device=device)
        s = core.init_state(
            t,
            input_ids,
            min=core.row_tensor(self.min, "min", 0, rows, device, per_prompt),
            max=core.row_tensor(self.max, "max", core.UNLIMITED, rows, device, per_prompt),
            num_waits=self.num_waits,
            max_answer=self.max_answer_tokens,
            phase=phase,
        )
        if config is not None:
            self._check_room(config, length, s)
        self._state, self._token = s, torch.zeros(rows, dtype=torch.long, device=device)
        self._live, self._all_live = torch.ones(rows, dtype=torch.bool, device=device), True
        # The first step is a full one; it opens the first quiet window.
        self._window = core.Quiet(0, True, s["phase"] < 0, s["phase"] < 0, None, None, False)
        self._quiet = self._lazy = 0
        self._forced_rows = None
        self._owner, self._bound = config, None
        self._stop_length = sys.maxsize
        if call.criteria is not None:
            self._watch_criteria(call.criteria)
        if call.config is not None and call.processors is not None:
            self._bind(call.processors)

    def _bind(self, processors: LogitsProcessorList) -> None:
        """Run this call's later steps through a `_Bound` in this processor's place in generate's
        list (built afresh per call), so they need no check for a new call."""
        i = [id(p) for p in processors].index(id(self))
        self._bound = processors[i] = _Bound(self)

    def _watch_criteria(self, criteria: StoppingCriteriaList) -> None:
        """Learn which rows generate stops, as it stops them (they freeze), from its criteria.

        Rows ending with EOS are finished already, rows our own criteria stop are marked by it,
        and the length limit stops every row at once (its look-ahead step is skipped), so only
        the other criteria (stop strings, custom ones) are watched, each with one check per step.
        """
        from budget_forcing.stopping import BudgetForcingStoppingCriteria

        for i, criterion in enumerate(criteria):
            if isinstance(criterion, MaxLengthCriteria):
                self._stop_length = min(self._stop_length, criterion.max_length)
            elif not isinstance(criterion, (EosTokenCriteria, BudgetForcingStoppingCriteria, _Watch)):
                criteria[i] = _Watch(criterion, self)

    def _after_me(self, processors) -> list:
        """The processors generate runs after this one in its list (the sampling warpers, ...)."""
        if processors is None:
            return []
        members = [id(p) for p in processors]
        if id(self) not in members:
            return []
        return list(processors)[members.index(id(self)) + 1 :]

    def _protect(self, processors) -> None:
        """With processors after this one (warpers, a ban, a penalty): re-force our rows after each.

        ``generate`` builds its processor list afresh per call, so wrapping its later entries in
        place (never reordering: the list is being iterated) affects only this call.
        """
        start = [id(p) for p in processors].index(id(self)) + 1
        for i in range(start, len(processors)):
            if not isinstance(processors[i], _Reforce):
                processors[i] = _Reforce(processors[i], self)

    def _kernels(self):
        """The state-update functions, compiled (cached per processor) where that pays off."""
        if not self.compile:
            return core.absorb, core.decide
        if self._compiled is None:
            self._compiled = (
                core.compiled(core.absorb),
                core.compiled(core.decide),
            )
        return self._compiled

    def _check_room(self, config: GenerationConfig, prompt_length: int, s: dict[str, torch.Tensor]) -> None:
        """Fail early when max_new_tokens cannot fit the budgets plus the forced tokens."""
        room = config.max_new_tokens
        if room is None and config.max_length is not None:
            room = config.max_length - prompt_length
        if room is None:
            return
        overhead = self.end_overhead
        need_min = int(s["min"].max()) + overhead
        if need_min > room:
            raise ValueError(
                f"max_new_tokens={room} cannot honour min={int(s['min'].max())} thinking tokens plus up to "
                f"{overhead} forced delimiter/prefix tokens; raise max_new_tokens to at least "
                f"{need_min} (plus room for the answer) or lower `min`."
            )
        capped = s["max"][s["max"] < core.UNLIMITED]  # rows with max=None have no cap to fit
        top = int(capped.max()) if capped.numel() else 0
        if capped.numel() and top + overhead > room:
            raise ValueError(
                f"max_new_tokens={room} is smaller than the thinking budget max={top} plus up to "
                f"{overhead} forced delimiter/prefix tokens, so thinking could be cut without an "
                f"answer; raise max_new_tokens to at least {top + overhead} (plus room for the "
                "answer) or lower `max`."
            )


class _Call(NamedTuple):
    """What `_read_generate` learned about the calling ``generate``."""

    config: GenerationConfig | None = None
    processors: LogitsProcessorList | None = None
    criteria: StoppingCriteriaList | None = None
    tokenizer: PreTrainedTokenizerBase | None = None
    model: object | None = None


def _read_generate() -> _Call:
    """What the calling ``generate`` is doing, read from its frames: the one place that does.

    A logits processor gets no handle on ``generate``'s call: transformers (5.0 to 5.x) offers no
    public way to learn the decoding mode, the EOS ids, the processor and stopping-criteria lists
    of the call or the tokenizer passed to it. So this reads the locals of its decoding loop
    (``_sample``) and of ``generate`` itself, once per call (later steps run through `_Bound`).
    Outside ``generate`` (direct calls) it finds no config, and new calls are told apart by shape.
    """
    frame = sys._getframe(2)  # above __call__ and this function
    processors = None
    for _ in range(12):
        if frame is None:
            break
        code = frame.f_code
        if processors is None and code.co_name == "__call__":
            owner = frame.f_locals.get("self")
            if isinstance(owner, LogitsProcessorList):
                processors = owner
        elif "generation_config" in code.co_varnames:
            local = frame.f_locals
            config = local.get("generation_config")
            if isinstance(config, GenerationConfig):
                if code.co_name != "_sample":
                    raise ValueError(
                        f"BudgetForcing supports greedy decoding and sampling (num_beams=1); generate() is "
                        f"running {code.co_name!r} (beam search or assisted/speculative decoding). "
                        "Use num_beams=1 and no assistant_model / prompt_lookup_num_tokens."
                    )
                outer = frame.f_back
                for _ in range(4):  # generate() itself: the tokenizer a caller passed
                    if outer is None or outer.f_code.co_name == "generate":
                        break
                    outer = outer.f_back
                generate_locals = outer.f_locals if outer is not None else {}
                mode_kwargs = generate_locals.get("generation_mode_kwargs") or {}
                criteria = local.get("stopping_criteria")
                return _Call(
                    config,
                    local.get("logits_processor", processors),
                    criteria if isinstance(criteria, StoppingCriteriaList) else None,
                    generate_locals.get("tokenizer") or mode_kwargs.get("tokenizer"),
                    local.get("self"),
                )
        frame = frame.f_back
    return _Call(processors=processors)


class _Bound(LogitsProcessor):
    """Budget forcing's place in one ``generate`` call's processor list after its first step."""

    def __init__(self, owner: BudgetForcingLogitsProcessor) -> None:
        self.owner = owner

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        owner = self.owner
        if owner._bound is not self:  # reset (or another call) since: start over
            return owner(input_ids, scores)
        owner.absorb(input_ids)
        return owner._step(input_ids, scores)


class _Watch(StoppingCriteria):
    """Runs a stopping criteria of generate and tells budget forcing which rows it stopped."""

    def __init__(self, inner: StoppingCriteria, owner: BudgetForcingLogitsProcessor) -> None:
        self.inner, self.owner = inner, owner

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs) -> torch.BoolTensor:
        stop = self.inner(input_ids, scores, **kwargs)
        rows = torch.as_tensor(stop)  # custom criteria may return one bool for every row
        if self.owner._state is not None and bool(rows.any()):
            self.owner._stop(rows)
        return stop


_ALL = "all"  # `_force` forced every row


class _Reforce(LogitsProcessor):
    """Runs a processor placed after budget forcing, then forces the rows it forced again.

    When every row is forced and it already ran this step (on the copy where budget forcing
    picked the model's choice) it is skipped: its output would be replaced entirely. So each
    processor after budget forcing runs once per step.
    """

    def __init__(self, inner: LogitsProcessor, owner: BudgetForcingLogitsProcessor) -> None:
        self.inner, self.owner = inner, owner

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        owner = self.owner
        rows = getattr(owner, "_forced_rows", None)
        if rows is _ALL and owner._picked:
            return scores
        out = self.inner(input_ids, scores)
        if rows is None:
            return out
        # In place: ``out`` is a copy made after budget forcing's own.
        if rows is _ALL:
            return out.fill_(float("-inf")).scatter_(1, owner._forced_tokens[:, None], 0.0)
        out[rows] = float("-inf")
        out[rows, owner._forced_tokens] = 0.0
        return out


#: Short alias.
BudgetForcing = BudgetForcingLogitsProcessor
