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
import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
from transformers import GenerationConfig, LogitsProcessor, LogitsProcessorList, PreTrainedTokenizerBase

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


def _fallback(compiled, eager):
    """Run ``compiled``; if compiling fails, warn once and run ``eager`` from then on."""
    state = {"fn": compiled}

    def run(*args):
        try:
            return state["fn"](*args)
        except Exception as err:  # torch.compile raises many error types (no compiler, no triton, ...)
            if state["fn"] is eager:
                raise
            warnings.warn(f"torch.compile failed ({err!r:.200}); budget forcing runs eagerly.", stacklevel=2)
            state["fn"] = eager
            return eager(*args)

    return run


class BudgetForcingLogitsProcessor(LogitsProcessor):
    """Budget forcing as a `transformers` logits processor: cap and extend thinking per row.

    Args:
        tokenizer: the model's tokenizer (encodes delimiters and the wait string once).
        min: minimum thinking tokens, an int or one int per prompt. Below it, attempts to end
            thinking are replaced by ``wait``.
        max: maximum thinking tokens, an int, one per prompt, or None for no cap. At the cap the
            end sequence is forced.
        format: ``"auto"``, ``"s1"``, ``"think"`` or a `budget_forcing.ThinkingFormat`.
        wait: string injected to extend thinking (encoded on its own). None only suppresses the end.
        num_waits: ignore the model's first N attempts to end thinking (s1's ``thinking_n_ignore``).
        answer_prefix: forced after a budget-forced end, so the model answers with its best guess.
        max_answer_tokens: cap on answer tokens (EOS is forced at the cap); None for no cap.
        eos_token_id: ids that end the answer; defaults to the tokenizer's EOS, the format's
            ``answer_end`` and the ids of the calling ``generate``'s generation config.
        compile: fuse the per-step state update with ``torch.compile`` (a few kernels instead of
            ~60 small ones per step; worth it on GPUs for long generations, costs a one-off compile
            of some seconds). A compile failure falls back to eager with a warning.

    Works with greedy decoding and multinomial sampling (temperature, top-k, top-p, ...), ragged
    left-padded batches and ``num_return_sequences``. With greedy decoding an attempt to end is
    the argmax; with sampling the processor draws the token itself from the final distribution
    (after the sampling warpers that ``generate`` applies) and forces it, so "the sampled token
    was an attempt" means exactly what it means in s1's multi-call procedure.

    Example:
        >>> from transformers import AutoModelForCausalLM, AutoTokenizer  # doctest: +SKIP
        >>> tok = AutoTokenizer.from_pretrained("simplescaling/s1.1-32B")  # doctest: +SKIP
        >>> bf = BudgetForcing(tok, min=1000, max=4000)  # doctest: +SKIP
        >>> out = model.generate(**inputs, logits_processor=[bf], max_new_tokens=6000)  # doctest: +SKIP
        >>> bf.stats.thinking_tokens  # doctest: +SKIP
    """

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
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
        core.check_budgets(min, max)
        core.check_settings(num_waits, max_answer_tokens)

        self.tokenizer = tokenizer
        self.format = fmt = get_format(format, tokenizer)
        self.min, self.max, self.num_waits, self.max_answer_tokens = min, max, num_waits, max_answer_tokens
        self.wait, self.answer_prefix = wait, answer_prefix
        self.compile = compile
        self._seqs = core.encode_sequences(tokenizer, fmt, wait, answer_prefix, eos_token_id)
        #: Most forced tokens a row can spend outside thinking: the start delimiter and a forced end.
        self.end_overhead = self._seqs.end_overhead
        self._owner = None  # the generation config of the generate call the state belongs to
        self._state: core.State | None = None
        self._rows = self._seen = self._length = -1
        self._compiled: tuple | None = None

    # ----------------------------------------------------------------------------------- public API
    def reset(self) -> None:
        """Forget the state of the last ``generate`` call (a new call is also detected on its own)."""
        self._owner, self._state = None, None

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
        return core.stats(self._state)

    @property
    def finished(self) -> torch.Tensor | None:
        """Per row of the current call: the answer ended or reached its cap (None before a call)."""
        return None if self._state is None else core.finished(self._state)

    @property
    def answer_tail(self) -> torch.Tensor | None:
        """Per row of the current call: how many of its last tokens are answer tokens (0 outside
        the answer; the forced answer prefix is not counted). None before a call."""
        if self._state is None:
            return None
        s = self._state
        return torch.where(s["phase"] == core.ANSWER, s["answer"], 0)

    def finish_rows(self, rows: torch.Tensor) -> None:
        """Mark rows (a bool per row) as finished: the caller stops them, so their statistics freeze."""
        if self._state is not None:
            s = self._state
            s["phase"] = s["phase"].masked_fill(rows.to(s["phase"].device), core.DONE)

    # --------------------------------------------------------------------------------- the hot path
    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        config, downstream = self._caller()
        if config is not None:  # generate deep-copies its config per call: identity marks the call
            new_call = config is not self._owner
        else:  # called outside generate(): within one call every step adds exactly one token
            new_call = input_ids.shape[0] != self._rows or input_ids.shape[1] != self._seen + 1
        if self._state is None or new_call:
            self._begin(input_ids, scores, config, downstream)
            self._owner = config
        else:
            self.absorb(input_ids)
        self._seen = input_ids.shape[1]
        return self._step(input_ids, scores)

    def absorb(self, input_ids: torch.LongTensor) -> None:
        """Account for the token generate appended since the last call (idempotent per length)."""
        if self._state is None or input_ids.shape[1] <= self._length:
            return
        self._length = input_ids.shape[1]
        self._state = self._absorb_fn(self._state, self._tables, input_ids[:, -1])

    def _step(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        # What the model would emit now: the argmax, or a sample from the final distribution.
        choice = self._pick(input_ids, scores)
        # wait=None suppresses an attempt: the row takes the best (or a sampled) non-attempt token.
        alternative = None
        if not self._seqs.wait:
            alternative = self._pick(input_ids, scores.masked_fill(self._tables["is_attempt"], float("-inf")))
        self._state, token, forced = self._step_fn(
            self._state, self._tables, choice, input_ids[:, -1], alternative
        )
        # Force in place. Greedy with nothing after us: +inf on the token is enough for argmax, and
        # costs O(rows). Otherwise -inf everywhere but the token, so any warper keeps only it.
        kept = scores.gather(1, token[:, None])
        if self._plain_argmax:
            return scores.scatter_(1, token[:, None], torch.where(forced[:, None], float("inf"), kept))
        scores.masked_fill_(forced[:, None], float("-inf"))
        return scores.scatter_(1, token[:, None], torch.where(forced[:, None], 0.0, kept))

    def _pick(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.LongTensor:
        if not self._sampling:
            return scores.argmax(-1)
        # Apply the warpers generate would apply after us, then sample as generate does.
        final = scores.clone()  # warpers may work in place; the original scores must survive
        for processor in self._downstream:
            final = processor(input_ids, final)
        return torch.multinomial(torch.softmax(final, dim=-1), num_samples=1).squeeze(1)

    # ------------------------------------------------------------------------------ call detection
    def _caller(self) -> tuple[GenerationConfig | None, list]:
        """The calling generate's config and the processors after this one, read from its frames.

        Logits processors get no handle on the generation config; this reads it (and detects a new
        generate call by its identity) from the ``generate`` frames above, once per step.
        """
        frame = sys._getframe(1).f_back  # above __call__
        downstream: list = []
        for _ in range(8):
            if frame is None:
                break
            local = frame.f_locals
            owner = local.get("self")
            if isinstance(owner, LogitsProcessorList) and not downstream:
                members = [id(p) for p in owner]
                if id(self) in members:
                    downstream = list(owner)[members.index(id(self)) + 1 :]
            config = local.get("generation_config")
            if isinstance(config, GenerationConfig):
                if frame.f_code.co_name != "_sample":
                    raise ValueError(
                        f"BudgetForcing supports greedy decoding and sampling (num_beams=1); generate() is "
                        f"running {frame.f_code.co_name!r} (beam search or assisted/speculative decoding). "
                        "Use num_beams=1 and no assistant_model / prompt_lookup_num_tokens."
                    )
                return config, downstream
            frame = frame.f_back
        return None, downstream

    def _begin(
        self, input_ids: torch.LongTensor, scores: torch.FloatTensor, config, downstream: list
    ) -> None:
        """Start a new generate call: build per-vocab tables and analyse each row's prompt."""
        rows, length = input_ids.shape
        device, vocab = scores.device, scores.shape[-1]
        self._rows, self._length = rows, length
        if config is not None and config.num_beams not in (None, 1):
            raise ValueError(
                "BudgetForcing does not support beam search; use num_beams=1 (s1 decodes greedily)."
            )
        self._sampling = bool(config is not None and config.do_sample)
        self._downstream = downstream if self._sampling else []
        self._plain_argmax = not self._sampling and not downstream

        eos = set(self._seqs.eos)
        if config is not None and config.eos_token_id is not None:
            eos |= {config.eos_token_id} if isinstance(config.eos_token_id, int) else set(config.eos_token_id)
        stop_ids = (
            config.eos_token_id if config is not None and config.eos_token_id is not None else self._seqs.eos
        )
        stop_ids = [stop_ids] if isinstance(stop_ids, int) else list(stop_ids)
        ends_newline, is_space = core.vocab_flags(self.tokenizer, vocab, device)
        self._tables = core.build_tables(
            self._seqs, vocab, ends_newline, is_space, device, eos_ids=sorted(eos), stop_id=stop_ids[0]
        )
        self._absorb_fn, self._step_fn = self._kernels()
        self._state = s = core.init_state(
            self._tables,
            input_ids,
            min=core.row_tensor(self.min, "min", 0, rows, device),
            max=core.row_tensor(self.max, "max", core.UNLIMITED, rows, device),
            num_waits=self.num_waits,
            max_answer=self.max_answer_tokens,
        )
        if config is not None:
            self._check_room(config, length, s)

    def _kernels(self):
        """The state-update functions, compiled (cached per processor) where that pays off."""
        if not self.compile:
            return core.absorb, core.advance
        if self._compiled is None:
            self._compiled = (
                _fallback(torch.compile(core.absorb, dynamic=True), core.absorb),
                _fallback(torch.compile(core.advance, dynamic=True), core.advance),
            )
        return self._compiled

    def _check_room(self, config: GenerationConfig, prompt_length: int, s: dict[str, torch.Tensor]) -> None:
        """Fail early when max_new_tokens cannot fit the budgets plus the forced tokens."""
        room = config.max_new_tokens
        if room is None and config.max_length is not None:
            room = config.max_length - prompt_length
        if room is None:
            return
        need_min = int(s["min"].max()) + self.end_overhead
        if need_min > room:
            raise ValueError(
                f"max_new_tokens={room} cannot honour min={int(s['min'].max())} thinking tokens plus up to "
                f"{self.end_overhead} forced delimiter/prefix tokens; raise max_new_tokens to at least "
                f"{need_min} (plus room for the answer) or lower `min`."
            )
        top = int(s["max"].max())
        if top < core.UNLIMITED and top + self.end_overhead > room:
            raise ValueError(
                f"max_new_tokens={room} is smaller than the thinking budget max={top} plus up to "
                f"{self.end_overhead} forced delimiter/prefix tokens, so thinking could be cut without an "
                f"answer; raise max_new_tokens to at least {top + self.end_overhead} (plus room for the "
                "answer) or lower `max`."
            )


#: Short alias.
BudgetForcing = BudgetForcingLogitsProcessor
