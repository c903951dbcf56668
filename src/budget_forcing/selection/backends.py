"""Chat backends: any OpenAI-compatible endpoint (``vllm serve``, hosted APIs) or a local HF model.

A backend turns a list of chat conversations into ``(index, text or exception)`` pairs, yielded as
they finish, so the caller can commit each result to the cache immediately.

* :class:`OpenAIChatBackend`: the official ``openai`` client (its retries with exponential backoff,
  timeouts and typed errors), a thread pool with at most ``max_concurrency`` requests in flight.
  The API key is read from the environment variable ``api_key_env`` and only ever sent in the
  ``Authorization`` header, never logged or stored.
* :class:`LocalHFBackend`: ``transformers`` ``generate`` in batches (small models, CPU or GPU);
  with ``thinking_budget`` set, reasoning models think at most that many tokens
  (:class:`budget_forcing.BudgetForcing`, one ``generate`` call).

Example:
    >>> from budget_forcing.selection.backends import make_backend
    >>> from budget_forcing.selection.config import ModelConfig
    >>> backend = make_backend(ModelConfig(name="q7", model="Qwen/Qwen2.5-7B-Instruct",
    ...                                    base_url="http://127.0.0.1:8000/v1"))
    >>> for index, text in backend.generate([[{"role": "user", "content": "1+1?"}]]):  # doctest: +SKIP
    ...     print(index, text)
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import Any

from budget_forcing._extras import require

from .config import ModelConfig

__all__ = ["ChatBackend", "OpenAIChatBackend", "LocalHFBackend", "make_backend", "BackendError"]

logger = logging.getLogger("budget_forcing.selection")
Messages = list[dict[str, str]]


class BackendError(RuntimeError):
    """A call failed for good (after retries, or with an error retrying cannot fix)."""


class ChatBackend:
    """Interface: ``generate(conversations)`` yields ``(index, text | BackendError)`` as calls finish."""

    config: ModelConfig

    def generate(self, conversations: Sequence[Messages]) -> Iterator[tuple[int, str | BackendError]]:
        raise NotImplementedError

    def close(self) -> None:
        """Free resources (models, pools)."""


class OpenAIChatBackend(ChatBackend):
    """Chat completions through the official ``openai`` client, with bounded concurrency.

    The client retries network errors, timeouts, 408/409/429 and 5xx with exponential backoff
    (``max_retries``, ``timeout_seconds``); its typed errors become :class:`BackendError`. A reply
    without text (``content: null``, no choices) is retried too, up to ``max_retries`` times, and
    never returned as an empty answer.
    """

    def __init__(self, config: ModelConfig) -> None:
        if config.max_concurrency < 1:
            raise ValueError(f"`max_concurrency` of {config.name!r} must be >= 1.")
        openai = require("openai", "recipes", "Calling OpenAI-compatible endpoints")
        self.config = config
        self._errors = openai.APIError
        key = os.environ.get(config.api_key_env) if config.api_key_env else None
        # vLLM's convention for a server without --api-key: any placeholder key.
        self.client = openai.OpenAI(
            base_url=config.base_url.rstrip("/"),
            api_key=key or "EMPTY",
            max_retries=config.max_retries,
            timeout=config.timeout_seconds,
        )

    def complete(self, messages: Messages) -> str:
        """One chat completion; raises :class:`BackendError` when it fails for good."""
        cfg = self.config
        for attempt in range(cfg.max_retries + 1):
            try:
                reply = self.client.chat.completions.create(
                    model=cfg.model, messages=messages, temperature=cfg.temperature, max_tokens=cfg.max_tokens
                )
            except self._errors as err:  # already retried by the client where retrying can help
                raise BackendError(f"{cfg.name}: {type(err).__name__}: {err}") from None
            content = reply.choices[0].message.content if reply.choices else None
            if content:
                return content
            logger.info("%s: empty reply (try %d of %d)", cfg.name, attempt + 1, cfg.max_retries + 1)
        raise BackendError(f"{cfg.name}: no text in {cfg.max_retries + 1} replies (content null or empty)")

    def generate(self, conversations: Sequence[Messages]) -> Iterator[tuple[int, str | BackendError]]:
        if not conversations:
            return
        pending: dict[Future, int] = {}
        todo = iter(enumerate(conversations))
        pool = ThreadPoolExecutor(max_workers=self.config.max_concurrency)

        def fill() -> None:
            while len(pending) < self.config.max_concurrency:
                nxt = next(todo, None)
                if nxt is None:
                    return
                pending[pool.submit(self.complete, nxt[1])] = nxt[0]

        try:
            fill()
            while pending:
                done, _ = wait(pending, return_when=FIRST_COMPLETED)
                for future in done:
                    index = pending.pop(future)
                    try:
                        yield index, future.result()
                    except BackendError as err:
                        yield index, err
                fill()
        finally:  # interrupted (Ctrl-C, consumer stopped): start nothing new
            pool.shutdown(wait=False, cancel_futures=True)


class LocalHFBackend(ChatBackend):
    """Greedy (``temperature`` 0) or sampled generation with a local ``transformers`` causal LM."""

    def __init__(self, config: ModelConfig) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.config = config
        self.torch = torch
        if config.num_threads:
            torch.set_num_threads(config.num_threads)
        self.tokenizer = AutoTokenizer.from_pretrained(config.model)
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.model = AutoModelForCausalLM.from_pretrained(config.model).to(config.device).eval()

    def generate(self, conversations: Sequence[Messages]) -> Iterator[tuple[int, str | BackendError]]:
        cfg, tok = self.config, self.tokenizer
        texts = [
            tok.apply_chat_template(c, tokenize=False, add_generation_prompt=True) for c in conversations
        ]
        encoded = tok(texts, add_special_tokens=False)["input_ids"]
        # Batches of prompts of similar length: less padding to run through the model.
        order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))
        for start in range(0, len(order), cfg.batch_size):
            rows = order[start : start + cfg.batch_size]
            batch = {"input_ids": [encoded[i] for i in rows]}
            inputs = tok.pad(batch, padding=True, return_tensors="pt").to(cfg.device)
            sample = cfg.temperature > 0
            kwargs: dict[str, Any] = {"do_sample": sample, "max_new_tokens": cfg.max_tokens}
            if sample:
                kwargs["temperature"] = cfg.temperature
                self.torch.manual_seed(start)
            if cfg.thinking_budget is not None:
                from budget_forcing import BudgetForcing

                kwargs["logits_processor"] = [
                    BudgetForcing(tok, max=cfg.thinking_budget, format=cfg.thinking_format)
                ]
            with self.torch.no_grad():
                out = self.model.generate(**inputs, **kwargs, pad_token_id=tok.pad_token_id)
            new = out[:, inputs["input_ids"].shape[1] :]
            for row, ids in zip(rows, new):
                yield row, self._decode(ids.tolist())

    def _decode(self, ids: list[int]) -> str:
        tok = self.tokenizer
        if self.config.thinking_budget is None:
            return tok.decode(ids, skip_special_tokens=True)
        # keep the thinking delimiters (grading reads the answer after them); drop padding and EOS
        drop = {tok.pad_token_id, tok.eos_token_id}
        return tok.decode([i for i in ids if i not in drop], skip_special_tokens=False)

    def close(self) -> None:
        del self.model


def make_backend(config: ModelConfig) -> ChatBackend:
    """The backend named by ``config.backend``."""
    if config.backend == "openai":
        return OpenAIChatBackend(config)
    if config.backend == "local":
        return LocalHFBackend(config)
    raise ValueError(
        f"Unknown backend {config.backend!r} for model {config.name!r}; use 'openai' or 'local'."
    )
