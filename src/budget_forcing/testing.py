"""Tiny, offline tokenizers and models for tests, demos and benchmarks.

Nothing here touches a hub: the tokenizer is a byte-level BPE trained in memory with the real
special tokens of Qwen-style reasoning models, and the models are randomly initialised from tiny
configs.

Example:
    >>> from budget_forcing.testing import tiny_tokenizer, tiny_model
    >>> tok = tiny_tokenizer()
    >>> model = tiny_model(tok)
    >>> tok.convert_tokens_to_ids("</think>") != tok.unk_token_id
    True
"""

from __future__ import annotations

import functools
from collections.abc import Iterable

import torch
from transformers import LogitsProcessor, PreTrainedModel, PreTrainedTokenizerFast

__all__ = [
    "QWEN_CHAT_TEMPLATE",
    "QWEN3_CHAT_TEMPLATE",
    "QWEN_VOCAB_SIZE",
    "qwen_tokenizer",
    "SPECIAL_TOKENS",
    "DEFAULT_CORPUS",
    "Nudge",
    "tiny_tokenizer",
    "tiny_model",
    "save_tiny_model",
]

#: The special tokens of Qwen2.5 / s1 / Qwen3-style models, in this order (ids 0..4).
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>"]

#: Qwen2.5's chat template, reduced to what reasoning models use (system + turns + generation prompt).
QWEN_CHAT_TEMPLATE = (
    "{%- if messages[0]['role'] != 'system' %}"
    "{{- '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)

#: A small corpus covering the words budget forcing injects plus digits and arithmetic.
DEFAULT_CORPUS = [
    "Wait, let me check that again. Final Answer: 42",
    "Hmm, alternatively we could add the numbers step by step.",
    "think answer system user assistant You are a helpful assistant.",
    "Question: What is 12 + 30? Answer: 42. The answer is \\boxed{42}.",
    "First, 3 + 4 = 7. Then 7 * 2 = 14. So the result is 14.",
    "Let x = 5. Then x^2 = 25 and 2x = 10, so x^2 + 2x = 35.",
    "0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20 100 1000",
    "+ - * / = ( ) [ ] { } < > , . : ; ! ? \\frac{1}{2} \\sqrt{2}",
    "The quick brown fox jumps over the lazy dog.\nA new line.\n\nTwo new lines.",
]


@functools.lru_cache(maxsize=8)
def _trained_tokenizer_json(corpus: tuple[str, ...], vocab_size: int) -> str:
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

    tok = Tokenizer(models.BPE())
    # Qwen2's normalizer and pre-tokenizer (byte-level, digits split one by one), so the saved
    # tokenizer reloads through AutoTokenizer as a Qwen2Tokenizer with identical ids.
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus, trainer=trainer)
    return tok.to_str()


def tiny_tokenizer(
    corpus: Iterable[str] | None = None,
    vocab_size: int = 384,
    chat_template: str = QWEN_CHAT_TEMPLATE,
) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer with Qwen's special tokens, trained in memory (cached).

    `eos_token` is `<|im_end|>` and `pad_token` is `<|endoftext|>`, as in Qwen2.5-Instruct;
    padding is on the left, as decoder-only generation needs.
    """
    from tokenizers import Tokenizer

    corpus = tuple(corpus) if corpus is not None else tuple(DEFAULT_CORPUS)
    backend = Tokenizer.from_str(_trained_tokenizer_json(corpus, vocab_size))
    tok = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=SPECIAL_TOKENS[1:2] + SPECIAL_TOKENS[3:],
        padding_side="left",
    )
    tok.chat_template = chat_template
    return tok


def tiny_model(
    tokenizer: PreTrainedTokenizerFast,
    arch: str = "qwen2",
    hidden_size: int = 32,
    num_layers: int = 2,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    vocab_size: int | None = None,
    **config_kwargs,
) -> PreTrainedModel:
    """A randomly initialised causal LM (`"qwen2"` or `"llama"`) sized for CPU tests.

    ``vocab_size`` defaults to the tokenizer's length; real models pad it (Qwen: `QWEN_VOCAB_SIZE`).
    """
    from transformers import AutoModelForCausalLM, LlamaConfig, Qwen2Config

    config_cls = {"qwen2": Qwen2Config, "llama": LlamaConfig}[arch]
    config_kwargs.setdefault("intermediate_size", 2 * hidden_size)
    config = config_cls(
        vocab_size=vocab_size or len(tokenizer),
        hidden_size=hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        bos_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
        **config_kwargs,
    )
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=dtype, attn_implementation="sdpa")
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    return model.eval()


def save_tiny_model(path=None) -> str:
    """Save a tiny tokenizer + model to ``path`` (a new temporary folder by default); returns it.

    An offline stand-in for a hub id in examples: ``AutoModelForCausalLM.from_pretrained(path)``.
    """
    import tempfile

    path = str(path or tempfile.mkdtemp(prefix="tiny-s1-"))
    tok = tiny_tokenizer()
    tiny_model(tok).save_pretrained(path)
    tok.save_pretrained(path)
    return path


#: Qwen2.5 / Qwen3 embedding rows (the tokenizer's 151,669 ids, padded to a multiple of 128).
QWEN_VOCAB_SIZE = 151_936

#: Qwen's added tokens at their real ids, after the 151,643 byte-level BPE ranks (``special``:
#: whether the tokenizer marks them special; Qwen3 adds <tool_response> and <think> as plain text).
_QWEN_ADDED = [
    ("<|endoftext|>", True), ("<|im_start|>", True), ("<|im_end|>", True),
    ("<|object_ref_start|>", True), ("<|object_ref_end|>", True), ("<|box_start|>", True),
    ("<|box_end|>", True), ("<|quad_start|>", True), ("<|quad_end|>", True), ("<|vision_start|>", True),
    ("<|vision_end|>", True), ("<|vision_pad|>", True), ("<|image_pad|>", True), ("<|video_pad|>", True),
    ("<tool_call>", False), ("</tool_call>", False), ("<|fim_prefix|>", False), ("<|fim_middle|>", False),
    ("<|fim_suffix|>", False), ("<|fim_pad|>", False), ("<|repo_name|>", False), ("<|file_sep|>", False),
]  # fmt: skip
_QWEN3_ADDED = [
    ("<tool_response>", False),
    ("</tool_response>", False),
    ("<think>", False),
    ("</think>", False),
]

#: Qwen3's chat template, reduced: the generation prompt opens the assistant turn; a reasoning
#: model then writes ``<think>\n...\n</think>\n\n`` and its answer.
QWEN3_CHAT_TEMPLATE = QWEN_CHAT_TEMPLATE.replace(
    "{%- if add_generation_prompt %}",
    "{%- if false %}<think>\n\n</think>\n\n{%- endif %}{%- if add_generation_prompt %}",
)


def _qwen_merges(ranks: dict[bytes, int]) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """The vocabulary and merges of a tiktoken BPE, as transformers' ``TikTokenConverter`` derives
    them (every split of a token into two tokens, by the rank of the result, then of the parts)."""
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    byte_encoder = bytes_to_unicode()
    table = [byte_encoder[b] for b in range(256)]

    def text(b: bytes) -> str:
        return "".join(table[c] for c in b)

    vocab, merges = {}, []
    for token, rank in ranks.items():
        vocab[text(token)] = rank
        splits = [
            (ranks[token[:i]], ranks[token[i:]], token[:i], token[i:])
            for i in range(1, len(token))
            if token[:i] in ranks and token[i:] in ranks
        ]
        merges.extend((rank, a, b, left, right) for a, b, left, right in sorted(splits))
    merges.sort(key=lambda m: m[0])
    return vocab, [(text(left), text(right)) for _, _, _, left, right in merges]


def _cache_dir():
    import os
    from pathlib import Path

    root = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(root) / "budget_forcing"


@functools.lru_cache(maxsize=2)
def _qwen_tokenizer_json(version: str) -> str:
    """Qwen's tokenizer as a tokenizers JSON, built once from ``qwen.tiktoken`` and cached on disk."""
    import base64
    import importlib.util
    import os
    from pathlib import Path

    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers
    from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

    spec = importlib.util.find_spec("dashscope")  # locates the wheel without importing it
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("qwen_tokenizer() needs the `dashscope` wheel: pip install 'budget-forcing[test]'.")
    path = Path(spec.submodule_search_locations[0]) / "resources" / "qwen.tiktoken"
    stat = path.stat()
    cached = _cache_dir() / f"qwen{version}-{stat.st_size}-{int(stat.st_mtime)}.json"
    if cached.exists():
        return cached.read_text()

    ranks = {}
    for line in path.read_bytes().splitlines():
        if line:
            token, rank = line.split()
            ranks[base64.b64decode(token)] = int(rank)
    vocab, merges = _qwen_merges(ranks)
    backend = Tokenizer(models.BPE(vocab, merges, fuse_unk=False, ignore_merges=True))
    backend.normalizer = normalizers.NFC()
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    backend.decoder = decoders.ByteLevel()
    added = _QWEN_ADDED + (_QWEN3_ADDED if version == "3" else [])
    backend.add_special_tokens([AddedToken(t, normalized=False, special=special) for t, special in added])
    data = backend.to_str()
    cached.parent.mkdir(parents=True, exist_ok=True)
    tmp = cached.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(data)
    os.replace(tmp, cached)  # atomic: parallel test workers never read half a file
    return data


@functools.lru_cache(maxsize=2)
def qwen_tokenizer(version: str = "2.5") -> PreTrainedTokenizerFast:
    """Qwen2.5's or Qwen3's real tokenizer, rebuilt offline from the ``dashscope`` wheel (cached).

    The 151,643 byte-level BPE ranks of ``qwen.tiktoken`` (merges derived as transformers'
    ``TikTokenConverter`` does) with Qwen2's pre-tokenizer, then the added tokens at their real ids
    (151643 ``<|endoftext|>`` ... 151668 ``</think>`` for Qwen3). EOS is ``<|im_end|>`` and padding
    ``<|endoftext|>`` on the left, as in the instruct models. The first build takes some seconds; it
    is cached under ``~/.cache/budget_forcing``.

    Example:
        >>> tok = qwen_tokenizer("3")  # doctest: +SKIP
        >>> tok.encode("Hello world"), tok.convert_tokens_to_ids("</think>")  # doctest: +SKIP
        ([9707, 1879], 151668)
    """
    from tokenizers import Tokenizer

    if version not in ("2.5", "3"):
        raise ValueError(f"version must be '2.5' or '3', got {version!r}.")
    tok = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(_qwen_tokenizer_json(version)),
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        padding_side="left",
    )
    tok.name_or_path = f"Qwen{version}-offline"
    tok.chat_template = QWEN3_CHAT_TEMPLATE if version == "3" else QWEN_CHAT_TEMPLATE
    return tok


class Nudge(LogitsProcessor):
    """Boosts end-of-thinking attempts as a deterministic function of the tokens so far.

    Random tiny models almost never pick ``</think>`` or EOS on their own; this makes them try to
    stop at content-defined places, identical in the one-pass and the multi-call runs: it depends on
    the non-padding tokens only, never on positions or padding.
    """

    def __init__(self, targets: list[int], period: int = 5, strength: float = 40.0, pad_id: int = 0) -> None:
        self.targets, self.period, self.strength, self.pad_id = targets, period, strength, pad_id

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        length = (input_ids != self.pad_id).sum(-1)
        key = (length * 7 + input_ids[:, -1]) % self.period
        scores = scores.clone()
        for k, target in enumerate(self.targets):
            scores[:, target] += torch.where(key == k, self.strength, 0.0).to(scores.dtype)
        return scores
