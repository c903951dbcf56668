"""Budget forcing in vLLM: the V1 adapter end to end (offline engine, server, lm-eval) and the V2
adapter through its interface. Run in the .venv-vllm environment (`make test` does)."""

from __future__ import annotations

import os

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # one in-process engine per session
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # GiB: plenty for tiny models, cheap to allocate

import random  # noqa: E402
import shutil  # noqa: E402
import warnings  # noqa: E402
from types import SimpleNamespace  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402
from vllm import LLM, SamplingParams, TokensPrompt  # noqa: E402
from vllm.config import CompilationMode  # noqa: E402
from vllm.v1.worker.gpu.sample.logits_processor import LogitsContext, LogitsProcRequestState  # noqa: E402
from vllm_support import Nudge, save_tiny_qwen2  # noqa: E402

from budget_forcing import BudgetForcing as HFBudgetForcing  # noqa: E402
from budget_forcing import core  # noqa: E402
from budget_forcing import vllm as bv  # noqa: E402
from budget_forcing.formats import get_format  # noqa: E402
from budget_forcing.reference import s1_generate  # noqa: E402
from budget_forcing.testing import Nudge as HFNudge  # noqa: E402
from budget_forcing.vllm import (  # noqa: E402
    BudgetForcing,
    Settings,
    greedy_generate,
    request_stats,
    settings_from_params,
)

pytestmark = pytest.mark.vllm

QUESTIONS = [
    "What is 2 + 2?",
    "Hi",
    "Let x = 5. What is x^2 + 2x?",
    "The quick brown fox jumps over the lazy dog.",
]


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory):
    return save_tiny_qwen2(tmp_path_factory.mktemp("tiny-qwen2"))


@pytest.fixture(scope="session")
def tok(model_dir):
    return AutoTokenizer.from_pretrained(model_dir)


@pytest.fixture(scope="session")
def llm(model_dir):
    engine = LLM(
        str(model_dir),
        logits_processors=[Nudge, BudgetForcing],
        enforce_eager=True,
        max_model_len=512,
        max_num_seqs=64,
        dtype="float32",
        seed=0,
    )
    yield engine
    engine.llm_engine.engine_core.shutdown()


def prompts_of(tok, questions=QUESTIONS) -> list[list[int]]:
    texts = [
        tok.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True, tokenize=False)
        for q in questions
    ]
    return [tok.encode(t, add_special_tokens=False) for t in texts]


def ids(tok, text: str) -> list[int]:
    return tok.encode(text, add_special_tokens=False)


def attempts(tok) -> list[int]:
    """What the nudge pushes: the s1 end delimiter's first token and EOS."""
    return [tok.convert_tokens_to_ids("<|im_start|>"), tok.eos_token_id]


def generate(llm, prompts, params):
    return llm.generate([TokensPrompt(prompt_token_ids=p) for p in prompts], params, use_tqdm=False)


# ------------------------------------------------------------------------------------- settings
@pytest.mark.parametrize(
    "extra, message",
    [
        ({"min": 5, "max": 3}, "min=5 > max=3"),
        ({"max": -1}, "non-negative"),
        ({"num_waits": "2"}, "num_waits"),
        ({"format": "xml"}, "format"),
        ({"wait": 3}, "wait"),
    ],
)
def test_bad_settings_are_rejected_with_the_fix(extra, message):
    with pytest.raises(ValueError, match=message):
        BudgetForcing.validate_params(SamplingParams(extra_args=extra))


def test_settings_opt_in_and_penalties():
    assert settings_from_params(SamplingParams()) is None
    assert settings_from_params(SamplingParams(extra_args={"other": 1})) is None
    assert settings_from_params(SamplingParams(extra_args={"max": 8, "wait": None})) == Settings(
        max=8, wait=None
    )
    with pytest.raises(ValueError, match="repetition_penalty"):
        settings_from_params(SamplingParams(repetition_penalty=1.2, extra_args={"max": 8}))


# ------------------------------------------------------------------------- offline engine (V1)
def test_offline_bounds_and_forced_positions(llm, tok):
    """Ragged prompts, per-request budgets and waits in one batch: exact counts and positions."""
    prompts = prompts_of(tok)
    settings = [
        Settings(max=6, format="s1"),
        Settings(max=12, num_waits=2, format="s1"),
        Settings(min=4, max=20, num_waits=1, format="s1"),
        Settings(max=9, format="s1", answer_prefix=None),
    ]
    params = [
        SamplingParams(
            temperature=0,
            max_tokens=48,
            extra_args={**vars(s), "nudge": attempts(tok) if i in (1, 2) else None},
        )
        for i, s in enumerate(settings)
    ]
    outs = generate(llm, prompts, params)
    stats = request_stats(tok, outs, settings)
    start, end, nl = ids(tok, "<|im_start|>think"), ids(tok, "<|im_start|>answer"), ids(tok, "\n")
    tail = ids(tok, "\nFinal Answer:")
    for i, (out, s) in enumerate(zip(outs, settings)):
        gen = list(out.outputs[0].token_ids)
        assert gen[: len(start)] == start, i
        think = stats.thinking_tokens[i]
        assert think <= s.max
        body = gen[len(start) : len(start) + think]
        after = gen[len(start) + think :]
        if stats.forced_end[i]:
            assert think == s.max  # the random model never ends on its own: the budget ends it
            newline = [] if tok.decode(body[-1:]).endswith("\n") else nl
            forced = newline + end + (tail if s.answer_prefix else [])
            assert after[: len(forced)] == forced
        else:
            assert after[: len(end)] == end, (i, tok.decode(gen), stats)
        assert stats.waits[i] == body.count(ids(tok, "Wait")[0])
    # The nudged rows tried to end early: their waits were injected exactly num_waits times.
    assert stats.waits[1] == 2 and stats.waits[2] == 1
    assert stats.forced_end[0] and stats.forced_end[3]


def test_plain_requests_run_untouched(llm, tok):
    """Rows without budget-forcing extra_args are identical to a run without the processor's rows."""
    prompts = prompts_of(tok)
    plain = SamplingParams(temperature=0, max_tokens=24)
    alone = generate(llm, prompts[:2], plain)
    mixed = generate(
        llm,
        prompts,
        [plain, plain]
        + [SamplingParams(temperature=0, max_tokens=24, extra_args={"max": 4, "format": "s1"})] * 2,
    )
    assert [o.outputs[0].token_ids for o in mixed[:2]] == [o.outputs[0].token_ids for o in alone]
    start = ids(tok, "<|im_start|>think")
    assert all(list(o.outputs[0].token_ids[: len(start)]) == start for o in mixed[2:])


# --------------------------------------------------------------------- V2 interface, by hand
class FakeV2Runner:
    """Drives the V2 interface as vLLM's V2 model runner does: per-slot token buffers, slots recycled
    through a free list, rows reordered every step, requests added mid-run, prefill chunks whose
    sample is thrown away. Logits come from a Hugging Face model, one sequence at a time."""

    def __init__(self, model, model_dir, slots: int = 3, max_len: int = 160, seed: int = 0):
        self.model, self.slots, self.rng = model, slots, random.Random(seed)
        vocab = model.config.vocab_size
        self.tokens = torch.zeros(slots, max_len, dtype=torch.long)
        self.total = torch.zeros(slots, dtype=torch.long)
        self.prompt_len, self.prefill_len = np.zeros(slots, np.int32), np.zeros(slots, np.int32)
        req_states = LogitsProcRequestState(
            device=torch.device("cpu"),
            max_num_reqs=slots,
            vocab_size=vocab,
            all_token_ids=SimpleNamespace(gpu=self.tokens),
            prompt_len=SimpleNamespace(np=self.prompt_len),
            prefill_len=SimpleNamespace(np=self.prefill_len),
            total_len=SimpleNamespace(gpu=self.total),
        )
        config = SimpleNamespace(
            speculative_config=None,
            model_config=SimpleNamespace(
                model=str(model_dir),
                revision=None,
                tokenizer=str(model_dir),
                tokenizer_revision=None,
                trust_remote_code=False,
                seed=0,
            ),
        )
        self.proc = BudgetForcing(config, req_states)

    @torch.no_grad()
    def run(self, requests: list[tuple[list[int], dict, int]], nudge) -> list[list[int]]:
        waiting = list(enumerate(requests))
        free, live, outputs = list(range(self.slots)), {}, {}
        eos = set(self.model.generation_config.eos_token_id)
        while waiting or live:
            # Admit requests while slots are free (one per step at most: they arrive mid-run).
            if waiting and free:
                rid, (prompt, extra, max_tokens) = waiting.pop(0)
                slot = free.pop(self.rng.randrange(len(free)))
                self.tokens[slot, : len(prompt)] = torch.tensor(prompt)
                self.prompt_len[slot] = self.prefill_len[slot] = len(prompt)
                self.total[slot] = len(prompt)
                self.proc.add_request(slot, SamplingParams(temperature=0, extra_args=extra))
                self.proc.apply_staged_writes()
                live[slot] = [rid, max_tokens, self.rng.random() < 0.5]  # half get a thrown-away chunk
            order = list(live)
            self.rng.shuffle(order)
            rows = []
            for slot in order:
                seq = self.tokens[slot, : self.total[slot]][None]
                logits = self.model(seq).logits[:, -1].float()
                rows.append(nudge(seq, logits))
            logits = torch.cat(rows)
            slots = torch.tensor(order)
            ctx = LogitsContext(
                expanded_idx_mapping=slots,
                idx_mapping=slots,
                idx_mapping_np=np.array(order),
                expanded_local_pos=torch.zeros_like(slots),
                input_ids=torch.zeros_like(slots),
                pos=self.total[slots] - 1,
                seq_lens_upper_bound_np=self.total[slots].numpy(),
            )
            sampled = self.proc.apply(logits, ctx).argmax(-1)
            for slot, token in zip(order, sampled.tolist()):
                rid, max_tokens, chunked = live[slot]
                if chunked:  # a prefill chunk: vLLM samples and discards the token
                    live[slot][2] = False
                    continue
                self.tokens[slot, self.total[slot]] = token
                self.total[slot] += 1
                generated = self.total[slot] - self.prompt_len[slot]
                if token in eos or generated >= max_tokens:
                    outputs[rid] = self.tokens[slot, self.prompt_len[slot] : self.total[slot]].tolist()
                    del live[slot]
                    free.append(slot)
        return [outputs[i] for i in range(len(requests))]


@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "compiled"])
def test_v2_interface_matches_the_hf_processor(model_dir, tok, compiled, monkeypatch):
    """The V2 adapter, driven by hand, emits exactly what the HF processor emits for each request,
    eager and with its per-step state update compiled (as in an engine that compiles its model)."""
    monkeypatch.setenv("BUDGET_FORCING_COMPILE", "1" if compiled else "0")
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float64).eval()
    nudge = HFNudge(attempts(tok), period=11, pad_id=-1)
    prompts = prompts_of(tok) * 2
    settings = [
        dict(max=6),
        dict(max=12, num_waits=2),
        dict(min=5, max=20, num_waits=1),
        dict(max=9, answer_prefix=None),
        dict(max=15, num_waits=1, wait=None),
        dict(min=3, max=7, max_answer_tokens=3),
        dict(max=30, num_waits=3),
        dict(max=4, wait="Hmm"),
    ]
    budget = 48
    runner = FakeV2Runner(model, model_dir)
    rows, fused = runner.proc._rows, []
    step = rows._greedy_step
    rows._greedy_step = lambda *args: fused.append(1) or step(*args)  # the common step's own path
    with warnings.catch_warnings():
        if compiled and shutil.which("c++"):  # inductor builds CPU kernels with it
            warnings.filterwarnings("error", message="torch.compile failed")
        got = runner.run([(p, {**s, "format": "s1"}, budget) for p, s in zip(prompts, settings)], nudge)
    assert rows.compiled == compiled and len(fused) >= 10  # besides steps with several groups
    for prompt, s, out in zip(prompts, settings, got):
        bf = HFBudgetForcing(tok, format="s1", **s)
        expected = model.generate(
            torch.tensor([prompt]),
            logits_processor=[nudge, bf],
            max_new_tokens=budget,
            do_sample=False,
        )[0, len(prompt) :].tolist()
        assert out == expected, (s, tok.decode(out), tok.decode(expected))
    # The rules did act: budget-forced ends, injected waits, suppressed attempts, natural ends.
    outputs = [
        SimpleNamespace(prompt_token_ids=p, outputs=[SimpleNamespace(token_ids=o)])
        for p, o in zip(prompts, got)
    ]
    stats = request_stats(tok, outputs, [Settings(format="s1", **s) for s in settings])
    assert sum(stats.waits) >= 3 and sum(stats.forced_end) >= 2 and not all(stats.forced_end)
    assert stats.ignored[4] >= 1 and stats.waits[4] == 0  # wait=None only suppresses


def test_compiles_with_the_engine(monkeypatch):
    """The per-step update is compiled where the engine compiles its model; the variable overrides."""
    monkeypatch.delenv("BUDGET_FORCING_COMPILE", raising=False)
    assert bv._compiles(
        SimpleNamespace(compilation_config=SimpleNamespace(mode=CompilationMode.VLLM_COMPILE))
    )
    assert not bv._compiles(SimpleNamespace(compilation_config=SimpleNamespace(mode=CompilationMode.NONE)))
    assert not bv._compiles(SimpleNamespace())
    monkeypatch.setenv("BUDGET_FORCING_COMPILE", "0")
    assert not bv._compiles(
        SimpleNamespace(compilation_config=SimpleNamespace(mode=CompilationMode.VLLM_COMPILE))
    )
    monkeypatch.setenv("BUDGET_FORCING_COMPILE", "1")
    assert bv._compiles(SimpleNamespace())


def test_v2_rejects_speculative_decoding(model_dir):
    config = SimpleNamespace(speculative_config=object(), model_config=SimpleNamespace())
    with pytest.raises(ValueError, match="speculative"):
        BudgetForcing(config, None)


# ------------------------------------------------------------------ s1's own loop on vLLM
S1_PROMPTS = QUESTIONS + [q + " Explain." for q in QUESTIONS]


@pytest.mark.parametrize("n_ignore", [1, 2])
def test_identical_to_s1_eval_loop_on_vllm_unless_thinking_overruns(llm, tok, n_ignore):
    """One greedy vLLM pass is token-identical to s1's multi-call loop run on the same engine on
    every row whose thinking (with waits) fits the budget; overrunning rows agree up to the budget."""
    end = ids(tok, "<|im_start|>answer")
    seqs = core.encode_sequences(tok, get_format("s1", tok))
    eos, _ = core.eos_ids(seqs, [tok.eos_token_id])
    start = len(ids(tok, "<|im_start|>think"))
    prompts = prompts_of(tok, S1_PROMPTS)
    cap = 6
    identical = overran = 0
    for budget, period in ((6, 3), (12, 4), (12, 13), (20, 17)):
        nudge = {"nudge": [end[0], tok.eos_token_id] if period < 8 else [end[0]], "nudge_period": period}
        theirs = s1_generate(
            greedy_generate(llm, extra_args=nudge),
            tok,
            prompts,
            budget,
            thinking_n_ignore=n_ignore,
            max_gen_toks=cap,
            stop_token_ids=[end[0], *eos],
        )
        settings = Settings(max=budget, num_waits=n_ignore, max_answer_tokens=cap, format="s1")
        params = SamplingParams(
            temperature=0, max_tokens=budget + 16 + cap, extra_args={**vars(settings), **nudge}
        )
        outs = generate(llm, prompts, params)
        stats = request_stats(tok, outs, settings)
        for out, row, thought in zip(outs, theirs, stats.thinking_tokens):
            mine = list(out.outputs[0].token_ids)
            mine = mine[:-1] if mine and mine[-1] in eos else mine
            if row.uncut_thinking_tokens > budget:
                overran += 1
                assert mine[: start + thought] == row.generated[: start + thought]
                continue
            assert mine == row.generated, (tok.decode(mine), tok.decode(row.generated))
            identical += 1
    print(f"identical rows: {identical}, overran: {overran}, of {identical + overran}")
    assert identical >= 8 and overran >= 8, (identical, overran)


# --------------------------------------------------------------------------------- the server
@pytest.mark.timeout(900)
def test_server_concurrent_requests_with_different_budgets(model_dir, tok):
    """`vllm serve --logits-processors ...` on loopback; the openai client sends concurrent
    requests with different budgets; every one is bounded exactly; a bad one gets HTTP 400."""
    import sys
    import time
    import urllib.request
    from concurrent.futures import ThreadPoolExecutor
    from pathlib import Path

    import openai
    from procs import free_port, started

    port = free_port()
    cmd = [
        Path(sys.executable).parent / "vllm",
        "serve",
        model_dir,
        "--host=127.0.0.1",
        f"--port={port}",
        "--logits-processors=budget_forcing.vllm:BudgetForcing",
        "--enforce-eager",
        "--max-model-len=512",
        "--max-num-seqs=16",
        "--dtype=float32",
    ]
    env = {**os.environ, "VLLM_ENABLE_V1_MULTIPROCESSING": "1"}
    with started(cmd, env=env) as proc:
        deadline = time.monotonic() + 600
        while True:
            assert proc.poll() is None, "vllm serve exited"
            assert time.monotonic() < deadline, "vllm serve did not become healthy in 600 s"
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as r:
                    if r.status == 200:
                        break
            except OSError:
                time.sleep(2)
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none", timeout=120)
        prompts = prompts_of(tok)
        budgets = [3, 7, 11, 16, 20, 25]

        def ask(i):
            b = budgets[i]
            return client.completions.create(
                model=str(model_dir),
                prompt=prompts[i % len(prompts)],
                max_tokens=b + 24,
                temperature=0,
                extra_body={"vllm_xargs": {"max": b, "format": "s1"}, "return_token_ids": True},
            )

        with ThreadPoolExecutor(len(budgets)) as pool:
            replies = list(pool.map(ask, range(len(budgets))))
        outputs = [
            SimpleNamespace(
                prompt_token_ids=prompts[i % len(prompts)],
                outputs=[SimpleNamespace(token_ids=r.choices[0].token_ids)],
            )
            for i, r in enumerate(replies)
        ]
        stats = request_stats(tok, outputs, [Settings(max=b, format="s1") for b in budgets])
        assert stats.thinking_tokens == budgets
        assert all(stats.forced_end)
        start = ids(tok, "<|im_start|>think")
        assert all(list(r.choices[0].token_ids[: len(start)]) == start for r in replies)
        with pytest.raises(openai.BadRequestError, match="min=9 > max=2"):
            client.completions.create(
                model=str(model_dir),
                prompt="Hi",
                max_tokens=8,
                extra_body={"vllm_xargs": {"min": 9, "max": 2}},
            )


# ------------------------------------------------------------------------------ stock lm-eval
@pytest.mark.timeout(900)
def test_stock_lm_eval_vllm_with_json_arguments(model_dir, tmp_path, capsys):
    """`lm_eval --model vllm` unmodified: JSON model_args name the processor, JSON gen_kwargs carry
    the budget into SamplingParams.extra_args; every response is budget-forced."""
    import json
    import sys
    from pathlib import Path

    from procs import run

    from budget_forcing.tasks import TASKS_DIR

    model_args = {
        "pretrained": str(model_dir),
        "dtype": "float32",
        "enforce_eager": True,
        "max_model_len": 512,
        "logits_processors": ["budget_forcing.vllm:BudgetForcing"],
        "distributed_executor_backend": "uni",  # no worker process either
    }
    gen_kwargs = {"max_gen_toks": 48, "extra_args": {"max": 12, "num_waits": 1, "format": "s1"}}
    out = tmp_path / "out"
    cmd = [
        Path(sys.executable).parent / "lm_eval", "--model", "vllm", "--model_args", json.dumps(model_args),
        "--include_path", TASKS_DIR, "--tasks", "aime24_bf_sample", "--apply_chat_template",
        "--gen_kwargs", json.dumps(gen_kwargs), "--output_path", out, "--log_samples",
    ]  # fmt: skip
    # The engine in lm-eval's own process: with an engine-core child, vLLM 0.32 can leave lm_eval
    # waiting forever at interpreter exit for a child nobody shut down (results already written).
    env = {
        **os.environ,
        "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
    }
    proc = run(cmd, timeout=800, cwd=tmp_path, env=env)
    assert "aime24_bf_sample" in proc.stdout
    samples = [
        json.loads(line) for path in out.rglob("samples_*.jsonl") for line in path.read_text().splitlines()
    ]
    assert len(samples) == 3
    for sample in samples:
        response = sample["resps"][0][0]
        # The random model never stops: the budget ends thinking and forces the answer prefix.
        assert "Final Answer:" in response, response
    # `budget-forcing stats` reads each sample's statistics back off its texts and extra_args.
    from budget_forcing.cli import main as cli_main

    files = [str(p) for p in out.rglob("samples_*.jsonl")]
    assert cli_main(["stats", *files, "--tokenizer", str(model_dir)]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(rows) == 3
    assert [(r["thinking_tokens"], r["waits"], r["forced_end"]) for r in rows] == [(12, 0, True)] * 3


# --------------------------------------------------------------------------------- sampling
def test_sampled_attempts_are_replaced_as_often_as_the_model_attempts(llm, tok, model_dir):
    """Sampling: every row stays within its bounds, and the share of rows whose second thinking
    token was an attempt replaced by "Wait" matches the model's attempt probability there
    (a z-test against the exact per-row probabilities, from the same weights in transformers)."""
    n, budget = 400, 8
    start, wait = ids(tok, "<|im_start|>think"), ids(tok, "Wait")
    attempt_ids = [tok.convert_tokens_to_ids("<|im_start|>"), tok.eos_token_id]
    # A bias makes attempts likely (about 1 in 4 steps); the wait's first token is banned as a free
    # choice, so a "Wait" at that position can only be an injected one.
    bias = {attempt_ids[0]: 5.0, wait[0]: -100.0}
    prompt = prompts_of(tok, ["Hi"])[0]
    settings = Settings(max=budget, num_waits=1, format="s1")
    params = SamplingParams(
        temperature=1.0, max_tokens=budget + 16, logit_bias=bias, extra_args=vars(settings)
    )
    outs = generate(llm, [prompt] * n, params)
    stats = request_stats(tok, outs, settings)
    assert all(t <= budget for t in stats.thinking_tokens)
    assert all(w <= 1 for w in stats.waits)

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    gens = [list(o.outputs[0].token_ids) for o in outs]
    first = [g[len(start)] for g in gens]
    assert not any(f in attempt_ids for f in first)  # s1's min_tokens=1: the first token never ends
    probs = {}
    with torch.no_grad():
        for x in set(first):
            logits = model(torch.tensor([prompt + start + [x]])).logits[0, -1]
            for token, b in bias.items():
                logits[token] += b
            probs[x] = float(torch.softmax(logits, -1)[attempt_ids].sum())
    expected = sum(probs[x] for x in first)
    variance = sum(probs[x] * (1 - probs[x]) for x in first)
    observed = sum(g[len(start) + 1 : len(start) + 1 + len(wait)] == wait for g in gens)
    z = (observed - expected) / variance**0.5
    print(f"replaced attempts: {observed} of {n} rows, expected {expected:.1f} (z = {z:.2f})")
    assert 0.1 * n < expected < 0.5 * n
    assert abs(z) < 4


# ---------------------------------------------------------------- scaling sweep, vLLM backend
def test_scaling_sweep_vllm_backend(llm, model_dir, tmp_path, monkeypatch):
    """`benchmarks/scaling.py --backend vllm` (lm-eval's vllm model + the processor): the HF backend's
    JSON, plot and cached runs, with exact per-question counts (the session engine serves it)."""
    import importlib.util
    import json
    import sys
    from pathlib import Path

    import lm_eval.models.vllm_causallms as vllm_causallms

    from budget_forcing.tasks import TASKS_DIR

    repo = Path(__file__).resolve().parents[1]
    spec = importlib.util.spec_from_file_location("bf_scaling", repo / "benchmarks" / "scaling.py")
    scaling = importlib.util.module_from_spec(spec)
    sys.modules["bf_scaling"] = scaling  # dataclasses resolve string annotations through sys.modules
    spec.loader.exec_module(scaling)
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    (tasks / "toy.jsonl").write_text(
        "".join(
            json.dumps({"problem": q, "answer": a}) + "\n" for q, a in [("2 + 2?", "4"), ("3 * 5?", "15")]
        )
    )
    (tasks / "toy_bf.yaml").write_text(
        f"include: {TASKS_DIR / 'math500_bf.yaml'}\ntask: toy_bf\n"
        f"dataset_kwargs:\n  data_key: toy\n  hub_path: none\n  hub_split: test\n  data_file: {tasks / 'toy.jsonl'}\n"
    )
    monkeypatch.setattr(vllm_causallms, "LLM", lambda **kwargs: llm)  # no second engine start
    config = scaling.SweepConfig(
        model=str(model_dir), tasks=["toy_bf"], include_path=[str(tasks)], output_dir=str(tmp_path / "sweep"),
        budgets=[4, 8], waits=[1], answer_tokens=4, batch_size=2, dtype="float32", format="s1",
        backend="vllm", model_args="max_answer_tokens=3",
    )  # fmt: skip
    results = scaling.run_sweep(config)
    out = Path(config.output_dir)
    assert json.loads((out / "scaling.json").read_text()) == json.loads(json.dumps(results))
    assert (out / "scaling.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    method = results["tasks"]["toy_bf"]["budget_forcing"]
    points = method["points"]
    assert [p["label"] for p in points] == ["max=4", "max=8", "max=8+1 waits"]
    # The random model never ends thinking itself: every question thinks exactly up to its cap.
    assert [p["thinking_tokens"] for p in points] == [[4, 4], [8, 8], [8, 8]]
    assert [p["extra"]["forced_end"] for p in points] == [1.0, 1.0, 1.0]
    assert [p["extra"]["num_waits"] for p in points] == [0, 0, 1]
    assert method["control"] == 100.0 and {"scaling", "performance"} <= set(method)
    # One cached run per point, keyed apart from the HF backend's; a rerun evaluates nothing.
    assert sorted(p.name.rsplit("-", 1)[0] for p in (out / "runs").glob("*.json")) == [
        "max4", "max8", "max8-waits1"
    ]  # fmt: skip
    monkeypatch.setattr(vllm_causallms.VLLM, "generate_until", None)
    assert scaling.run_sweep(config) == results
