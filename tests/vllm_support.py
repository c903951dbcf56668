"""What the vLLM tests share: a tiny Qwen2 folder vLLM can load, and a nudging logits processor."""

from __future__ import annotations

from pathlib import Path

import torch
from vllm.v1.sample.logits_processor import BatchUpdate, LogitsProcessor, MoveDirectionality

from budget_forcing.testing import tiny_model, tiny_tokenizer


def save_tiny_qwen2(path: Path) -> Path:
    """A random tiny Qwen2 (head_dim 32, which vLLM's CPU attention supports) and its tokenizer."""
    tok = tiny_tokenizer()
    model = tiny_model(tok, hidden_size=128, dtype=torch.float32)
    model.generation_config.eos_token_id = [tok.eos_token_id]
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


class Nudge(LogitsProcessor):
    """Makes a random model attempt to end at content-defined places (vLLM version of helpers.Nudge).

    A request opts in with ``extra_args={"nudge": [target ids...], "nudge_period": 5}``; target
    ``k`` gets +40 when ``(length * 7 + last token) % period == k``, a function of the tokens only,
    identical in a one-pass run and in a multi-call run of the same text.
    """

    strength = 40.0

    def __init__(self, vllm_config, device, is_pin_memory) -> None:
        self.rows: dict[int, tuple[list[int], int, list[int], list[int]]] = {}

    def is_argmax_invariant(self) -> bool:
        return False

    def update_state(self, batch_update: BatchUpdate | None) -> None:
        if batch_update is None:
            return
        for slot in batch_update.removed:
            self.rows.pop(slot, None)
        for slot, params, prompt, output in batch_update.added:
            extra = params.extra_args or {}
            if extra.get("nudge"):
                self.rows[slot] = (list(extra["nudge"]), extra.get("nudge_period", 5), prompt or [], output)
            else:
                self.rows.pop(slot, None)
        for a, b, direction in batch_update.moved:
            ra, rb = self.rows.pop(a, None), self.rows.pop(b, None)
            if ra is not None:
                self.rows[b] = ra
            if rb is not None and direction == MoveDirectionality.SWAP:
                self.rows[a] = rb

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        for slot, (targets, period, prompt, output) in self.rows.items():
            if slot >= logits.shape[0]:
                continue
            length = len(prompt) + len(output)
            last = output[-1] if output else prompt[-1]
            key = (length * 7 + last) % period
            if key < len(targets):
                logits[slot, targets[key]] += self.strength
        return logits
