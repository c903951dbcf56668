"""lm-evaluation-harness integration: evaluate any Hugging Face model with budget forcing.

``BudgetForcingLM`` is lm-eval's ``HFLM`` whose ``generate_until`` runs each batch as ONE
``model.generate`` call with the `budget_forcing.BudgetForcing` logits processor and its
stopping criteria, so lm-eval's stop strings (``"Question:"``, ``"</s>"``...) only apply to the
answer, never to the thinking trace. It is registered in lm-eval as ``hf-budget-forcing`` when this
module is imported.

lm-eval 0.4.13 loads no plugins, so the stock ``lm_eval`` command does not know ``hf-budget-forcing``.
``budget-forcing eval`` (or ``budget-forcing-eval``) registers it, adds the packaged ``*_bf`` tasks
(`budget_forcing.tasks`) to the task path and hands the command line to lm-eval unchanged::

    budget-forcing-eval --model hf-budget-forcing \\
        --model_args pretrained=simplescaling/s1.1-32B,thinking_max=8000,num_waits=2,dtype=bfloat16 \\
        --tasks aime24_bf --apply_chat_template \\
        --gen_kwargs max_gen_toks=32768 --batch_size 8 --output_path results --log_samples

(``python -m budget_forcing.integrations.lm_eval ...`` does the same.)

Budget settings (``--model_args``, each may be overridden per run in ``--gen_kwargs``):

* ``thinking_min`` (0): minimum thinking tokens; earlier attempts to end thinking become ``wait``.
* ``thinking_max`` (``auto``): maximum thinking tokens, an int, ``none`` (no cap) or ``auto``:
  what is left of ``max_gen_toks`` after the forced end-of-thinking tokens (``end_overhead``) and
  ``answer_room`` (100) tokens for the answer. s1 also subtracts the prompt length because its
  limit is the whole context window; here ``max_gen_toks`` only counts new tokens.
* ``num_waits`` (0): ignore the model's first N attempts to end thinking (s1's 2/4/6 "Wait").
* ``wait`` (``Wait``), ``answer_prefix`` (``Final Answer:``, ``none`` for nothing),
  ``max_answer_tokens`` (none), ``answer_room`` (100).

Model-only settings: ``format`` (``auto``/``s1``/``think``), ``output`` (``full``: the thinking,
the end delimiter and the answer, special tokens kept so graders can find the answer;
``answer``: only the answer, as lm-eval's ``think_end_token`` would give) and ``sidecar``.

The sidecar is a JSONL file with one row per generation: ``task``, ``doc_id``, ``repeat``,
``prompt_hash`` (lm-eval's ``hash_string`` of the prompt, the same value as ``prompt_hash`` in
``--log_samples`` output), ``prompt_tokens``, ``thinking_tokens``, ``answer_tokens``,
``generated_tokens``, ``waits``, ``ignored``, ``forced_end`` and the budget used. Its path is
``sidecar=...`` (a ``.jsonl`` file or a directory); otherwise, with the console script and
``--output_path``, it is ``<output_path>/<model name>/budget_forcing_<date>.jsonl`` next to
lm-eval's samples. The same rows are kept in ``lm.budget_records`` for Python callers, and their
per-task means (thinking and answer tokens, waits, forced-end rate) and the settings go into lm-eval's
results file as ``config.budget_forcing`` (`BudgetForcingLM.get_model_info`).

Example:
    >>> import lm_eval  # doctest: +SKIP
    >>> from budget_forcing.integrations.lm_eval import BudgetForcingLM  # doctest: +SKIP
    >>> lm = BudgetForcingLM(pretrained="simplescaling/s1.1-1.5B", thinking_max=2000)  # doctest: +SKIP
    >>> out = lm_eval.simple_evaluate(model=lm, tasks=["aime24_bf"], apply_chat_template=True)  # doctest: +SKIP
    >>> lm.budget_records[0]["thinking_tokens"] <= 2000  # doctest: +SKIP
    True
"""

from __future__ import annotations

import json
import logging
import os
import sys
from dataclasses import asdict, dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Any

try:
    import torch
    from lm_eval.api.instance import Instance
    from lm_eval.api.registry import register_model
    from lm_eval.models.huggingface import HFLM
    from lm_eval.models.utils import Collator, handle_stop_sequences, normalize_gen_kwargs
    from lm_eval.tasks import TaskManager
    from lm_eval.utils import hash_string, sanitize_model_name
    from tqdm import tqdm
    from transformers import LogitsProcessorList, StoppingCriteriaList
except ImportError as err:  # pragma: no cover - depends on the environment
    raise ImportError(
        "The lm-eval integration needs lm-eval: install it with `pip install 'budget-forcing[eval]'`."
    ) from err

from budget_forcing.formats import ThinkingFormat, ThinkingSplitter, get_format
from budget_forcing.processor import BudgetForcing, end_overhead
from budget_forcing.tasks import TASKS_DIR

__all__ = ["BudgetSettings", "BudgetForcingLM", "cli_evaluate", "MODEL_NAME", "SIDECAR_DIR_ENV"]

logger = logging.getLogger(__name__)

#: The name the model is registered under in lm-eval.
MODEL_NAME = "hf-budget-forcing"
#: Environment variable naming the directory of the sidecar (set by ``cli_evaluate`` from ``--output_path``).
SIDECAR_DIR_ENV = "BUDGET_FORCING_SIDECAR_DIR"
_OUTPUTS = ("full", "answer")


@dataclass(frozen=True)
class BudgetSettings:
    """Budget forcing settings of one lm-eval run (model args, overridable by ``--gen_kwargs``)."""

    thinking_min: int = 0
    thinking_max: int | str | None = "auto"
    num_waits: int = 0
    wait: str | None = "Wait"
    answer_prefix: str | None = "Final Answer:"
    max_answer_tokens: int | None = None
    answer_room: int = 100

    def __post_init__(self) -> None:
        for name in ("thinking_min", "num_waits", "answer_room"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"`{name}` must be a non-negative int, got {value!r}.")
        tmax = self.thinking_max
        if not (
            tmax is None
            or tmax == "auto"
            or (isinstance(tmax, int) and not isinstance(tmax, bool) and tmax >= 0)
        ):
            raise ValueError(
                f"`thinking_max` must be a non-negative int, 'auto' (what max_gen_toks leaves) or 'none' "
                f"(no cap), got {tmax!r}."
            )
        if isinstance(tmax, int) and self.thinking_min > tmax:
            raise ValueError(f"thinking_min={self.thinking_min} > thinking_max={tmax}: lower one of them.")
        mat = self.max_answer_tokens
        if mat is not None and (not isinstance(mat, int) or mat < 0):
            raise ValueError(f"`max_answer_tokens` must be a non-negative int or 'none', got {mat!r}.")

    @classmethod
    def names(cls) -> tuple[str, ...]:
        return tuple(cls.__dataclass_fields__)

    def updated(self, overrides: dict[str, Any]) -> BudgetSettings:
        """A copy with ``overrides`` (e.g. from ``--gen_kwargs``) applied; empty strings mean None."""
        clean = {k: (None if v == "" and k in ("wait", "answer_prefix") else v) for k, v in overrides.items()}
        return replace(self, **clean)


def _register() -> None:
    """Register ``hf-budget-forcing`` in lm-eval (idempotent)."""
    try:
        register_model(MODEL_NAME)(BudgetForcingLM)
    except ValueError:  # already taken by another copy of this class (e.g. a reloaded module): keep it
        logger.debug("lm-eval model %r is already registered.", MODEL_NAME)


class BudgetForcingLM(HFLM):
    """lm-eval's ``HFLM`` with budget forcing in ``generate_until`` (registered as ``hf-budget-forcing``).

    Args:
        pretrained: model id, local directory or ``PreTrainedModel`` (as ``HFLM``).
        thinking_min, thinking_max, num_waits, wait, answer_prefix, max_answer_tokens, answer_room:
            the `BudgetSettings` (see the module docstring).
        format: thinking format, ``"auto"``, ``"s1"``, ``"think"`` or a ``ThinkingFormat``.
        output: ``"full"`` (thinking + end delimiter + answer) or ``"answer"``.
        sidecar: path of the per-sample JSONL (a ``.jsonl`` file or a directory); None: see module doc.
        **kwargs: everything ``HFLM`` takes (``dtype``, ``device``, ``batch_size``...).
    """

    def __init__(
        self,
        pretrained: Any,
        thinking_min: int = 0,
        thinking_max: int | str | None = "auto",
        num_waits: int = 0,
        wait: str | None = "Wait",
        answer_prefix: str | None = "Final Answer:",
        max_answer_tokens: int | None = None,
        answer_room: int = 100,
        format: str | ThinkingFormat = "auto",
        output: str = "full",
        sidecar: str | os.PathLike | None = None,
        **kwargs: Any,
    ) -> None:
        self.budget = BudgetSettings().updated(
            dict(
                thinking_min=thinking_min,
                thinking_max=thinking_max,
                num_waits=num_waits,
                wait=wait,
                answer_prefix=answer_prefix,
                max_answer_tokens=max_answer_tokens,
                answer_room=answer_room,
            )
        )
        if output not in _OUTPUTS:
            raise ValueError(f"`output` must be one of {_OUTPUTS}, got {output!r}.")
        if kwargs.get("think_end_token") is not None:
            raise ValueError(
                "`think_end_token` is handled by budget forcing itself; drop it and use output=answer to get "
                "only the answer."
            )
        super().__init__(pretrained, **kwargs)
        if self.backend != "causal":
            raise ValueError(
                f"{MODEL_NAME} needs a decoder-only (causal) model; got backend {self.backend!r}."
            )
        self.thinking_format = get_format(format, self.tokenizer)
        self.output = output
        self.budget_records: list[dict[str, Any]] = []
        self._processors: dict[tuple, BudgetForcing] = {}
        self._sidecar_arg = sidecar
        self._sidecar_path: Path | None = None
        name = pretrained if isinstance(pretrained, str) else getattr(pretrained, "name_or_path", "model")
        self._model_name = sanitize_model_name(str(name))

    # ------------------------------------------------------------------------------------ sidecar
    @property
    def sidecar_path(self) -> Path | None:
        """Where the per-sample JSONL is written (None: only ``budget_records`` in memory)."""
        if self._sidecar_path is None:
            stamp = datetime.now().isoformat().replace(":", "-")
            if self.world_size > 1:  # data parallel: one file per rank
                stamp += f"_rank{self.rank}"
            target = self._sidecar_arg
            if target is not None:
                path = Path(target)
                self._sidecar_path = (
                    path if path.suffix == ".jsonl" else path / f"budget_forcing_{stamp}.jsonl"
                )
            elif os.environ.get(SIDECAR_DIR_ENV):
                out = Path(os.environ[SIDECAR_DIR_ENV])
                out = out.parent if out.suffix == ".json" else out
                self._sidecar_path = out / self._model_name / f"budget_forcing_{stamp}.jsonl"
            else:
                return None
            self._sidecar_path.parent.mkdir(parents=True, exist_ok=True)
            self._sidecar_path.write_text("")  # one file per model instance: start empty
            logger.info("Budget forcing sidecar: %s", self._sidecar_path)
        return self._sidecar_path

    def _write_records(self, records: list[dict[str, Any]]) -> None:
        self.budget_records.extend(records)
        path = self.sidecar_path
        if path is not None and records:
            with path.open("a", encoding="utf-8") as f:
                for record in records:
                    f.write(json.dumps(record) + "\n")

    # ---------------------------------------------------------------------------------- results
    def budget_summary(self) -> dict[str, Any]:
        """The settings and, per task, the mean budget statistics of the generations so far.

        lm-eval puts it in the results file as ``config.budget_forcing`` (through `get_model_info`).
        """
        tasks: dict[str, dict[str, Any]] = {}
        for task in dict.fromkeys(r["task"] for r in self.budget_records):
            rows = [r for r in self.budget_records if r["task"] == task]
            mean = lambda key, rows=rows: round(sum(float(r[key]) for r in rows) / len(rows), 3)  # noqa: E731
            tasks[task] = {
                "generations": len(rows),
                "thinking_tokens_mean": mean("thinking_tokens"),
                "thinking_tokens_max": max(r["thinking_tokens"] for r in rows),
                "answer_tokens_mean": mean("answer_tokens"),
                "waits_mean": mean("waits"),
                "forced_end_rate": mean("forced_end"),
            }
        return {
            "format": self.thinking_format.name,
            "output": self.output,
            "settings": asdict(self.budget),
            "tasks": tasks,
            "sidecar": None if self._sidecar_path is None else str(self._sidecar_path),
        }

    def get_model_info(self) -> dict[str, Any]:
        """``HFLM``'s model information plus ``budget_forcing``: `budget_summary` in lm-eval's results."""
        return {**super().get_model_info(), "budget_forcing": self.budget_summary()}

    # --------------------------------------------------------------------------------- generation
    def _processor(self, settings: BudgetSettings, max_gen_toks: int) -> tuple[BudgetForcing, int | None]:
        """The processor for ``settings`` under ``max_gen_toks`` and its resolved thinking cap."""
        common = dict(
            format=self.thinking_format,
            wait=settings.wait,
            num_waits=settings.num_waits,
            answer_prefix=settings.answer_prefix or None,
            max_answer_tokens=settings.max_answer_tokens,
        )
        key = (*sorted(asdict(settings).items()), max_gen_toks)
        if key in self._processors:
            bf = self._processors[key]
            return bf, bf.max
        overhead = end_overhead(self.tokenizer, self.thinking_format, common["answer_prefix"])
        tmax = settings.thinking_max
        room = max_gen_toks - overhead
        if tmax == "auto":
            tmax = room - settings.answer_room
            if tmax < settings.thinking_min:
                raise ValueError(
                    f"thinking_max=auto leaves {tmax} thinking tokens (max_gen_toks={max_gen_toks} minus "
                    f"{overhead} forced tokens minus answer_room={settings.answer_room}), fewer than "
                    f"thinking_min={settings.thinking_min}; raise max_gen_toks (--gen_kwargs max_gen_toks=N)."
                )
        elif isinstance(tmax, int) and tmax > room:
            raise ValueError(
                f"thinking_max={tmax} plus {overhead} forced end-of-thinking tokens does not fit in "
                f"max_gen_toks={max_gen_toks}; raise it (--gen_kwargs max_gen_toks={tmax + overhead + 100}) "
                "or lower thinking_max."
            )
        if settings.thinking_min > room:
            raise ValueError(
                f"thinking_min={settings.thinking_min} plus {overhead} forced tokens does not fit in "
                f"max_gen_toks={max_gen_toks}; raise max_gen_toks (--gen_kwargs max_gen_toks=N)."
            )
        bf = BudgetForcing(self.tokenizer, min=settings.thinking_min, max=tmax, **common)
        self._processors[key] = bf
        return bf, tmax

    def _split(self, text: str, answer_tokens: int) -> tuple[str, str | None]:
        """``(head, answer)``: ``head`` runs up to the answer; ``answer`` is None if thinking never ended."""
        splitter = ThinkingSplitter(self.thinking_format)
        splitter.feed(text)
        splitter.finish()
        if splitter.answer_start is None:  # no end delimiter: thinking never ended, or the prompt closed it
            return ("", text) if answer_tokens > 0 else (text, None)
        return text[: splitter.answer_start], text[splitter.answer_start :]

    def _finish_answer(self, answer: str, until: list[str], prefix: str) -> str:
        """Cut the answer at the answer end and at lm-eval's stop strings, sparing the forced prefix."""
        kept = prefix if prefix and answer.startswith(prefix) else ""
        answer = answer[len(kept) :]
        fmt = self.thinking_format
        if fmt.answer_end:
            answer = answer.split(fmt.answer_end, 1)[0]
        for term in until:
            if term:
                answer = answer.split(term, 1)[0]
        return kept + answer

    def generate_until(self, requests: list[Instance], disable_tqdm: bool = False) -> list[str]:
        """lm-eval's ``generate_until`` with budget forcing: one ``generate`` call per batch."""
        batch_size = self._detect_batch_size() if self.batch_size == "auto" else int(self.batch_size)
        # The same Instance appears `repeats` times in a row; number the copies.
        repeat_of: list[int] = []
        seen: dict[int, int] = {}
        for request in requests:
            repeat_of.append(seen.get(id(request), 0))
            seen[id(request)] = repeat_of[-1] + 1

        ordered = Collator(
            [(*request.args[:2], i) for i, request in enumerate(requests)],
            sort_fn=lambda req: (-len(self.tok_encode(req[0])), req[0]),
            group_by="gen_kwargs",
            group_fn=lambda req: req[1],
        )
        pbar = tqdm(
            total=len(requests), disable=disable_tqdm or self.rank != 0, desc="Budget forcing generate_until"
        )
        eos = self.tok_decode(self.eot_token_id, skip_special_tokens=False)
        results: list[str] = []
        for chunk in ordered.get_batched(n=batch_size, batch_fn=None):
            contexts, all_gen_kwargs, indices = zip(*chunk, strict=True)
            gen_kwargs = all_gen_kwargs[0]
            if not isinstance(gen_kwargs, dict):
                raise TypeError(f"Expected generation kwargs to be a dict, got {type(gen_kwargs)}.")
            kwargs = normalize_gen_kwargs(gen_kwargs, self.max_gen_toks)
            until = handle_stop_sequences(kwargs.pop("until", None), eos=eos)
            max_gen_toks = int(kwargs.pop("max_gen_toks"))
            settings = self.budget.updated({k: kwargs.pop(k) for k in BudgetSettings.names() if k in kwargs})
            bf, tmax = self._processor(settings, max_gen_toks)
            if "max_length" in kwargs:
                logger.warning("Ignoring `max_length` in generation kwargs; use max_gen_toks.")
                kwargs.pop("max_length")

            max_ctx_len = self.max_length - max_gen_toks
            if max_ctx_len <= 0:
                raise ValueError(
                    f"max_gen_toks={max_gen_toks} leaves no room for the prompt in the model's max length "
                    f"{self.max_length}; lower max_gen_toks or pass max_length in --model_args."
                )
            context_enc, attn_masks = self.tok_batch_encode(
                list(contexts), left_truncate_len=max_ctx_len, truncation=self.truncation
            )
            context_enc, attn_masks = context_enc.to(self.device), attn_masks.to(self.device)
            output = self._budget_generate(context_enc, attn_masks, bf, until, max_gen_toks, kwargs)
            stats = bf.stats.as_rows()

            records = []
            pad = self.tokenizer.pad_token_id
            for row, (context, index) in enumerate(zip(contexts, indices, strict=True)):
                tokens = output[row, context_enc.shape[1] :].tolist()
                while tokens and tokens[-1] == pad:
                    tokens.pop()
                text = self.tokenizer.decode(tokens, skip_special_tokens=False)
                head, answer = self._split(text, stats[row]["answer_tokens"])
                if answer is None:  # thinking never ended: no answer, nothing to cut
                    answer_text, full = "", head
                else:
                    forced = stats[row]["forced_end"] and settings.answer_prefix
                    prefix = settings.answer_prefix if forced else ""
                    answer_text = self._finish_answer(answer, until, prefix)
                    full = head + answer_text
                result = full if self.output == "full" else answer_text.lstrip()
                results.append(result)
                self.cache_hook.add_partial("generate_until", (context, gen_kwargs), result)

                request = requests[index]
                records.append(
                    {
                        "task": request.task_name,
                        "doc_id": request.doc_id,
                        "repeat": repeat_of[index],
                        "prompt_hash": hash_string(context),
                        "prompt_tokens": int(attn_masks[row].sum()),
                        **stats[row],
                        "generated_tokens": len(tokens),
                        "thinking_min": settings.thinking_min,
                        "thinking_max": tmax,
                        "num_waits": settings.num_waits,
                        "max_gen_toks": max_gen_toks,
                    }
                )
                pbar.update(1)
            self._write_records(records)
        pbar.close()
        return ordered.get_original(results)

    def _budget_generate(
        self,
        context: torch.Tensor,
        attention_mask: torch.Tensor,
        bf: BudgetForcing,
        until: list[str],
        max_gen_toks: int,
        kwargs: dict[str, Any],
    ) -> torch.Tensor:
        # Greedy unless asked otherwise, as HFLM._model_generate.
        kwargs = dict(kwargs)
        kwargs["temperature"] = kwargs.get("temperature", 0.0)
        if kwargs["temperature"] == 0.0 and kwargs.get("do_sample") is None:
            kwargs["do_sample"] = False
        if kwargs.get("do_sample") is False and kwargs["temperature"] == 0.0:
            kwargs.pop("temperature")
        criteria = bf.stopping_criteria(stop_strings=until)
        with (
            torch.no_grad(),
            torch.autocast(
                device_type=self.device.type,
                dtype=self.mixed_precision_dtype,
                enabled=self.mixed_precision_dtype is not None,
            ),
        ):
            return self.model.generate(
                input_ids=context,
                attention_mask=attention_mask,
                max_new_tokens=max_gen_toks,
                logits_processor=LogitsProcessorList([bf]),
                stopping_criteria=StoppingCriteriaList([criteria]),
                pad_token_id=self.tokenizer.pad_token_id,
                use_cache=True,
                **kwargs,
            )


def _output_path(argv: list[str]) -> str | None:
    for i, arg in enumerate(argv):
        if arg in ("--output_path", "-o") and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith("--output_path="):
            return arg.split("=", 1)[1]
    return None


class _WithPackagedTasks(TaskManager):
    """lm-eval's ``TaskManager`` that also finds the packaged ``*_bf`` tasks (``--include_path`` still works)."""

    def __init__(self, *args: Any, include_path: Any = None, **kwargs: Any) -> None:
        paths = include_path if isinstance(include_path, (list, tuple)) else [include_path]
        # The packaged tasks first: later paths override earlier ones, so the user's own tasks win.
        paths = [str(TASKS_DIR), *(str(p) for p in paths if p and Path(p) != TASKS_DIR)]
        super().__init__(*args, include_path=paths, **kwargs)


def cli_evaluate(argv: list[str] | None = None) -> None:
    """``budget-forcing eval``: lm-eval's CLI with ``hf-budget-forcing`` registered and the ``*_bf`` tasks.

    Behaves exactly like ``lm_eval ...`` plus the packaged task directory (`budget_forcing.tasks`);
    with ``--output_path`` the sidecar goes next to the samples.
    """
    import lm_eval.tasks
    from lm_eval.__main__ import cli_evaluate as lm_eval_cli

    _register()
    if argv is not None:
        sys.argv = [sys.argv[0], *argv]
    output_path = _output_path(sys.argv[1:])
    if output_path:
        os.environ.setdefault(SIDECAR_DIR_ENV, output_path)
    lm_eval.tasks.TaskManager = _WithPackagedTasks  # the CLI looks it up when it builds the task list
    try:
        lm_eval_cli()
    finally:
        lm_eval.tasks.TaskManager = TaskManager


if __name__ == "__main__":
    from budget_forcing.integrations.lm_eval import cli_evaluate as _cli

    _cli()
else:
    _register()
