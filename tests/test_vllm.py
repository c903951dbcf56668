"""Budget forcing in vLLM: the V1 adapter end to end (offline engine, server, lm-eval) and the V2
adapter through its interface. Run in the .venv-vllm environment (`make test` does)."""

from __future__ import annotations

import os

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # one in-process engine per session
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # GiB: plenty for tiny models, cheap to allocate

import random  # noqa: E402
from types import SimpleNamespace  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402
from vllm import LLM, SamplingParams, TokensPrompt  # noqa: E402
from vllm.v1.worker.gpu.sample.logits_processor import LogitsContext, LogitsProcRequestState  # noqa: E402
from vllm_support import Nudge, save_tiny_qwen2  # noqa: E402

from budget_forcing import BudgetForcing as HFBudgetForcing  # noqa: E402
from budget_forcing.testing import Nudge as HFNudge  # noqa: E402
from budget_forcing.vllm import BudgetForcing, Settings, request_stats, settings_from_params  # noqa: E402

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
                tokenizer=str(model_dir), tokenizer_revision=None, trust_remote_code=False, seed=0
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


def test_v2_interface_matches_the_hf_processor(model_dir, tok):
    """The V2 adapter, driven by hand, emits exactly what the HF processor emits for each request."""
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
    got = runner.run([(p, {**s, "format": "s1"}, budget) for p, s in zip(prompts, settings)], nudge)
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


def test_v2_rejects_speculative_decoding(model_dir):
    config = SimpleNamespace(speculative_config=object(), model_config=SimpleNamespace())
    with pytest.raises(ValueError, match="speculative"):
        BudgetForcing(config, None)
