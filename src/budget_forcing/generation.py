"""Answer questions with budget forcing: load a model, build prompts, one ``generate`` call per batch.

This is what ``budget-forcing generate`` runs; `budget_forcing.cli` only parses its arguments.

Example:
    >>> from budget_forcing.generation import generate_rows
    >>> from budget_forcing.testing import tiny_model, tiny_tokenizer
    >>> tok = tiny_tokenizer(); tok.padding_side = "left"
    >>> rows = generate_rows(tiny_model(tok), tok, ["What is 2 + 2?"], max=8, format="think", max_new_tokens=24)
    >>> rows[0].thinking_tokens
    8
"""

from __future__ import annotations

import json
import os
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

if TYPE_CHECKING:  # imported where used, so `budget-forcing --help` stays free of torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from budget_forcing.formats import ThinkingFormat

__all__ = [
    "GenerationResult",
    "build_prompt",
    "format_mismatch",
    "generate_rows",
    "load_model",
    "read_questions",
    "resolve_model_path",
]

#: Where the demo (``make demo``) saves its trained model; ``generate`` uses it when no model is given.
DEMO_MODEL_DIR = Path("demo_outputs") / "model"
#: Answer tokens allowed on top of the thinking budget when ``max_new_tokens`` is not given.
DEFAULT_ANSWER_ALLOWANCE = 512
#: ``max_new_tokens`` when thinking is unlimited (no ``max``) and no value is given.
DEFAULT_UNLIMITED_NEW_TOKENS = 4096
DEFAULT_BATCH_SIZE = 8
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[\w.-]+)?")


@dataclass
class GenerationResult:
    """One answered question: the texts and the processor's statistics for its row."""

    question: str
    thinking: str
    answer: str | None
    thinking_tokens: int
    answer_tokens: int
    waits: int
    ignored: int
    forced_end: bool
    text: str

    def stats_line(self) -> str:
        """The one-line statistics printed under each answer."""
        return (
            f"stats: thinking_tokens={self.thinking_tokens} answer_tokens={self.answer_tokens} "
            f"waits={self.waits} ignored={self.ignored} forced_end={str(self.forced_end).lower()}"
        )

    def render(self, index: int, total: int) -> str:
        """Human-readable output: question, thinking, answer, statistics."""
        ended = "forced end" if self.forced_end else "ended by the model"
        waits = f"{self.waits} wait{'s' if self.waits != 1 else ''}"
        thinking = self.thinking.removesuffix("\n")
        answer = (
            "--- answer: none (max_new_tokens ran out while thinking; raise --max-new-tokens or set --max) ---\n"
            if self.answer is None
            else f"--- answer ({self.answer_tokens} tokens) ---\n{self.answer}\n"
        )
        return (
            f"=== question {index}/{total} ===\n{self.question}\n"
            f"--- thinking ({self.thinking_tokens} tokens, {waits}, {ended}) ---\n{thinking}\n"
            f"{answer}{self.stats_line()}\n\n"
        )


# --------------------------------------------------------------------------------------------------
# inputs: questions, model path, model, prompts
# --------------------------------------------------------------------------------------------------


def read_questions(path: str) -> list[str]:
    """Questions from a ``.jsonl`` / ``.json`` file or a text file (one question per line; ``-`` = stdin).

    JSON rows are strings or objects with a ``question`` (or ``problem`` / ``prompt``) field.
    """
    if path == "-":
        return [line for line in sys.stdin.read().splitlines() if line.strip()]
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"--file {path!r} does not exist.")
    if file.suffix == ".json":
        rows = json.loads(file.read_text(encoding="utf-8"))
        if not isinstance(rows, list):
            raise ValueError(f"{path}: a .json file must hold a list of questions.")
        return [_question_of(row, f"{path}[{i}]") for i, row in enumerate(rows)]
    lines = file.read_text(encoding="utf-8").splitlines()
    if file.suffix == ".jsonl":
        return [
            _question_of(json.loads(line), f"{path}:{i + 1}") for i, line in enumerate(lines) if line.strip()
        ]
    return [line for line in lines if line.strip()]


def _question_of(row: Any, where: str) -> str:
    if isinstance(row, str):
        return row
    if isinstance(row, dict):
        for key in ("question", "problem", "prompt"):
            if isinstance(row.get(key), str):
                return row[key]
    raise ValueError(
        f"{where}: expected a string or an object with a 'question', 'problem' or 'prompt' field."
    )


def resolve_model_path(model: str | None, search: Sequence[Path] | None = None) -> str:
    """A local model directory or a hub id that can be loaded, checked before any download starts.

    No model: the demo's model (``demo_outputs/model`` under one of ``search``, default the
    working directory). A path that does not
    exist is an immediate error (naming a close local match) unless it is a hub id (``owner/name``)
    that is in the local cache or, with the hub reachable, exists there; the hub is asked once,
    never retried for minutes.
    """
    if model is None:
        for root in search or [Path.cwd()]:
            if (root / DEMO_MODEL_DIR / "config.json").is_file():
                return str(root / DEMO_MODEL_DIR)
        raise FileNotFoundError(
            f"No model given and no demo model at {DEMO_MODEL_DIR}/. Train the demo model with `make demo` "
            "(a few minutes on a CPU), or pass a model directory or hub id, e.g. "
            "`budget-forcing generate simplescaling/s1.1-32B --question ...`."
        )
    path = Path(model).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"{model!r} is not a model directory: it has no config.json.")
        return str(path)
    missing = f"Model directory {model!r} does not exist{_did_you_mean(path)}."
    if not _HUB_ID.fullmatch(model):
        raise FileNotFoundError(f"{missing} Pass a local model directory or a hub id (owner/name).")
    from huggingface_hub import HfApi, try_to_load_from_cache
    from huggingface_hub.errors import HfHubHTTPError

    if isinstance(try_to_load_from_cache(model, "config.json"), str):
        return model  # downloaded before: loads offline
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes", "on"):
        raise FileNotFoundError(
            f"{missing} As a hub id it is not in the local cache (HF_HUB_OFFLINE is set)."
        )
    try:
        HfApi().model_info(model, timeout=10)
    except HfHubHTTPError as err:
        raise FileNotFoundError(f"{missing} As a hub id: {str(err).splitlines()[0]}") from err
    except Exception as err:  # noqa: BLE001 - network errors of any HTTP stack
        raise FileNotFoundError(
            f"{missing} As a hub id it is not in the local cache and the hub is unreachable "
            f"({type(err).__name__}: {err})."
        ) from err
    return model


def _did_you_mean(path: Path) -> str:
    """``"; did you mean 'x'?"`` for the closest existing path, component by component."""
    import difflib

    found, parts = (
        Path(path.anchor) if path.is_absolute() else Path(),
        path.parts[1 if path.is_absolute() else 0 :],
    )
    for part in parts:
        if not (found / part).exists():
            names = [p.name for p in found.iterdir()] if found.is_dir() else []
            close = difflib.get_close_matches(part, names, n=1)
            if not close:
                return ""
            part = close[0]
        found = found / part
    return f"; did you mean {str(found)!r}?"


def load_model(
    path: str, device: str = "auto", dtype: str = "auto"
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a causal LM and its tokenizer for generation (left padding, a pad token)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if device == "auto":  # every visible GPU (large models are spread over them), else the CPU
        device = "auto" if torch.cuda.is_available() else "cpu"
    if dtype == "auto":
        torch_dtype: Any = "auto" if device != "cpu" else torch.float32
    else:
        torch_dtype = getattr(torch, dtype)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype, device_map=device)
    except OSError as err:
        raise FileNotFoundError(
            f"Could not load model {path!r}: {err}\nPass a local model directory, or a hub id with network "
            "access (unset HF_HUB_OFFLINE) or already in the local cache."
        ) from err
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model.eval(), tokenizer


def format_mismatch(fmt: str | ThinkingFormat, tokenizer: PreTrainedTokenizerBase) -> str | None:
    """A warning when ``fmt`` is not the thinking format the tokenizer's chat template writes, else None.

    Example:
        >>> from budget_forcing.testing import tiny_tokenizer
        >>> tok = tiny_tokenizer(); tok.chat_template = "{{ '<|im_start|>think' }}"
        >>> format_mismatch("think", tok)[:40]
        "--format think, but this model's chat te"
        >>> format_mismatch("s1", tok) is None
        True
    """
    from budget_forcing.formats import get_format

    chosen = get_format(fmt, tokenizer)
    try:
        detected = get_format("auto", tokenizer)
    except ValueError:  # the tokenizer does not say
        return None
    if detected.end == chosen.end:
        return None
    return (
        f"--format {chosen.name}, but this model's chat template and vocabulary are those of the "
        f"{detected.name!r} format ({detected.start} ... {detected.end}): the model will not end thinking "
        f"where budget forcing looks for it. Use --format {detected.name} (or auto)."
    )


def build_prompt(
    tokenizer: PreTrainedTokenizerBase, question: str, system: str | None, chat_template: bool
) -> str:
    """The chat-formatted prompt with the generation prompt (the processor opens thinking itself)."""
    if not chat_template:
        return question
    if not tokenizer.chat_template:
        raise ValueError(
            "This tokenizer has no chat template. Pass --no-chat-template to use each question as the raw prompt."
        )
    messages = ([{"role": "system", "content": system}] if system else []) + [
        {"role": "user", "content": question}
    ]
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


# --------------------------------------------------------------------------------------------------
# generate
# --------------------------------------------------------------------------------------------------


def _eos_ids(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> set[int]:
    ids = model.generation_config.eos_token_id
    ids = set(ids if isinstance(ids, list) else [] if ids is None else [ids])
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    return ids


def _generated_text(
    ids: list[int], tokenizer: PreTrainedTokenizerBase, eos: set[int], pad: int | None
) -> str:
    """Decode one row's new tokens: up to its first EOS, without padding (what a streamer sees)."""
    kept: list[int] = []
    for token in ids:
        if token in eos:
            break
        if token != pad:
            kept.append(token)
    return tokenizer.decode(kept, skip_special_tokens=False, clean_up_tokenization_spaces=False)


def generate_rows(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    questions: Sequence[str],
    *,
    min: int = 0,
    max: int | None = None,
    num_waits: int = 0,
    wait: str | None = "Wait",
    format: str = "auto",
    answer_prefix: str | None = "Final Answer:",
    max_answer_tokens: int | None = None,
    compile: bool = False,
    max_new_tokens: int | None = None,
    stop: Sequence[str] = (),
    temperature: float = 0.0,
    top_p: float = 1.0,
    seed: int = 0,
    batch_size: int = DEFAULT_BATCH_SIZE,
    system: str | None = None,
    chat_template: bool = True,
    stream: TextIO | None = None,
    progress: TextIO | None = None,
) -> list[GenerationResult]:
    """Answer ``questions`` with one budget-forced ``generate`` call per batch.

    With ``stream`` (a text file such as ``sys.stdout``), prompts run one at a time and thinking
    and answer are written live under separate headers. With ``progress`` (e.g. ``sys.stderr``),
    a bar counts each batch's generated tokens.
    """
    import torch
    from transformers import set_seed

    import budget_forcing
    from budget_forcing.streaming import ThinkingStreamer, TokenProgress

    bf = budget_forcing.BudgetForcing(
        tokenizer,
        min=min,
        max=max,
        format=format,
        wait=wait,
        num_waits=num_waits,
        answer_prefix=answer_prefix,
        max_answer_tokens=max_answer_tokens,
        compile=compile,
    )
    criteria = bf.stopping_criteria(stop_strings=list(stop))
    if max_new_tokens is None:
        if max is None:
            max_new_tokens = DEFAULT_UNLIMITED_NEW_TOKENS
        else:
            max_new_tokens = max + bf.end_overhead + (max_answer_tokens or DEFAULT_ANSWER_ALLOWANCE)
    sampling: dict[str, Any] = (
        {"do_sample": True, "temperature": temperature, "top_p": top_p}
        if temperature > 0
        else {"do_sample": False}
    )
    eos, pad = _eos_ids(model, tokenizer), tokenizer.pad_token_id
    if stream is not None:
        batch_size = 1
    set_seed(seed)
    results: list[GenerationResult] = []
    for start in range(0, len(questions), batch_size):
        batch = list(questions[start : start + batch_size])
        prompts = [build_prompt(tokenizer, q, system, chat_template) for q in batch]
        inputs = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False).to(
            model.device
        )
        streamer: Any = None
        if stream is not None:
            stream.write(f"=== question {start + 1}/{len(questions)} ===\n{batch[0]}\n")
            streamer = ThinkingStreamer(
                tokenizer, bf.format, skip_ids=[] if pad is None else [pad], stop_ids=eos, out=stream
            )
        elif progress is not None:
            where = f"{start + 1}-{start + len(batch)}" if len(batch) > 1 else f"{start + 1}"
            streamer = TokenProgress(
                max_new_tokens, desc=f"question {where} of {len(questions)}", file=progress
            )
        with torch.inference_mode():
            out = model.generate(
                **inputs,
                logits_processor=[bf],
                stopping_criteria=[criteria],
                max_new_tokens=max_new_tokens,
                streamer=streamer,
                **sampling,
            )
        stats = bf.stats
        new_tokens = out[:, inputs["input_ids"].shape[1] :].tolist()
        for row, (question, ids) in enumerate(zip(batch, new_tokens, strict=True)):
            text = _generated_text(ids, tokenizer, eos, pad)
            thinking, answer = bf.format.split(text)
            result = GenerationResult(
                question=question,
                thinking=thinking,
                answer=answer,
                thinking_tokens=int(stats.thinking_tokens[row]),
                answer_tokens=int(stats.answer_tokens[row]),
                waits=int(stats.waits[row]),
                ignored=int(stats.ignored[row]),
                forced_end=bool(stats.forced_end[row]),
                text=text,
            )
            results.append(result)
            if stream is not None:
                stream.write(result.stats_line() + "\n\n")
                stream.flush()
    return results
