"""``generate`` streamers: thinking and answer printed live, and a token progress bar.

Both follow transformers' ``BaseStreamer``: ``generate`` calls ``put`` with the prompt first, then
with each step's new tokens, and ``end`` once at the end.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, TextIO

from budget_forcing.formats import ThinkingFormat, ThinkingSplitter

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedTokenizerBase

__all__ = ["ThinkingStreamer", "TokenProgress"]


class ThinkingStreamer:
    """A ``generate`` streamer that prints thinking and answer live, under separate headers.

    It receives the same tokens as the returned sequence and writes exactly the text
    `ThinkingFormat.split` returns for it (one `ThinkingSplitter` does the splitting): the header
    switches from thinking to answer when the end delimiter appears, and delimiters, separators
    and EOS/padding tokens are not printed. Batch size 1 only. After ``generate``, ``thinking``
    and ``answer`` hold the streamed text.

    Example:
        >>> import io, torch
        >>> from budget_forcing.formats import THINK_FORMAT
        >>> from budget_forcing.testing import tiny_tokenizer
        >>> tok, out = tiny_tokenizer(), io.StringIO()
        >>> streamer = ThinkingStreamer(tok, THINK_FORMAT, out=out)
        >>> for ids in ([[1, 2]], *[[t] for t in tok.encode("<think>hmm</think>4", add_special_tokens=False)]):
        ...     streamer.put(torch.tensor(ids))
        >>> streamer.end()
        >>> out.getvalue()
        '--- thinking ---\\nhmm\\n--- answer ---\\n4\\n'

        With a model: ``model.generate(**inputs, logits_processor=[bf], streamer=ThinkingStreamer(tok, bf.format))``.
    """

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        fmt: ThinkingFormat,
        skip_ids: Sequence[int] = (),
        stop_ids: Sequence[int] = (),
        out: TextIO | None = None,
        thinking_header: str = "--- thinking ---",
        answer_header: str = "--- answer ---",
    ) -> None:
        self.tokenizer = tokenizer
        self.skip_ids = set(skip_ids)
        self.stop_ids = set(stop_ids)
        self.out = out if out is not None else sys.stdout
        self.headers = {"thinking": f"{thinking_header}\n", "answer": f"\n{answer_header}\n"}
        self._splitter = ThinkingSplitter(fmt)
        self._cache: list[int] = []  # tokens of the current line, decoded together
        self._printed = 0  # characters of the decoded cache already handed on
        self._at_prompt = True
        self._stopped = False

    @property
    def thinking(self) -> str:
        return self._splitter.thinking

    @property
    def answer(self) -> str | None:
        return self._splitter.answer

    def put(self, value: torch.Tensor) -> None:
        if value.dim() > 1 and value.shape[0] > 1:
            raise ValueError("Streaming supports batch size 1; generate one prompt at a time.")
        if self._at_prompt:  # generate hands over the prompt first: not shown
            self._at_prompt = False
            return
        for token in value.reshape(-1).tolist():
            if self._stopped:
                return
            if token in self.stop_ids:  # EOS: what follows is padding
                self._stopped = True
            elif token not in self.skip_ids:
                self._cache.append(token)
        text = self._decode()
        if text.endswith("\ufffd"):  # an incomplete multi-byte character: wait for the next token
            return
        self._write(self._splitter.feed(text[self._printed :]))
        # Decoding a whole line at a time keeps spaces right; start a new line afresh.
        self._cache, self._printed = ([], 0) if text.endswith("\n") else (self._cache, len(text))

    def end(self) -> None:
        if self._cache:
            self._write(self._splitter.feed(self._decode()[self._printed :]))
            self._cache, self._printed = [], 0
        self._write(self._splitter.finish())
        self.out.write("\n")
        self.out.flush()

    def _decode(self) -> str:
        return self.tokenizer.decode(
            self._cache, skip_special_tokens=False, clean_up_tokenization_spaces=False
        )

    def _write(self, pieces: list[tuple[str, str]]) -> None:
        for part, text in pieces:
            if not text:  # a part opens: its header
                self.out.write(self.headers[part])
            self.out.write(text)
        self.out.flush()


class TokenProgress:
    """A ``generate`` streamer that shows a tqdm bar of generation steps (tokens per row) on stderr.

    Any batch size: one step is one new token in every row still running. ``generate`` stops
    early when every row is finished; the bar then closes short of ``max_new_tokens``.

    Example:
        >>> import io, torch
        >>> progress = TokenProgress(max_new_tokens=3, desc="q1", file=io.StringIO())
        >>> for step in ([[5, 6]], [7], [8]):
        ...     progress.put(torch.tensor(step))
        >>> progress.end(); progress.steps
        2
    """

    def __init__(self, max_new_tokens: int, desc: str = "generating", file: TextIO | None = None) -> None:
        from tqdm.auto import tqdm

        self.steps = 0
        self._at_prompt = True
        self._bar = tqdm(
            total=max_new_tokens,
            desc=desc,
            unit="tok",
            file=file if file is not None else sys.stderr,
            leave=False,
        )

    def put(self, value: torch.Tensor) -> None:
        if self._at_prompt:
            self._at_prompt = False
            return
        self.steps += 1
        self._bar.update(1)

    def end(self) -> None:
        self._bar.close()
