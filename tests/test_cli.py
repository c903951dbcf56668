"""The ``budget-forcing`` command line, on tiny local models (offline, a few seconds each)."""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import sys
import types
from pathlib import Path

import pytest
import torch
from procs import run
from transformers import AutoModelForCausalLM, AutoTokenizer, set_seed

from budget_forcing import BudgetForcing
from budget_forcing import cli as cli_module
from budget_forcing.cli import main
from budget_forcing.formats import S1_FORMAT, THINK_FORMAT
from budget_forcing.streaming import ThinkingStreamer
from budget_forcing.testing import tiny_model, tiny_tokenizer

QUESTIONS = ["What is 2 + 2?", "Name a colour of the sky, please."]
STATS = re.compile(
    r"^stats: thinking_tokens=(\d+) answer_tokens=(\d+) waits=(\d+) ignored=(\d+) forced_end=(true|false)$",
    re.M,
)


def _save(model, tokenizer, directory: Path) -> Path:
    tokenizer.save_pretrained(directory)
    model.save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    """A random tiny Qwen2 model: it never ends thinking on its own, so budgets cap it."""
    tok = tiny_tokenizer()
    return _save(tiny_model(tok), tok, tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="module")
def eager_dir(tmp_path_factory) -> Path:
    """A tiny model whose greedy choice is always ``</think>``: it tries to end thinking at every step.

    Embedding dimension 0 is 1 for every token and 3 for ``</think>``; no layer writes to it, so the
    final hidden state always points at ``</think>`` (tied embeddings) whatever the input.
    """
    tok = tiny_tokenizer()
    model = tiny_model(tok)
    end = tok.convert_tokens_to_ids("</think>")
    with torch.no_grad():
        emb = model.get_input_embeddings().weight
        emb[:, 0] = 1.0
        emb[end, 0] = 3.0
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight[0].zero_()
            layer.mlp.down_proj.weight[0].zero_()
    return _save(model, tok, tmp_path_factory.mktemp("eager"))


def reference(
    directory: Path,
    questions: list[str],
    *,
    max_new_tokens: int,
    temperature: float = 0.0,
    seed: int = 0,
    **bf_kwargs,
):
    """What the CLI must reproduce, written with plain transformers: one budget-forced generate call."""
    tok = AutoTokenizer.from_pretrained(directory)
    tok.padding_side = "left"
    model = AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32).eval()
    prompts = [
        tok.apply_chat_template([{"role": "user", "content": q}], tokenize=False, add_generation_prompt=True)
        for q in questions
    ]
    inputs = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
    bf = BudgetForcing(tok, **bf_kwargs)
    sampling = (
        {"do_sample": True, "temperature": temperature, "top_p": 1.0} if temperature else {"do_sample": False}
    )
    set_seed(seed)
    out = model.generate(
        **inputs,
        logits_processor=[bf],
        stopping_criteria=[bf.stopping_criteria()],
        max_new_tokens=max_new_tokens,
        **sampling,
    )
    new = out[:, inputs["input_ids"].shape[1] :]
    texts = [
        tok.decode(row, skip_special_tokens=False).split(tok.eos_token)[0].replace(tok.pad_token, "")
        for row in new
    ]
    return bf.stats, texts, new, tok


def run_cli(capsys, args: list[str]) -> tuple[int, str, str]:
    code = main(args)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def parsed_stats(out: str) -> list[tuple[int, int, int, int, bool]]:
    return [(int(a), int(b), int(c), int(d), e == "true") for a, b, c, d, e in STATS.findall(out)]


def stats_rows(stats) -> list[tuple[int, int, int, int, bool]]:
    return list(
        zip(
            stats.thinking_tokens,
            stats.answer_tokens,
            stats.waits,
            stats.ignored,
            stats.forced_end,
            strict=True,
        )
    )


# ------------------------------------------------------------------------------------------ generate


def test_generate_prints_thinking_answer_and_stats_of_the_processor(capsys, model_dir):
    args = ["generate", str(model_dir), "--format", "think", "--max", "12", "--max-new-tokens", "24"]
    code, out, _ = run_cli(
        capsys, args + ["-q", QUESTIONS[0], "-q", QUESTIONS[1], "--max-answer-tokens", "6"]
    )
    assert code == 0
    stats, texts, new, tok = reference(
        model_dir, QUESTIONS, max_new_tokens=24, format="think", max=12, max_answer_tokens=6
    )
    assert parsed_stats(out) == stats_rows(stats)
    # The random model never ends thinking: every row is cut at exactly --max thinking tokens.
    assert stats.thinking_tokens == [12, 12] and stats.forced_end == [True, True]
    start, end = tok.convert_tokens_to_ids("<think>"), tok.convert_tokens_to_ids("</think>")
    newline = tok.encode("\n", add_special_tokens=False)
    for row in new.tolist():  # <think>, 12 thinking tokens, then the forced "\n" (if needed) and </think>
        assert row[0] == start and end not in row[1:13]
        forced = [end] if tok.decode(row[12]).endswith("\n") else [*newline, end]
        assert row[13 : 13 + len(forced)] == forced
    for i, (question, text) in enumerate(zip(QUESTIONS, texts, strict=True)):
        thinking = text.removeprefix("<think>").partition("</think>")[0]
        answer = text.partition("</think>")[2].removeprefix("\n\n")  # the think format's separator
        assert answer.startswith("Final Answer:")
        block = out.split(f"=== question {i + 1}/2 ===\n")[1]
        assert block.startswith(question + "\n--- thinking (12 tokens, 0 waits, forced end) ---\n")
        assert thinking.removesuffix("\n") + "\n--- answer (" in block
        assert f"---\n{answer}\nstats:" in block


def test_json_rows_match_the_processor_and_the_text(capsys, eager_dir):
    args = [
        "generate",
        str(eager_dir),
        "--format",
        "think",
        "--min",
        "7",
        "--max",
        "30",
        "--max-new-tokens",
        "40",
    ]
    args.append("--json")
    code, out, _ = run_cli(
        capsys, args + ["-q", QUESTIONS[0], "-q", QUESTIONS[1], "--max-answer-tokens", "3"]
    )
    assert code == 0
    rows = [json.loads(line) for line in out.splitlines()]
    stats, texts, _, _ = reference(
        eager_dir, QUESTIONS, max_new_tokens=40, format="think", min=7, max=30, max_answer_tokens=3
    )
    assert [r["question"] for r in rows] == QUESTIONS
    assert [r["text"] for r in rows] == texts
    assert [
        (r["thinking_tokens"], r["answer_tokens"], r["waits"], r["ignored"], r["forced_end"]) for r in rows
    ] == (stats_rows(stats))
    # The eager model tries to end at once: "Wait" (2 tokens) is injected, then (s1's min_tokens=1)
    # its best other token, until min=7 is reached; then it ends on its own. Its answer repeats
    # "</think>", which must not move the split.
    for row in rows:
        assert row["waits"] == 3 and row["thinking"].count("Wait") == 3 and row["thinking_tokens"] == 9
        assert row["forced_end"] is False
        assert row["answer"] == "</think>" * 3 and row["answer_tokens"] == 3


def test_waits_and_wait_string_reach_the_processor(capsys, eager_dir):
    base = ["generate", str(eager_dir), "--format", "think", "--max", "20", "--json", "-q", QUESTIONS[0]]
    _, out, _ = run_cli(capsys, base + ["--waits", "3", "--max-answer-tokens", "1"])
    row = json.loads(out)
    # The first thinking token and the token after each Wait are never attempts (s1's min_tokens=1).
    assert (row["waits"], row["thinking"].count("Wait"), row["thinking_tokens"]) == (3, 3, 10)
    _, out, _ = run_cli(capsys, base + ["--waits", "2", "--wait", "Hmm", "--max-answer-tokens", "1"])
    row = json.loads(out)
    assert row["waits"] == 2 and row["thinking"].count("Hmm") == 2
    # --wait '' only suppresses the end: no text is injected, the attempts are still counted.
    _, out, _ = run_cli(capsys, base + ["--waits", "2", "--wait", "", "--max-answer-tokens", "1"])
    row = json.loads(out)
    assert (row["waits"], row["ignored"]) == (0, 2) and "Wait" not in row["thinking"]


def test_sampling_is_seeded_and_matches_generate(capsys, model_dir):
    args = ["generate", str(model_dir), "--format", "s1", "--max", "10", "--max-new-tokens", "30", "--json"]
    args += ["-q", QUESTIONS[1], "--temperature", "1.5", "--top-p", "1.0", "--seed", "3"]
    _, first, _ = run_cli(capsys, args)
    _, second, _ = run_cli(capsys, args)
    assert first == second
    stats, texts, _, _ = reference(
        model_dir, QUESTIONS[1:], max_new_tokens=30, temperature=1.5, seed=3, format="s1", max=10
    )
    row = json.loads(first)
    assert row["text"] == texts[0]
    assert (row["thinking_tokens"], row["answer_tokens"]) == (
        stats.thinking_tokens[0],
        stats.answer_tokens[0],
    )


@pytest.mark.parametrize("fmt", ["s1", "think"])
def test_stream_shows_the_same_thinking_and_answer(capsys, model_dir, fmt):
    args = [
        "generate",
        str(model_dir),
        "--format",
        fmt,
        "--max",
        "14",
        "--max-answer-tokens",
        "8",
        "-q",
        QUESTIONS[0],
    ]
    _, plain, _ = run_cli(capsys, args + ["--json"])
    row = json.loads(plain)
    code, streamed, _ = run_cli(capsys, args + ["--stream"])
    assert code == 0
    header, _, rest = streamed.partition("--- thinking ---\n")
    assert header == f"=== question 1/1 ===\n{QUESTIONS[0]}\n"
    thinking, _, rest = rest.partition("\n--- answer ---\n")
    answer, _, stats_line = rest.rpartition("\nstats: ")
    assert thinking == row["thinking"]
    assert answer == row["answer"]
    assert parsed_stats("stats: " + stats_line) == [
        (row["thinking_tokens"], row["answer_tokens"], row["waits"], row["ignored"], row["forced_end"])
    ]


def test_questions_from_files(capsys, model_dir, tmp_path):
    jsonl = tmp_path / "q.jsonl"
    jsonl.write_text(
        "\n".join(json.dumps(r) for r in [{"question": QUESTIONS[0]}, {"problem": QUESTIONS[1]}]) + "\n"
    )
    txt = tmp_path / "q.txt"
    txt.write_text(f"{QUESTIONS[0]}\n\n{QUESTIONS[1]}\n")
    args = ["generate", str(model_dir), "--format", "think", "--max", "4", "--max-new-tokens", "16", "--json"]
    for path in (jsonl, txt):
        code, out, _ = run_cli(capsys, args + ["--file", str(path), "--batch-size", "1"])
        assert code == 0
        assert [json.loads(line)["question"] for line in out.splitlines()] == QUESTIONS


def test_defaults_to_the_demo_model(capsys, model_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, _, err = run_cli(capsys, ["generate", "-q", "hi", "--format", "think"])
    assert code == 2
    assert "make demo" in err and "demo_outputs/model" in err
    shutil.copytree(model_dir, tmp_path / "demo_outputs" / "model")
    code, out, err = run_cli(capsys, ["generate", "-q", "hi", "--format", "think", "--max", "3", "--json"])
    assert code == 0 and json.loads(out)["thinking_tokens"] == 3
    assert str(Path("demo_outputs") / "model") in err


def test_a_mistyped_model_path_fails_at_once_naming_the_close_match(capsys, model_dir, tmp_path, monkeypatch):
    shutil.copytree(model_dir, tmp_path / "demo_outputs" / "model")
    monkeypatch.chdir(tmp_path)
    # Offline (the tests' setting): not a directory and not in the hub cache.
    code, _, err = run_cli(capsys, ["generate", "demo_output/model", "-q", "hi"])
    assert code == 2 and "'demo_output/model' does not exist" in err
    assert "did you mean 'demo_outputs/model'?" in err and "not in the local cache" in err
    # Online with the hub unreachable: one request, then the same clear error (no retry loop).
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    calls = []

    def unreachable(self, repo_id, **kwargs):
        calls.append(repo_id)
        raise ConnectionError("Name or service not known")

    monkeypatch.setattr("huggingface_hub.HfApi.model_info", unreachable)
    code, _, err = run_cli(capsys, ["generate", "demo_output/model", "-q", "hi"])
    assert code == 2 and calls == ["demo_output/model"]
    assert "did you mean 'demo_outputs/model'?" in err and "hub is unreachable" in err
    # A path that cannot be a hub id never reaches the hub.
    code, _, err = run_cli(capsys, ["generate", "./demo_output/model", "-q", "hi"])
    assert code == 2 and calls == ["demo_output/model"] and "Pass a local model directory" in err
    code, _, err = run_cli(capsys, ["generate", "demo_outputs", "-q", "hi"])
    assert code == 2 and "has no config.json" in err


def test_a_format_that_does_not_match_the_chat_template_warns(capsys, model_dir, tmp_path):
    s1_dir = tmp_path / "s1-like"
    shutil.copytree(model_dir, s1_dir)
    tok = AutoTokenizer.from_pretrained(s1_dir)
    tok.chat_template = tok.chat_template + "{{ '<|im_start|>think' if add_generation_prompt else '' }}"
    tok.save_pretrained(s1_dir)
    args = ["generate", str(s1_dir), "-q", "hi", "--max", "2", "--max-new-tokens", "16", "--json"]
    code, _, err = run_cli(capsys, [*args, "--format", "think"])
    assert code == 0, err
    assert "budget-forcing: warning: --format think" in err and "Use --format s1" in err
    code, _, err = run_cli(capsys, [*args, "--format", "s1"])
    assert code == 0 and "warning" not in err


def test_a_non_streamed_generation_shows_token_progress(capsys, model_dir):
    args = ["generate", str(model_dir), "--format", "think", "--max", "4", "--max-new-tokens", "16"]
    code, out, err = run_cli(capsys, [*args, "-q", QUESTIONS[0], "-q", QUESTIONS[1], "--batch-size", "1"])
    assert code == 0, err
    assert "question 1 of 2" in err and "question 2 of 2" in err and "tok" in err
    assert "question 1 of 2" not in out  # progress never mixes with the results


def test_every_budget_option_reaches_the_processor(capsys, model_dir, monkeypatch):
    import budget_forcing

    seen = {}

    def fake(tokenizer, **kwargs):
        seen.update(kwargs)
        raise ValueError("stop here")

    monkeypatch.setattr(budget_forcing, "BudgetForcing", fake)
    args = [
        "generate",
        str(model_dir),
        "-q",
        "hi",
        "--min",
        "3",
        "--max",
        "9",
        "--waits",
        "2",
        "--wait",
        "Hmm",
    ]
    args += ["--format", "s1", "--answer-prefix", "", "--max-answer-tokens", "5", "--compile"]
    code, _, err = run_cli(capsys, args)
    assert code == 2 and "stop here" in err
    assert seen == dict(
        min=3,
        max=9,
        num_waits=2,
        wait="Hmm",
        format="s1",
        answer_prefix=None,
        max_answer_tokens=5,
        compile=True,
    )


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--min", "9", "--max", "3"], "--min (9) is larger than --max (3)"),
        (["--stream", "--batch-size", "2"], "--batch-size 1"),
        (["--max", "40", "--max-new-tokens", "20"], "raise max_new_tokens"),
        (["--format", "auto"], "format='auto' cannot tell"),
    ],
)
def test_bad_input_errors_clearly(capsys, model_dir, extra, message):
    code, out, err = run_cli(capsys, ["generate", str(model_dir), "--format", "think", "-q", "hi", *extra])
    assert code == 2 and out == ""
    assert "budget-forcing: error: " in err and message in err.partition("budget-forcing: error: ")[2]


def test_missing_model_and_questions_error_clearly(capsys, tmp_path):
    code, _, err = run_cli(capsys, ["generate", str(tmp_path / "no-such-model"), "-q", "hi"])
    assert code == 2 and "does not exist" in err and "no-such-model" in err
    code, _, err = run_cli(capsys, ["generate", str(tmp_path)])
    assert code == 2 and "--question" in err
    code, _, err = run_cli(capsys, ["generate", str(tmp_path), "--file", str(tmp_path / "missing.jsonl")])
    assert code == 2 and "missing.jsonl" in err


@pytest.mark.slow
def test_console_script_in_a_subprocess(model_dir):
    script = Path(sys.executable).with_name("budget-forcing")
    command = [str(script)] if script.exists() else [sys.executable, "-m", "budget_forcing.cli"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    args = ["generate", str(model_dir), "--format", "think", "--max", "5", "--max-new-tokens", "16", "--json"]
    done = run(command + args + ["-q", QUESTIONS[0]], env=env, timeout=300)
    row = json.loads(done.stdout)
    stats, texts, _, _ = reference(model_dir, QUESTIONS[:1], max_new_tokens=16, format="think", max=5)
    assert row["text"] == texts[0] and row["thinking_tokens"] == stats.thinking_tokens[0] == 5
    bad = run(
        command + ["generate", str(model_dir), "--min", "5", "--max", "2", "-q", "x"],
        env=env,
        timeout=300,
        check=False,
    )
    assert bad.returncode == 2 and "--min (5) is larger than --max (2)" in bad.stderr


# ----------------------------------------------------------------------------- streamer and splitting


@pytest.mark.parametrize(
    ("fmt", "text", "expected"),
    [
        (
            S1_FORMAT,
            "<|im_start|>think\nstep 1\nstep 2\n<|im_start|>answer\nFinal Answer: 4<|im_end|>",
            ("step 1\nstep 2", "Final Answer: 4"),
        ),
        (S1_FORMAT, "step\n<|im_start|>answer\n4", ("step", "4")),  # the prompt left thinking open
        (S1_FORMAT, "<|im_start|>think\nstill thinking", ("still thinking", None)),
        (THINK_FORMAT, "<think>a b\n</think>x</think>y", ("a b", "x</think>y")),
        (THINK_FORMAT, "</think>answer only", ("", "answer only")),
    ],
)
def test_split_and_streamer_agree_token_by_token(fmt, text, expected):
    tok = tiny_tokenizer()
    assert fmt.split(text) == expected
    out = io.StringIO()
    streamer = ThinkingStreamer(tok, fmt, out=out)
    streamer.put(torch.tensor([[1, 2, 3]]))  # the prompt: not shown
    for token in tok.encode(text, add_special_tokens=False):
        streamer.put(torch.tensor([token]))
    streamer.end()
    assert (streamer.thinking, streamer.answer) == expected
    shown = out.getvalue()
    assert shown.startswith("--- thinking ---\n" + expected[0])
    assert (
        ("--- answer ---\n" + expected[1] in shown)
        if expected[1] is not None
        else "--- answer ---" not in shown
    )


def test_streamer_rejects_batches():
    streamer = ThinkingStreamer(tiny_tokenizer(), THINK_FORMAT, out=io.StringIO())
    with pytest.raises(ValueError, match="batch size 1"):
        streamer.put(torch.zeros(2, 3, dtype=torch.long))


# ------------------------------------------------------------------------------------- pass-throughs


def test_eval_hands_the_rest_of_the_command_line_to_lm_eval(capsys, monkeypatch):
    seen = []
    fake = types.ModuleType("budget_forcing.integrations.lm_eval")
    fake.cli_evaluate = seen.append
    monkeypatch.setitem(sys.modules, "budget_forcing.integrations.lm_eval", fake)
    assert main(["eval", "--model", "hf-budget-forcing", "--tasks", "aime24_bf"]) == 0
    assert seen == [["--model", "hf-budget-forcing", "--tasks", "aime24_bf"]]
    monkeypatch.setitem(sys.modules, "budget_forcing.integrations.lm_eval", None)  # not installed
    code, _, err = run_cli(capsys, ["eval", "--tasks", "x"])
    assert code == 2 and "pip install 'budget-forcing[eval]'" in err


def test_sft_launches_the_packaged_recipe_from_any_directory(monkeypatch, tmp_path):
    calls = []
    monkeypatch.setattr(cli_module.subprocess, "call", lambda command: calls.append(command) or 0)
    monkeypatch.chdir(tmp_path)  # no clone here
    assert main(["sft", "--config_file", "cpu.yaml", "--", "--config", "tiny.yaml"]) == 0
    assert calls[-1][-6:] == [
        "--config_file",
        "cpu.yaml",
        "-m",
        "budget_forcing.sft",
        "--config",
        "tiny.yaml",
    ]


def test_select_runs_in_process(monkeypatch, capsys, tmp_path):
    monkeypatch.chdir(tmp_path)
    assert main(["select", "synth", "--rows", "40", "--output", "pool/pool.jsonl"]) == 0
    assert len((tmp_path / "pool" / "pool.jsonl").read_text().splitlines()) == 40


# ------------------------------------------------------------------------------------------ the docs

DOCS = Path(__file__).resolve().parents[1] / "docs"


def test_docs_offline_quickstart_runs():
    blocks = re.findall(r"```python\n(.*?)```", (DOCS / "index.md").read_text(), re.S)
    offline = [b for b in blocks if "budget_forcing.testing" in b]
    assert len(offline) == 1
    exec(compile(offline[0], "docs/index.md", "exec"), {})  # asserts the capped thinking itself


def test_docs_cli_page_lists_every_generate_option():
    page = (DOCS / "cli.md").read_text()
    parser = cli_module.build_parser()
    generate = next(a for a in parser._subparsers._group_actions if a.choices).choices["generate"]
    options = [s for action in generate._actions for s in action.option_strings if s.startswith("--")]
    assert len(options) > 15
    missing = [o for o in options if o != "--help" and f"`{o}" not in page]
    assert not missing, f"docs/cli.md does not document {missing}"
