"""The lm-eval model ``hf-budget-forcing``: in-process generate_until checks and a real CLI run."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
import torch
from procs import run

pytest.importorskip("lm_eval")
pytest.importorskip("math_verify")

from lm_eval.api.instance import Instance  # noqa: E402
from lm_eval.utils import hash_string  # noqa: E402

from budget_forcing import BudgetForcing  # noqa: E402
from budget_forcing.integrations.lm_eval import MODEL_NAME, BudgetForcingLM, cli_evaluate  # noqa: E402
from budget_forcing.testing import tiny_model, tiny_tokenizer  # noqa: E402

QUESTIONS = ["What is 2 + 2?", "Find the number of positive divisors of 144.", "Let x = 5. What is x^2?"]


def eager_model(tokenizer):
    """A tiny float64 model that tries to end thinking at once (so waits are injected).

    Random tiny models with tied embeddings repeat their last input token. Giving ``<think>`` the
    embedding of ``</think>`` (and making ``</think>``'s a bit longer) makes the model answer the
    forced ``<think>`` with ``</think>``: an immediate attempt to end thinking.
    """
    model = tiny_model(tokenizer, dtype=torch.float64)
    think, end = tokenizer.convert_tokens_to_ids(["<think>", "</think>"])
    with torch.no_grad():
        emb = model.get_input_embeddings().weight
        emb[think] = emb[end]
        emb[end] *= 1.5
    return model


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


@pytest.fixture(scope="module")
def lm(tok):
    return BudgetForcingLM(
        pretrained=eager_model(tok), tokenizer=tok, format="think", thinking_min=6, thinking_max=16,
        num_waits=1, batch_size=2, device="cpu",
    )  # fmt: skip


def prompt(tok, question: str) -> str:
    return tok.apply_chat_template(
        [{"role": "user", "content": question}], tokenize=False, add_generation_prompt=True
    )


def requests(tok, gen_kwargs: dict, repeats: int = 1) -> list[Instance]:
    out = []
    for doc_id, question in enumerate(QUESTIONS):
        inst = Instance(
            request_type="generate_until",
            doc={"problem": question},
            arguments=(prompt(tok, question), dict(gen_kwargs)),
            idx=0,
            metadata=("toy", doc_id, repeats),
        )
        out.extend([inst] * repeats)
    return out


def direct(model, tok, question: str, max_new_tokens: int, **budget) -> tuple[dict, str]:
    """What one plain generate() call with the processor gives for one prompt: stats row and text."""
    enc = tok([prompt(tok, question)], return_tensors="pt")
    bf = BudgetForcing(tok, format="think", **budget)
    out = model.generate(
        **enc, logits_processor=[bf], stopping_criteria=[bf.stopping_criteria()], max_new_tokens=max_new_tokens,
        do_sample=False, pad_token_id=tok.pad_token_id,
    )  # fmt: skip
    tokens = out[0, enc["input_ids"].shape[1] :].tolist()
    while tokens and tokens[-1] == tok.pad_token_id:
        tokens.pop()
    return bf.stats.as_rows()[0], tok.decode(tokens, skip_special_tokens=False)


def test_registered_under_its_name() -> None:
    from lm_eval.api.registry import get_model

    assert get_model(MODEL_NAME) is BudgetForcingLM


def test_generate_until_matches_direct_generate_and_respects_budgets(lm, tok) -> None:
    lm.budget_records.clear()
    results = lm.generate_until(
        requests(tok, {"until": ["Question:"], "max_gen_toks": 40}), disable_tqdm=True
    )
    assert len(results) == len(lm.budget_records) == len(QUESTIONS)
    by_doc = {r["doc_id"]: r for r in lm.budget_records}
    for doc_id, (question, text) in enumerate(zip(QUESTIONS, results, strict=True)):
        stats, expected = direct(lm.model, tok, question, 40, min=6, max=16, num_waits=1)
        record = by_doc[doc_id]
        # Batched, sorted and padded by lm-eval: same tokens and counts as one plain call per prompt.
        assert {k: record[k] for k in stats} == stats
        assert record["prompt_hash"] == hash_string(prompt(tok, question))
        assert 6 <= record["thinking_tokens"] <= 16
        assert record["waits"] == 1 and record["forced_end"] is True
        assert (record["thinking_min"], record["thinking_max"], record["num_waits"]) == (6, 16, 1)
        # "full" output: the whole continuation up to the end of the answer.
        assert text == expected.split("<|im_end|>")[0]
        # num_waits: as in s1 (min_tokens=1), the first thinking token is never an attempt.
        assert text.startswith("<think>") and "Wait" in text and "</think>\n\nFinal Answer:" in text


def test_stop_strings_cut_only_the_answer(lm, tok) -> None:
    # "Wait" is injected into the thinking and ":" ends the forced prefix: neither may cut anything;
    # the first ":" the model writes in its answer does.
    results = lm.generate_until(
        requests(tok, {"until": ["Wait", ":"], "max_gen_toks": 40}), disable_tqdm=True
    )
    for text in results:
        assert text.startswith("<think>") and "Wait" in text
        assert text.endswith("</think>\n\nFinal Answer:")
    answer_only = BudgetForcingLM(
        pretrained=lm.model, tokenizer=tok, format="think", thinking_min=6, thinking_max=16, output="answer",
        batch_size=3, device="cpu",
    )  # fmt: skip
    results = answer_only.generate_until(
        requests(tok, {"until": [":"], "max_gen_toks": 40}), disable_tqdm=True
    )
    assert results == ["Final Answer:"] * len(QUESTIONS)


def test_gen_kwargs_override_budget_and_auto_cap(lm, tok) -> None:
    lm.budget_records.clear()
    lm.generate_until(
        requests(tok, {"max_gen_toks": 40, "thinking_max": 8, "thinking_min": 0}), disable_tqdm=True
    )
    assert [r["thinking_max"] for r in lm.budget_records] == [8] * 3
    # thinking_min=0, num_waits=1: the first attempt becomes "Wait", then the cap of 8 ends thinking.
    assert all(r["thinking_tokens"] == 8 and r["waits"] == 1 for r in lm.budget_records)

    lm.budget_records.clear()
    lm.generate_until(
        requests(tok, {"max_gen_toks": 40, "thinking_max": "auto", "answer_room": 10}), disable_tqdm=True
    )
    overhead = BudgetForcing(tok, format="think").end_overhead
    assert [r["thinking_max"] for r in lm.budget_records] == [40 - overhead - 10] * 3
    assert all(r["thinking_tokens"] <= 40 - overhead - 10 for r in lm.budget_records)
    assert all(r["generated_tokens"] <= 40 for r in lm.budget_records)


def test_repeats_are_numbered(lm, tok) -> None:
    lm.budget_records.clear()
    lm.generate_until(requests(tok, {"max_gen_toks": 40}, repeats=2), disable_tqdm=True)
    keys = sorted((r["doc_id"], r["repeat"]) for r in lm.budget_records)
    assert keys == [(d, r) for d in range(3) for r in range(2)]


def test_budget_that_does_not_fit_is_a_clear_error(lm, tok) -> None:
    with pytest.raises(ValueError, match="max_gen_toks"):
        lm.generate_until(requests(tok, {"max_gen_toks": 20, "thinking_max": 18}), disable_tqdm=True)
    with pytest.raises(ValueError, match="max_gen_toks"):
        lm.generate_until(requests(tok, {"max_gen_toks": 40, "thinking_max": "auto"}), disable_tqdm=True)
    with pytest.raises(ValueError, match="thinking_max"):
        BudgetForcingLM(pretrained=lm.model, tokenizer=tok, format="think", thinking_max="lots", device="cpu")


def test_sidecar_argument_writes_jsonl(lm, tok, tmp_path) -> None:
    model = BudgetForcingLM(
        pretrained=lm.model, tokenizer=tok, format="think", thinking_max=8, sidecar=tmp_path / "bf.jsonl",
        batch_size=3, device="cpu",
    )  # fmt: skip
    model.generate_until(requests(tok, {"max_gen_toks": 30}), disable_tqdm=True)
    rows = [json.loads(line) for line in (tmp_path / "bf.jsonl").read_text().splitlines()]
    assert rows == model.budget_records and len(rows) == 3


@pytest.mark.slow
def test_console_script_runs_lm_eval_end_to_end(tok, tmp_path) -> None:
    model_dir = tmp_path / "model"
    tok.save_pretrained(model_dir)
    eager_model(tok).save_pretrained(model_dir)
    local = tmp_path / "my_math.jsonl"
    local.write_text(
        "".join(
            json.dumps({"problem": q, "answer": str(a)}) + "\n"
            for q, a in zip(QUESTIONS, [4, 15, 25], strict=True)
        )
    )
    script = Path(sys.executable).with_name("budget-forcing-eval")
    launcher = (
        [str(script)] if script.exists() else [sys.executable, "-m", "budget_forcing.integrations.lm_eval"]
    )
    out = tmp_path / "out"
    cmd = [
        *launcher, "--model", MODEL_NAME,
        "--model_args", f"pretrained={model_dir},dtype=float64,format=think,thinking_min=6,thinking_max=16,num_waits=1",
        "--device", "cpu", "--tasks", "aime24_bf_sample,math500_bf",  # packaged tasks: no --include_path
        "--apply_chat_template", "--gen_kwargs", "max_gen_toks=40", "--batch_size", "2",
        "--output_path", str(out), "--log_samples",
    ]  # fmt: skip
    env = {
        **os.environ,
        "BUDGET_FORCING_MATH500_DATA": str(local),
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
    }
    env["OMP_NUM_THREADS"] = "1"  # 2 shared CPU cores: no thread oversubscription
    env.pop("BUDGET_FORCING_SIDECAR_DIR", None)
    proc = run(cmd, env=env, cwd=tmp_path, timeout=600)
    assert "aime24_bf_sample" in proc.stdout and "math500_bf" in proc.stdout

    run_dir = next(out.iterdir())
    results = json.loads(next(run_dir.glob("results_*.json")).read_text())
    assert set(results["results"]) == {"aime24_bf_sample", "math500_bf"}
    assert all("exact_match,none" in r for r in results["results"].values())

    samples = {}
    for path in run_dir.glob("samples_*.jsonl"):
        for line in path.read_text().splitlines():
            s = json.loads(line)
            task = "math500_bf" if "math500_bf" in path.name else "aime24_bf_sample"
            samples[(task, s["doc_id"])] = s
    assert len(samples) == 6  # 3 shipped AIME-style questions + 3 from the local file

    sidecar = [
        json.loads(line) for line in next(run_dir.glob("budget_forcing_*.jsonl")).read_text().splitlines()
    ]
    assert len(sidecar) == 6
    for row in sidecar:
        sample = samples[(row["task"], row["doc_id"])]
        assert row["prompt_hash"] == sample["prompt_hash"]  # keyed exactly like lm-eval's samples
        assert 6 <= row["thinking_tokens"] <= 16 and row["waits"] == 1 and row["forced_end"] is True
        # The exact counts: the same prompt through one plain generate() call.
        context = sample["arguments"]["gen_args_0"]["arg_0"]
        question = sample["doc"]["problem"]
        assert context == prompt(tok, question)
    model = eager_model(tok)
    for row in sidecar[:2]:
        question = samples[(row["task"], row["doc_id"])]["doc"]["problem"]
        stats, _ = direct(model, tok, question, 40, min=6, max=16, num_waits=1)
        assert {k: row[k] for k in stats} == stats
    # The same statistics, summarised per task, in lm-eval's own results file.
    summary = results["config"]["budget_forcing"]
    assert summary["settings"]["thinking_max"] == 16 and summary["format"] == "think"
    for task in ("aime24_bf_sample", "math500_bf"):
        rows = [r for r in sidecar if r["task"] == task]
        assert summary["tasks"][task]["generations"] == len(rows) == 3
        assert summary["tasks"][task]["thinking_tokens_mean"] == round(
            sum(r["thinking_tokens"] for r in rows) / 3, 3
        )
        assert summary["tasks"][task]["forced_end_rate"] == 1.0 and summary["tasks"][task]["waits_mean"] == 1


def test_cli_evaluate_sets_sidecar_dir_from_output_path(monkeypatch, tmp_path) -> None:
    import lm_eval.__main__

    seen = {}
    monkeypatch.setenv("BUDGET_FORCING_SIDECAR_DIR", "unset")
    monkeypatch.delenv("BUDGET_FORCING_SIDECAR_DIR")
    monkeypatch.setattr(lm_eval.__main__, "cli_evaluate", lambda: seen.update(argv=list(sys.argv)))
    monkeypatch.setattr(sys, "argv", ["budget-forcing-eval"])
    cli_evaluate(["--model", MODEL_NAME, "--tasks", "aime24_bf", "--output_path", str(tmp_path)])
    assert seen["argv"][1:] == ["--model", MODEL_NAME, "--tasks", "aime24_bf", "--output_path", str(tmp_path)]
    assert os.environ["BUDGET_FORCING_SIDECAR_DIR"] == str(tmp_path)
