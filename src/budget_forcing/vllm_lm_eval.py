"""lm-eval's own vLLM backend, plus the per-sample budget statistics of every generation.

``BudgetForcingVLLM`` is lm-eval's ``VLLM`` model unchanged (``logits_processors`` go to ``LLM``,
``gen_kwargs`` with ``extra_args`` to ``SamplingParams``; see docs/vllm.md) that also reads each
generation's statistics off its token ids (`budget_forcing.vllm.request_stats`) into
``budget_records``: the same rows, with the same keys, as the Hugging Face backend's
``BudgetForcingLM.budget_records``. ``benchmarks/scaling.py --backend vllm`` evaluates through it.
The budget processor is added to ``logits_processors`` when the caller did not name it.

For runs of the stock ``lm_eval --model vllm``, `samples_stats` (``budget-forcing stats
SAMPLES.jsonl --tokenizer MODEL``) reads the same statistics off a ``--log_samples`` file.

Example:
    >>> import lm_eval  # doctest: +SKIP
    >>> from budget_forcing.vllm_lm_eval import BudgetForcingVLLM  # doctest: +SKIP
    >>> lm = BudgetForcingVLLM(pretrained="simplescaling/s1.1-1.5B")  # doctest: +SKIP
    >>> gen = {"max_gen_toks": 2200, "extra_args": {"max": 2000, "num_waits": 1}}  # doctest: +SKIP
    >>> lm_eval.simple_evaluate(model=lm, tasks=["aime24_bf"], gen_kwargs=gen)  # doctest: +SKIP
    >>> lm.budget_records[0]["thinking_tokens"] <= 2000  # doctest: +SKIP
    True
"""

from __future__ import annotations

from collections import defaultdict, deque
from collections.abc import Iterable
from typing import Any

from budget_forcing._extras import require

require("lm_eval", "eval", "lm-eval's vLLM backend with budget statistics")
require("vllm", "vllm", "lm-eval's vLLM backend with budget statistics")

from lm_eval.models.vllm_causallms import VLLM  # noqa: E402
from lm_eval.utils import hash_string  # noqa: E402

from budget_forcing.vllm import BudgetForcing, _config_eos, request_stats, settings_from_params  # noqa: E402

__all__ = ["BudgetForcingVLLM", "samples_stats"]

_QUALIFIED = f"{BudgetForcing.__module__}:{BudgetForcing.__name__}"


class BudgetForcingVLLM(VLLM):
    """lm-eval's ``vllm`` model whose generations leave per-sample budget statistics."""

    def __init__(self, pretrained: str, logits_processors: list | None = None, **kwargs: Any) -> None:
        processors = list(logits_processors or [])
        if not any(p in (BudgetForcing, _QUALIFIED) for p in processors):
            processors.append(BudgetForcing)
        super().__init__(pretrained=pretrained, logits_processors=processors, **kwargs)
        self.budget_records: list[dict[str, Any]] = []
        self._config_eos = _config_eos(pretrained, kwargs.get("revision"))
        self._outputs: dict[tuple, deque] = defaultdict(deque)

    def _model_generate(self, requests, generate=False, sampling_params=None):
        outputs = super()._model_generate(requests, generate, sampling_params)
        if generate:
            params = (
                sampling_params if isinstance(sampling_params, list) else [sampling_params] * len(outputs)
            )
            for prompt, p, out in zip(requests, params, outputs, strict=True):
                self._outputs[tuple(prompt)].append((out, p))
        return outputs

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        self._outputs.clear()
        results = super().generate_until(requests, disable_tqdm)
        repeat: dict[int, int] = {}
        records = []
        for request in requests:
            context = request.args[0]
            out, params = self._take(self.tok_encode(context))
            settings = settings_from_params(params)
            if settings is None:  # not budget-forced: nothing to read
                continue
            (stats,) = request_stats(self.tokenizer, [out], settings, self._config_eos).as_rows()
            repeat[id(request)] = repeat.get(id(request), -1) + 1
            records.append(
                {
                    "task": request.task_name,
                    "doc_id": request.doc_id,
                    "repeat": repeat[id(request)],
                    "prompt_hash": hash_string(context),
                    "prompt_tokens": len(out.prompt_token_ids),
                    **stats,
                    "generated_tokens": len(out.outputs[0].token_ids),
                    "thinking_min": settings.min,
                    "thinking_max": settings.max,
                    "num_waits": settings.num_waits,
                    "max_gen_toks": params.max_tokens,
                }
            )
        self.budget_records.extend(records)
        return results

    def _take(self, prompt: list[int]):
        """The output generated for ``prompt`` (left-truncated prompts match by their tail)."""
        key = tuple(prompt)
        if not self._outputs.get(key):
            key = next((k for k, v in self._outputs.items() if v and key[len(key) - len(k) :] == k), key)
        if not self._outputs.get(key):
            raise RuntimeError("A request of this batch has no vLLM output; was the model reused?")
        return self._outputs[key].popleft()


# ------------------------------------------------------------------- stats of a samples file
def samples_stats(samples: Iterable[dict], tokenizer, config_eos=None) -> list[dict | None]:
    """Per-sample budget statistics of ``lm_eval --model vllm ... --log_samples`` rows.

    Each row's settings are its own ``extra_args`` (in ``arguments``); its prompt and response
    texts are tokenized again, so counts can differ from the engine's by a token or two where the
    model emitted a tokenization of the text other than the tokenizer's. Rows that did not opt in
    to budget forcing give None.
    """
    from types import SimpleNamespace

    rows: list[dict | None] = []
    for sample in samples:
        args = sample["arguments"]
        first = args["gen_args_0"] if isinstance(args, dict) else {"arg_0": args[0][0], "arg_1": args[0][1]}
        context, gen_kwargs = first["arg_0"], first["arg_1"] or {}
        settings = settings_from_params(SimpleNamespace(extra_args=gen_kwargs.get("extra_args")))
        if settings is None:
            rows.append(None)
            continue
        prompt = tokenizer.encode(context, add_special_tokens=False)
        generated = tokenizer.encode(sample["resps"][0][0], add_special_tokens=False)
        out = SimpleNamespace(prompt_token_ids=prompt, outputs=[SimpleNamespace(token_ids=generated)])
        (stats,) = request_stats(tokenizer, [out], settings, config_eos).as_rows()
        rows.append({"doc_id": sample.get("doc_id"), "prompt_hash": sample.get("prompt_hash"), **stats})
    return rows


def main(argv: list[str] | None = None) -> int:
    """``budget-forcing stats SAMPLES.jsonl --tokenizer MODEL``: one JSON line of statistics per
    sample, then a summary line on stderr."""
    import argparse
    import json
    import sys
    from pathlib import Path

    from transformers import AutoTokenizer

    parser = argparse.ArgumentParser(
        prog="budget-forcing stats", description=samples_stats.__doc__.split("\n\n")[0]
    )
    parser.add_argument("samples", type=Path, nargs="+", help="lm-eval samples_*.jsonl files")
    parser.add_argument("--tokenizer", required=True, help="the model (or tokenizer) id or folder evaluated")
    args = parser.parse_args(argv)
    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer)
    eos = _config_eos(args.tokenizer)
    total = skipped = 0
    for path in args.samples:
        samples = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        for row in samples_stats(samples, tokenizer, eos):
            total += 1
            skipped += row is None
            if row is not None:
                print(json.dumps({"file": path.name, **row}))
    print(
        f"{total} samples, {total - skipped} budget-forced, {skipped} without budget settings",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
