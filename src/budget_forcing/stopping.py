"""Per-row stopping criteria that only look at the answer, never at the thinking trace."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from transformers import StoppingCriteria, StopStringCriteria

from budget_forcing.core import token_strings
from budget_forcing.processor import BudgetForcingLogitsProcessor

__all__ = ["BudgetForcingStoppingCriteria"]


class BudgetForcingStoppingCriteria(StoppingCriteria):
    """Stop a row when its answer is finished: EOS (also the one forced at the answer cap, so a
    capped row ends with EOS with or without this criteria) or a stop string in the answer.

    Stop strings inside thinking are ignored (lm-eval's ``"Question:"`` must not cut a reasoning
    trace), and so are strings that start before the answer, e.g. in the forced ``"Final Answer:"``.
    Returns one bool per row, as transformers expects.

    Example:
        >>> from budget_forcing import BudgetForcing
        >>> from budget_forcing.testing import tiny_tokenizer
        >>> bf = BudgetForcing(tiny_tokenizer(), max=64, format="think", max_answer_tokens=32)
        >>> criteria = bf.stopping_criteria(stop_strings=["Question:"])
        >>> criteria.stop_strings
        ['Question:']

        Then ``model.generate(**inputs, logits_processor=[bf], stopping_criteria=[criteria])``.
    """

    def __init__(self, processor: BudgetForcingLogitsProcessor, stop_strings: Sequence[str] = ()) -> None:
        if isinstance(stop_strings, str):
            stop_strings = [stop_strings]
        self.processor = processor
        self.stop_strings = [s for s in stop_strings if s]
        self._matcher: StopStringCriteria | None = None
        if self.stop_strings and processor.tokenizer is not None:
            self._build(processor.tokenizer)

    def _build(self, tokenizer) -> None:
        self._matcher = StopStringCriteria(tokenizer=tokenizer, stop_strings=self.stop_strings)
        # A token that shares no character with any stop string: it stands in for every
        # non-answer token, so no match can reach back into thinking or the forced prefix.
        chars = set("".join(self.stop_strings))
        strings = token_strings(tokenizer)
        neutral = next((i for i, t in enumerate(strings) if t and not (set(t) & chars)), None)
        if neutral is None:
            raise ValueError(f"Stop strings {self.stop_strings!r} use every character of the vocabulary.")
        self._neutral = neutral

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs) -> torch.BoolTensor:
        bf = self.processor
        bf.absorb(input_ids)
        stop = bf.finished
        if stop is None:
            return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
        if self.stop_strings and self._matcher is None:  # the tokenizer was resolved on the first step
            self._build(bf.tokenizer)
        if self._matcher is not None:
            # Keep only the answer tokens of the tail the matcher looks at.
            tail = input_ids[:, -self._matcher.maximum_token_len :]
            back = torch.arange(tail.shape[1] - 1, -1, -1, device=tail.device)  # distance from the end
            in_answer = back < bf.answer_tail.to(tail.device)[:, None]
            masked = torch.where(in_answer, tail, self._neutral)
            stop = stop | self._matcher(masked, scores).to(stop.device)
        # generate pads stopped rows from now on; freeze their statistics.
        bf.finish_rows(stop)
        return stop.to(input_ids.device)
