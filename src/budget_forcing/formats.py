"""Thinking formats: where a model's reasoning starts and ends, as text and as token ids.

Two formats ship:

* ``"s1"``: s1 / s1.1 models (Qwen2.5 chat format). Thinking runs between ``<|im_start|>think``
  and ``<|im_start|>answer``; the answer ends with ``<|im_end|>``. The training text is
  ``<|im_start|>think\\n{thinking}\\n<|im_start|>answer\\n{answer}``.
* ``"think"``: Qwen3, QwQ and DeepSeek-R1 distills. Thinking runs between exactly the single
  tokens ``<think>`` and ``</think>``; as in their chat templates, ``"\\n"`` follows ``<think>``
  and ``"\\n\\n"`` follows ``</think>`` (``<think>\\n{thinking}\\n</think>\\n\\n{answer}``), so a
  forced answer prefix is written ``</think>\\n\\nFinal Answer:``.

Any other convention is a `ThinkingFormat`; delimiters may span several tokens.

Example:
    >>> from budget_forcing.formats import ThinkingFormat, get_format
    >>> get_format("s1").render("2 + 2 = 4", "Answer: 4")
    '<|im_start|>think\\n2 + 2 = 4\\n<|im_start|>answer\\nAnswer: 4'
    >>> qwen3 = ThinkingFormat("qwen3", "<think>", "</think>", start_sep="\\n", answer_sep="\\n\\n")
    >>> qwen3.render("2 + 2 = 4", "4")
    '<think>\\n2 + 2 = 4\\n</think>\\n\\n4'
"""

from __future__ import annotations

from dataclasses import dataclass

from transformers import PreTrainedTokenizerBase

__all__ = [
    "ThinkingFormat",
    "ThinkingSplitter",
    "S1_FORMAT",
    "THINK_FORMAT",
    "FORMATS",
    "get_format",
    "encode_exact",
]


@dataclass(frozen=True)
class ThinkingFormat:
    """Delimiters and newline conventions of one way of writing "think, then answer".

    Attributes:
        name: short name, used in messages and reports.
        start: text that opens thinking (``"<|im_start|>think"``, ``"<think>"``).
        end: text that closes thinking and opens the answer (``"<|im_start|>answer"``, ``"</think>"``).
        answer_end: text that ends the answer, if the format has one besides EOS (``"<|im_end|>"``).
        start_sep: what follows ``start`` in training text (the model writes it itself at inference).
        answer_sep: what follows ``end`` in training text, and what separates ``end`` from a
            forced answer prefix at inference (``"\\n"`` for s1: ``<|im_start|>answer\\nFinal Answer:``).
        single_token: the delimiters must each be exactly one token of the tokenizer.
    """

    name: str
    start: str
    end: str
    answer_end: str | None = None
    start_sep: str = ""
    answer_sep: str = ""
    single_token: bool = False

    def __post_init__(self) -> None:
        if not self.start or not self.end:
            raise ValueError(f"ThinkingFormat {self.name!r}: `start` and `end` must be non-empty strings.")
        if self.start == self.end:
            raise ValueError(f"ThinkingFormat {self.name!r}: `start` and `end` must differ.")

    def render(self, thinking: str, answer: str) -> str:
        """The assistant text of one training example: start, thinking, end, answer.

        A newline separates thinking from the end delimiter unless the thinking already ends with one
        or the format has no separators at all (``"think"``: nothing is added).
        """
        newline = "" if not self.start_sep or thinking.endswith("\n") else "\n"
        return f"{self.start}{self.start_sep}{thinking}{newline}{self.end}{self.answer_sep}{answer}"

    def render_attempt(self, trace: str, attempt: str, answer_prefix: str | None = "Answer: ") -> str:
        """A training example from a teacher's trace and attempt, built as s1 builds them.

        Both are stripped, and ``answer_prefix`` is prepended unless the attempt already contains it.

        Example:
            >>> S1_FORMAT.render_attempt(" 1+1=2 ", "Final Answer: 2")
            '<|im_start|>think\\n1+1=2\\n<|im_start|>answer\\nFinal Answer: 2'
        """
        answer = attempt.strip()
        if answer_prefix and answer_prefix.strip() not in answer:
            answer = answer_prefix + answer
        return self.render(trace.strip(), answer)

    def split(self, text: str) -> tuple[str, str | None]:
        """Split generated text into ``(thinking, answer)``.

        The text starts inside (or just before) the thinking block, so it splits at the *first* end
        delimiter, the one that ended thinking (an answer may repeat the delimiter). Text that never
        closed thinking is all thinking, and ``answer`` is None. The start delimiter, separators and
        the answer's end marker are stripped. `ThinkingSplitter` does the same on text that arrives
        piece by piece.

        Example:
            >>> S1_FORMAT.split("<|im_start|>think\\n2 + 2 = 4\\n<|im_start|>answer\\n4<|im_end|>")
            ('2 + 2 = 4', '4')
        """
        splitter = ThinkingSplitter(self)
        splitter.feed(text)
        splitter.finish()
        return splitter.thinking, splitter.answer


class ThinkingSplitter:
    """`ThinkingFormat.split` for text that arrives piece by piece (a streamer's decoded tokens).

    `feed` returns the pieces that are final, as ``(part, text)`` with ``part`` ``"thinking"`` or
    ``"answer"``; each part opens with an empty piece, so a caller can print a header there. Text
    that may still turn out to be a delimiter or separator is held back until the next `feed` or
    `finish`. Afterwards ``thinking`` and ``answer`` equal ``fmt.split(all_text)``, and
    ``answer_start`` is where the answer begins in the raw text (None while there is no answer).

    Example:
        >>> splitter = ThinkingSplitter(ThinkingFormat("plain", "<think>", "</think>"))
        >>> splitter.feed("<think>2 + 2 = 4</th")  # " = 4</th" may be the start of "</think>"
        [('thinking', ''), ('thinking', '2 + 2')]
        >>> splitter.feed("ink>4")
        [('thinking', ' = 4'), ('answer', ''), ('answer', '4')]
        >>> splitter.finish(), splitter.thinking, splitter.answer, splitter.answer_start
        ([], '2 + 2 = 4', '4', 24)
    """

    def __init__(self, fmt: ThinkingFormat) -> None:
        self.fmt = fmt
        self.thinking = ""
        self.answer: str | None = None
        self.answer_start: int | None = None
        self._pending = ""  # received, not yet handed on
        self._seen = 0  # characters received in all
        self._state = "start"  # start -> thinking -> separator -> answer -> done

    def feed(self, text: str) -> list[tuple[str, str]]:
        """Take the next piece of text; return the pieces that are now final."""
        self._pending += text
        self._seen += len(text)
        return self._advance(final=False)

    def finish(self) -> list[tuple[str, str]]:
        """The text is complete: hand on everything still held back."""
        return self._advance(final=True)

    def _emit(self, out: list[tuple[str, str]], text: str) -> None:
        part = "thinking" if self._state == "thinking" else "answer"
        if part == "thinking":
            self.thinking += text
        else:
            self.answer = (self.answer or "") + text
        if text:
            out.append((part, text))

    def _advance(self, final: bool) -> list[tuple[str, str]]:
        fmt, out = self.fmt, []
        while True:
            if self._state == "start":
                # Drop the start delimiter (forced first unless the prompt left thinking open).
                prefix = fmt.start + fmt.start_sep
                if not final and prefix.startswith(self._pending) and self._pending != prefix:
                    return out  # still possibly the start delimiter
                rest = self._pending.removeprefix(fmt.start)
                if not final and len(rest) < len(fmt.start_sep) and fmt.start_sep.startswith(rest):
                    return out  # the separator may follow
                self._pending = rest.removeprefix(fmt.start_sep)
                self._state = "thinking"
                out.append(("thinking", ""))
            elif self._state == "thinking":
                head, found, tail = self._pending.partition(fmt.end)
                if found:
                    # Thinking never contains the end delimiter: the first one closes it.
                    self._emit(out, head.removesuffix("\n") if fmt.start_sep else head)
                    self._pending, self._state, self.answer = tail, "separator", ""
                    out.append(("answer", ""))
                    continue
                # Hold back what could be the beginning of the end delimiter (and the newline before it).
                keep = 0 if final else len(fmt.end) + (1 if fmt.start_sep else 0)
                cut = max(len(self._pending) - keep, 0)
                self._emit(out, self._pending[:cut])
                self._pending = self._pending[cut:]
                return out
            elif self._state == "separator":
                sep = fmt.answer_sep
                if not final and len(self._pending) < len(sep) and sep.startswith(self._pending):
                    return out
                self._pending = self._pending.removeprefix(sep)
                self.answer_start = self._seen - len(self._pending)
                self._state = "answer"
            elif self._state == "answer":
                if fmt.answer_end and fmt.answer_end in self._pending:
                    self._emit(out, self._pending.split(fmt.answer_end, 1)[0])
                    self._pending, self._state = "", "done"
                    return out
                keep = 0 if final or not fmt.answer_end else len(fmt.answer_end) - 1
                cut = max(len(self._pending) - keep, 0)
                self._emit(out, self._pending[:cut])
                self._pending = self._pending[cut:]
                return out
            else:  # done: the answer's end marker was seen; ignore the rest
                self._pending = ""
                return out


S1_FORMAT = ThinkingFormat(
    name="s1",
    start="<|im_start|>think",
    end="<|im_start|>answer",
    answer_end="<|im_end|>",
    start_sep="\n",
    answer_sep="\n",
)
# Qwen3's chat template renders a turn as "<think>\n" + reasoning + "\n</think>\n\n" + answer, and
# DeepSeek-R1 distills write the same separators, so a forced end is "\n</think>\n\nFinal Answer:".
THINK_FORMAT = ThinkingFormat(
    name="think", start="<think>", end="</think>", start_sep="\n", answer_sep="\n\n", single_token=True
)
FORMATS: dict[str, ThinkingFormat] = {"s1": S1_FORMAT, "think": THINK_FORMAT}


def encode_exact(tokenizer: PreTrainedTokenizerBase, text: str, what: str) -> list[int]:
    """Token ids of ``text`` encoded on its own, checked to decode back to exactly ``text``.

    Raises a ValueError naming ``what`` (e.g. ``"wait string"``) when the tokenizer cannot
    represent the text, so a typo or a missing special token never becomes a silent wrong answer.
    """
    if not text:
        raise ValueError(f"The {what} is empty; pass a non-empty string.")
    ids = tokenizer.encode(text, add_special_tokens=False)
    decoded = tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)
    unk = getattr(tokenizer, "unk_token_id", None)
    if not ids or decoded != text or (unk is not None and unk in ids):
        raise ValueError(
            f"The tokenizer cannot encode the {what} {text!r} (it round-trips to {decoded!r}). "
            "Use a string the tokenizer can represent, or add it as a token with "
            "`tokenizer.add_tokens([...])` and resize the model's embeddings."
        )
    return ids


def _single_token(tokenizer: PreTrainedTokenizerBase, text: str) -> bool:
    try:
        return len(encode_exact(tokenizer, text, "delimiter")) == 1
    except ValueError:
        return False


def get_format(
    format: str | ThinkingFormat = "auto", tokenizer: PreTrainedTokenizerBase | None = None
) -> ThinkingFormat:
    """Resolve ``"auto"``, ``"s1"``, ``"think"`` or a `ThinkingFormat`.

    ``"auto"`` looks at the tokenizer: a chat template that writes ``<think>`` means ``"think"``,
    one that writes ``<|im_start|>think`` (or a ``simplescaling/s1`` tokenizer) means ``"s1"``;
    otherwise the format whose delimiters are single tokens of the vocabulary, when only one is.
    """
    if isinstance(format, ThinkingFormat):
        return format
    if format != "auto":
        if format not in FORMATS:
            raise ValueError(
                f"Unknown format {format!r}; use 'auto', one of {sorted(FORMATS)} or a ThinkingFormat."
            )
        return FORMATS[format]
    if tokenizer is None:
        raise ValueError("format='auto' needs the tokenizer; pass it, or name the format ('s1' or 'think').")
    template = tokenizer.chat_template if isinstance(tokenizer.chat_template, str) else ""
    name = (getattr(tokenizer, "name_or_path", "") or "").lower()
    if "<|im_start|>think" in template or "simplescaling/s1" in name:
        return S1_FORMAT
    if "<think>" in template or "</think>" in template:
        return THINK_FORMAT
    has_think = _single_token(tokenizer, "<think>") and _single_token(tokenizer, "</think>")
    has_s1 = _single_token(tokenizer, "<|im_start|>")
    if has_think != has_s1:
        return THINK_FORMAT if has_think else S1_FORMAT
    found = (
        "both <think>/</think> and <|im_start|>" if has_think else "neither <think>/</think> nor <|im_start|>"
    )
    raise ValueError(
        f"format='auto' cannot tell the thinking format of this tokenizer: it has {found} as single tokens "
        "and its chat template names neither. Pass format='s1' (s1/s1.1 models), format='think' "
        "(Qwen3, QwQ, DeepSeek-R1 distills) or a budget_forcing.ThinkingFormat."
    )
