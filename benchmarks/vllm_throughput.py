"""Budget forcing in vLLM, measured side by side in one run on one engine.

(a) Overhead: tokens/s of plain requests vs budget-forced requests producing the same tokens (the
    plain run generates exactly as many tokens per row as the forced run did).
(b) One pass vs s1's multi-call loop (``budget_forcing.reference.s1_generate`` on the same engine,
    2 waits): wall time on the same batch, identical outputs counted.
(c) Max-only budget: ours vs vLLM's built-in ``thinking_token_budget`` on the same requests (outputs
    compared, throughput ratio).
(p) The processor alone, no model: its ``apply`` per decoding step on a full persistent batch of
    thinking rows, beside the one pass over the same scores that vLLM's greedy sampler makes
    (``argmax``); this is what (a) pays per step whatever the model's size.

The model is a randomly initialised Qwen2 with Qwen2.5's full vocabulary (151,936 scores per row);
``--size 0.5b`` is Qwen2.5-0.5B's shape (for GPUs), ``small`` (2 layers, hidden 128) keeps CPU runs
short but makes a step so cheap that the full-vocabulary logits dominate it, ``wide`` (Qwen2.5-0.5B's
width, 2 of its 24 layers) is a CPU-sized shape whose step has a realistic share of layers. A random
model thinks without end; a second logits processor (`Attempts`) makes it try to end thinking after
about ``--period`` tokens, at places that depend on the text only, in every run alike.

Usage:
    python benchmarks/vllm_throughput.py                       # GPU: 0.5b, batch 64
    python benchmarks/vllm_throughput.py --size small --tokens 128 --batch 64
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch
from vllm.v1.sample.logits_processor import LogitsProcessor as V1LogitsProcessor
from vllm.v1.sample.logits_processor import MoveDirectionality
from vllm.v1.worker.gpu.sample.logits_processor import LogitsProcessor as V2LogitsProcessor

if not torch.cuda.is_available():
    # One core or two: the engine in this process, so that a front-end process does not take
    # turns with it on the same cores and blur the ratios. A few GiB of KV cache are plenty.
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "4")

SIZES = {
    "0.5b": dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14),
    "wide": dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=2, num_attention_heads=14),
    "small": dict(hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4),
}
VOCAB = 151_936


def build(path: str, size: str):
    """A random Qwen2 of the given shape with Qwen's vocabulary size, and a tokenizer, saved to ``path``."""
    from transformers import AutoModelForCausalLM, Qwen2Config

    from budget_forcing.testing import tiny_tokenizer

    tok = tiny_tokenizer()
    config = Qwen2Config(
        vocab_size=VOCAB,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        tie_word_embeddings=True,
        eos_token_id=tok.eos_token_id,
        bos_token_id=tok.pad_token_id,
        **SIZES[size],
    )
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    model.generation_config.eos_token_id = [tok.eos_token_id]
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return tok


class Attempts(V1LogitsProcessor, V2LogitsProcessor):
    """Stands in for a model that tries to end its thinking now and then: a request with
    ``extra_args={"attempt_period": p, "attempt_id": i}`` gets +40 on token ``i`` whenever
    ``(length * 7 + last token) % p == 0``. That is a function of the tokens alone, so a one-pass
    run and s1's multi-call loop over the same text see the same attempts (segments of about
    ``p`` tokens, of varied lengths). Both of vLLM's logits-processor interfaces, like ours."""

    def __init__(self, vllm_config, *args) -> None:
        self.req_states = args[0] if len(args) == 1 else None
        slots = vllm_config.scheduler_config.max_num_seqs if self.req_states is None else args[0].max_num_reqs
        device = args[0] if self.req_states is None else self.req_states.device
        self.period = torch.zeros(slots, dtype=torch.long, device=device)
        self.target = torch.zeros(slots, dtype=torch.long, device=device)
        self.rows: dict[int, tuple[int, int, list[int], list[int]]] = {}  # V1: slot -> settings, ids

    def is_argmax_invariant(self) -> bool:
        return False

    def update_state(self, batch_update) -> None:  # V1
        if batch_update is None:
            return
        for slot in batch_update.removed:
            self.rows.pop(slot, None)
        for slot, params, prompt, output in batch_update.added:
            extra = params.extra_args or {}
            self.rows.pop(slot, None)
            if extra.get("attempt_period"):
                self.rows[slot] = (extra["attempt_period"], extra["attempt_id"], prompt or [], output)
        for a, b, direction in batch_update.moved:
            ra, rb = self.rows.pop(a, None), self.rows.pop(b, None)
            if ra is not None:
                self.rows[b] = ra
            if rb is not None and direction == MoveDirectionality.SWAP:
                self.rows[a] = rb

    def add_request(self, req_idx: int, sampling_params) -> bool:  # V2
        extra = sampling_params.extra_args or {}
        self.period[req_idx] = extra.get("attempt_period") or 0
        self.target[req_idx] = extra.get("attempt_id") or 0
        return bool(extra.get("attempt_period"))

    def apply(self, logits: torch.Tensor, ctx=None) -> torch.Tensor:
        if ctx is None:  # V1: row i is slot i
            for slot, (period, target, prompt, output) in self.rows.items():
                last = output[-1] if output else prompt[-1]
                if slot < logits.shape[0] and (7 * (len(prompt) + len(output)) + last) % period == 0:
                    logits[slot, target] += 40.0
            return logits
        slots = ctx.expanded_idx_mapping.long()
        total = self.req_states.total_len.gpu[slots].long()
        last = self.req_states.all_token_ids.gpu[slots, (total - 1).clamp(min=0)].long()
        period = self.period[slots]
        hit = (period > 0) & ((7 * total + last) % period.clamp(min=1) == 0)
        rows = torch.arange(len(slots), device=logits.device)
        logits[rows, self.target[slots]] += 40.0 * hit
        return logits


def timed(first, second, repeats: int):
    """Median wall times of ``first()`` and ``second()`` over ``repeats`` runs taken in turns (so a
    change in the machine's load hits both alike), and their last results. ``timed.cpu`` holds the
    median CPU times of this process for the same runs: with the engine in this process (CPU), the
    work each side did, which other programs on a shared machine do not blur as they blur wall
    times."""
    times: tuple[list[float], list[float]] = ([], [])
    cpu: tuple[list[float], list[float]] = ([], [])
    results = [None, None]
    for _ in range(repeats):
        for i, fn in enumerate((first, second)):
            start, start_cpu = time.perf_counter(), time.process_time()
            results[i] = fn()
            times[i].append(time.perf_counter() - start)
            cpu[i].append(time.process_time() - start_cpu)
    timed.cpu = (statistics.median(cpu[0]), statistics.median(cpu[1]))
    return statistics.median(times[0]), results[0], statistics.median(times[1]), results[1]


def cpu_ratio() -> str:
    """The last `timed` pair's CPU-time ratio (second over first, as the wall-time ratios), on CPU."""
    if torch.cuda.is_available():
        return ""
    first, second = timed.cpu
    return f", CPU time ratio {second / first:.3f}"


class ApplyTimer:
    """CPU time spent in `BudgetForcing.apply` while the engine runs in this process (on CPU): the
    processor's own cost per step, which the machine's other load does not blur as it blurs wall
    times."""

    def __init__(self, processor_class) -> None:
        self.cls, self.seconds, self.calls = processor_class, 0.0, 0
        self.inner = processor_class.apply

    def __enter__(self):
        def apply(proc, *args):
            start = time.thread_time()
            out = self.inner(proc, *args)
            self.seconds += time.thread_time() - start
            self.calls += 1
            return out

        self.cls.apply = apply
        return self

    def __exit__(self, *exc) -> None:
        self.cls.apply = self.inner


def processor_cost(path: str, batch: int, steps: int = 30) -> None:
    """(p): median ms per step of ``BudgetForcing.apply`` (V1) on ``batch`` thinking rows of random
    scores, and of the greedy sampler's own ``argmax`` over the same scores."""
    from types import SimpleNamespace

    from transformers import AutoTokenizer
    from vllm import SamplingParams
    from vllm.v1.sample.logits_processor import BatchUpdate

    from budget_forcing.vllm import BudgetForcing

    tok = AutoTokenizer.from_pretrained(path)
    model = SimpleNamespace(
        model=path, revision=None, tokenizer=path, tokenizer_revision=None, trust_remote_code=False, seed=0
    )
    model.get_vocab_size = lambda: VOCAB
    config = SimpleNamespace(
        speculative_config=None, scheduler_config=SimpleNamespace(max_num_seqs=batch), model_config=model
    )
    proc = BudgetForcing(config, torch.device("cpu"), False)
    prompt = tok.encode("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n", add_special_tokens=False)
    outputs: list[list[int]] = [[] for _ in range(batch)]
    params = SamplingParams(temperature=0, extra_args={"max": 10**6, "num_waits": 2, "format": "s1"})
    proc.update_state(BatchUpdate(batch, [], [(i, params, prompt, outputs[i]) for i in range(batch)], []))
    generator = torch.Generator().manual_seed(0)
    ours, sampler = [], []
    for _ in range(steps):
        logits = torch.randn(batch, VOCAB, generator=generator)
        start = time.perf_counter()
        forced = proc.apply(logits)
        middle = time.perf_counter()
        tokens = forced.argmax(-1)
        sampler.append(time.perf_counter() - middle)
        ours.append(middle - start)
        for out, token in zip(outputs, tokens.tolist()):
            out.append(token)
    ours_ms, sampler_ms = 1e3 * statistics.median(ours), 1e3 * statistics.median(sampler)
    print(
        f"(p) batch {batch}, {VOCAB} scores per row, thinking rows: processor apply {ours_ms:.2f} ms/step, "
        f"greedy sampler's argmax {sampler_ms:.2f} ms/step (ratio {ours_ms / sampler_ms:.2f})"
    )


def main(args) -> None:
    from vllm import LLM, SamplingParams, TokensPrompt

    from budget_forcing.reference import s1_generate
    from budget_forcing.vllm import BudgetForcing, Settings, greedy_generate, request_stats

    path = args.model or tempfile.mkdtemp(prefix="bf-vllm-bench-")
    tok = build(path, args.size) if not args.model else None
    from transformers import AutoTokenizer

    tok = tok or AutoTokenizer.from_pretrained(path)
    processor_cost(path, args.batch)
    llm = LLM(
        path,
        logits_processors=[Attempts, BudgetForcing],  # in this order: ours sees the attempts
        enforce_eager=args.enforce_eager,
        max_model_len=2048,
        max_num_seqs=args.batch,
        seed=0,
        reasoning_config={
            "reasoning_start_str": "<|im_start|>think",
            "reasoning_end_str": "\n<|im_start|>answer",
        },
    )
    questions = [f"Question {i}: what is {i} + {2 * i}?" for i in range(args.batch)]
    texts = [
        tok.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True, tokenize=False)
        for q in questions
    ]
    prompts = [tok.encode(t, add_special_tokens=False) for t in texts]
    end0 = tok.encode("<|im_start|>answer", add_special_tokens=False)[0]
    attempts = {"attempt_period": args.period, "attempt_id": end0}

    def run(params):
        outs = llm.generate([TokensPrompt(prompt_token_ids=p) for p in prompts], params, use_tqdm=False)
        return outs, sum(len(o.outputs[0].token_ids) for o in outs)

    # (a) overhead on the same tokens
    settings = Settings(max=args.tokens, num_waits=2, max_answer_tokens=16, format="s1")
    forced = SamplingParams(
        temperature=0,
        max_tokens=args.tokens + 32,
        extra_args={**vars(settings), **attempts},
        detokenize=False,
    )
    outs, _ = run(forced)  # warm-up; greedy: every run generates these lengths
    lengths = [len(o.outputs[0].token_ids) for o in outs]
    plain = [
        SamplingParams(temperature=0, max_tokens=n, ignore_eos=True, extra_args=attempts, detokenize=False)
        for n in lengths
    ]
    spent = ApplyTimer(BudgetForcing)

    def run_forced():
        with spent:
            return run(forced)

    t_bf, (outs, n_tokens), t_plain, (_, n_plain) = timed(run_forced, lambda: run(plain), args.repeats)
    assert n_plain == n_tokens
    stats = request_stats(tok, outs, settings, [tok.eos_token_id])
    own = ""
    if spent.calls:  # the engine ran in this process: the processor's own time per step
        per_step = spent.seconds / spent.calls
        share = spent.seconds / args.repeats / timed.cpu[0]
        own = f"; processor apply {1e3 * per_step:.2f} ms/step of CPU time, {100 * share:.1f}% of the run's"
    print(
        f"(a) batch {args.batch}, {n_tokens} tokens: plain {n_tokens / t_plain:.0f} tok/s, budget forcing "
        f"{n_tokens / t_bf:.0f} tok/s, ratio {t_plain / t_bf:.3f}{cpu_ratio()} "
        f"(waits {sum(stats.waits)}, forced ends {sum(stats.forced_end)} of {args.batch}){own}"
    )

    # (b) one pass vs s1's multi-call loop
    cap = 16
    end = tok.encode("<|im_start|>answer", add_special_tokens=False)
    s1 = Settings(max=args.tokens, num_waits=2, max_answer_tokens=cap, format="s1")
    one_pass = SamplingParams(
        temperature=0,
        max_tokens=args.tokens + 32 + cap,
        extra_args={**vars(s1), **attempts},
        detokenize=False,
    )
    gen = greedy_generate(llm, extra_args=attempts)

    def loop():
        return s1_generate(
            gen,
            tok,
            prompts,
            args.tokens,
            thinking_n_ignore=2,
            max_gen_toks=cap,
            stop_token_ids=[end[0], tok.eos_token_id],
        )

    t_one, (outs, _), t_loop, rows = timed(lambda: run(one_pass), loop, args.repeats)
    same = fits = 0
    for out, row in zip(outs, rows):
        mine = list(out.outputs[0].token_ids)
        mine = mine[:-1] if mine and mine[-1] == tok.eos_token_id else mine
        if row.uncut_thinking_tokens <= args.tokens:
            fits += 1
            same += mine == row.generated
    print(
        f"(b) batch {args.batch}, 2 waits: one pass {t_one:.2f} s, s1's loop {t_loop:.2f} s, speed-up "
        f"{t_loop / t_one:.2f}x{cpu_ratio()}; identical outputs on {same} of {fits} rows that fit the budget "
        f"({args.batch - fits} overran)"
    )

    # (c) max only: ours vs vLLM's thinking_token_budget, prompts that open thinking
    opened = [p + tok.encode("<|im_start|>think", add_special_tokens=False) for p in prompts]
    ours = SamplingParams(
        temperature=0,
        max_tokens=args.tokens + 24,
        extra_args={"max": args.tokens, "format": "s1", "answer_prefix": None, **attempts},
        detokenize=False,
    )
    builtin = SamplingParams(
        temperature=0,
        max_tokens=args.tokens + 24,
        thinking_token_budget=args.tokens,
        extra_args=attempts,
        detokenize=False,
    )

    def run_opened(params):
        return llm.generate([TokensPrompt(prompt_token_ids=p) for p in opened], params, use_tqdm=False)

    t_ours, a, t_builtin, b = timed(lambda: run_opened(ours), lambda: run_opened(builtin), args.repeats)
    same = sum(list(x.outputs[0].token_ids) == list(y.outputs[0].token_ids) for x, y in zip(a, b))
    n_a = sum(len(o.outputs[0].token_ids) for o in a)
    n_b = sum(len(o.outputs[0].token_ids) for o in b)
    print(
        f"(c) batch {args.batch}, max {args.tokens}: ours {n_a / t_ours:.0f} tok/s, thinking_token_budget "
        f"{n_b / t_builtin:.0f} tok/s, ratio {(n_a / t_ours) / (n_b / t_builtin):.3f}{cpu_ratio()}; identical outputs "
        f"{same} of {args.batch} ({n_a} vs {n_b} tokens)"
    )
    if same < args.batch:
        x, y = next(
            (x, y) for x, y in zip(a, b) if list(x.outputs[0].token_ids) != list(y.outputs[0].token_ids)
        )
        x, y = list(x.outputs[0].token_ids), list(y.outputs[0].token_ids)
        at = next((i for i, (u, v) in enumerate(zip(x, y)) if u != v), min(len(x), len(y)))
        print(f"    first difference at token {at}: ours {x[at : at + 8]}, builtin {y[at : at + 8]}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", help="a model folder (default: a random Qwen2 built here)")
    parser.add_argument(
        "--size", choices=sorted(SIZES), default="0.5b" if torch.cuda.is_available() else "small"
    )
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--tokens", type=int, default=256, help="thinking budget")
    parser.add_argument(
        "--period", type=int, default=32, help="the model tries to end thinking about every N tokens"
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--enforce-eager", action="store_true")
    main(parser.parse_args())
