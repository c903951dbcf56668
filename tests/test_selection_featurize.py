"""Featurize: real HTTP calls to a fake OpenAI-compatible server on loopback, a tiny local model,
grading, domains, trace lengths, the persistent cache, and kill-and-resume."""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path

import pytest
import yaml
from procs import run, started
from selection_helpers import (
    REPO,
    SECRET,
    FakeChatServer,
    cached_call_count,
    classifier_domain,
    judge_says_yes,
    rows_of,
    server_config,
    solves,
    write_jsonl,
)

from budget_forcing.selection.backends import BackendError, OpenAIChatBackend, make_backend
from budget_forcing.selection.config import ModelConfig
from budget_forcing.selection.featurize import parse_domain, parse_judge, reference_answer, render_prompt
from budget_forcing.selection.pipeline import load_config, run_featurize
from budget_forcing.selection.synthetic import make_pool, task_answer
from budget_forcing.testing import tiny_model, tiny_tokenizer


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("tok")
    tiny_tokenizer().save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("model")
    tok = tiny_tokenizer()
    tok.save_pretrained(path)
    tiny_model(tok).save_pretrained(path)
    return path


@pytest.fixture(autouse=True)
def api_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("S1K_TEST_KEY", SECRET)


def _pool(tmp_path: Path, n: int, seed: int = 3) -> list[dict]:
    rows = make_pool(n, seed=seed, planted=0.0).rows
    for i, row in enumerate(rows):
        row["row_id"] = i
    write_jsonl(tmp_path / "pool.jsonl", rows)
    return rows


def _config(server: FakeChatServer, tmp_path: Path, tok_dir: Path, **extra):
    data = server_config(
        server.url, tmp_path, tok_dir, **{"featurize.input": str(tmp_path / "pool.jsonl"), **extra}
    )
    return load_config(None, {k: v for k, v in data.items()})


def test_parsers_and_prompts() -> None:
    assert parse_judge("reasoning...\n**Yes**") is True
    assert parse_judge("The attempt is wrong.\nNo.") is False
    assert parse_judge("no verdict here: maybe") is None
    assert parse_judge("Yes\nOn reflection, the final answers differ.\n- No -") is False
    assert parse_judge("I'd say yes, though\nhmm") is None
    domains = {"11": "Number theory", "60": "Probability"}
    assert parse_domain("Number theory fits (11 is close to 60).\n60", domains) == "60"
    assert parse_domain("Class 99 or 11?", domains) == "11"
    assert parse_domain("no idea", domains) is None
    assert reference_answer("Thus $\\boxed{\\frac{1}{2}}$.", 40) == "\\frac{1}{2}"
    assert reference_answer("  42 ", 40) == "42"
    assert reference_answer("A long proof without a final boxed value at all, going on and on.", 40) is None
    text = render_prompt("Q: {question}\nS: {solution}", question="f{x} = {solution}", solution="$\\{1\\}$")
    assert text == "Q: f{x} = {solution}\nS: $\\{1\\}$"


def test_featurize_with_server_is_correct_and_cached(tmp_path: Path, tok_dir: Path) -> None:
    rows = _pool(tmp_path, 120)
    with FakeChatServer() as server:
        config = _config(server, tmp_path, tok_dir)
        result = run_featurize(config)
        first_calls = server.total_answered()
        out = rows_of(result.output)

        # every request answered exactly once; some failed once with HTTP 500 and were retried
        assert server.answered and max(server.answered.values()) == 1
        assert server.failed_once
        assert set(server.auth_headers) == {f"Bearer {SECRET}"}
        attempts = [k for k in server.answered if k[0] == "attempt"]
        assert len(attempts) == 2 * len(rows)
        assert len([k for k in server.answered if k[0] == "classify"]) == len(rows)

        tok = tiny_tokenizer()
        judged, judge_prompts = 0, set()
        for row, got in zip(rows, out, strict=True):
            q = row["question"]
            answer = task_answer(q)
            proof = "\\boxed" not in row["solution"]
            for model in ("base-a", "base-b"):
                name = model.replace("-", "_")
                assert got[f"attempt_{name}"].endswith("$.")
                expected = judge_says_yes(got[f"attempt_{name}"]) if proof else solves(model, q)
                assert got[f"correct_{name}"] is expected, (q, model)
            teacher_right = f"boxed{{{answer}}}" in row["attempt"]
            expected_teacher = judge_says_yes(row["attempt"]) if proof else teacher_right
            assert got["teacher_correct"] is expected_teacher
            judged += proof
            if proof:  # identical (question, solution, attempt) prompts are asked once
                judge_prompts |= {(q, got["attempt_base_a"]), (q, got["attempt_base_b"]), (q, row["attempt"])}
            code = classifier_domain(q)
            assert got["domain"] == code
            if code is None:
                assert any("no MSC code" in e for e in got["feature_errors"])
            trace = row["thinking_trajectories"][0]
            assert got["trace_tokens"] == len(tok(trace, add_special_tokens=False)["input_ids"])
        assert judged > 0 and len([k for k in server.answered if k[0] == "judge"]) == len(judge_prompts)
        report = json.loads(Path(result.report_path).read_text())
        assert report["rows_in"] == report["rows_out"] == len(rows)
        assert report["info"]["grading"]["teacher_correct"]["judge"] == judged

        # the key never leaves the Authorization header
        for path in [result.report_path, config.output_dir + "/cache.sqlite", result.output]:
            assert SECRET.encode() not in Path(path).read_bytes()

        # a rerun calls nothing and writes the same features
        again = run_featurize(config)
        assert server.total_answered() == first_calls
        stats = json.loads(Path(again.report_path).read_text())["info"]["calls"]
        assert all(s["called"] == 0 for s in stats.values()), stats
        assert rows_of(again.output) == out


def test_failed_calls_become_reported_errors_and_are_not_cached(tmp_path: Path, tok_dir: Path) -> None:
    rows = _pool(tmp_path, 12)
    with FakeChatServer() as server:
        config = _config(server, tmp_path, tok_dir)
    # the server is shut down: every call fails after its retries
    config.featurize.base_models[0].max_retries = 1
    config.featurize.base_models = config.featurize.base_models[:1]
    config.featurize.judge = None
    config.featurize.classifier = None
    config.featurize.domain_column = "metadata.domain"
    result = run_featurize(config)
    out = rows_of(result.output)
    assert all(r["attempt_base_a"] is None and r["correct_base_a"] is None for r in out)
    assert all(any("APIConnectionError" in e for e in r["feature_errors"]) for r in out)
    assert cached_call_count(Path(config.output_dir) / "cache.sqlite") == 0
    assert [r["domain"] for r in out] == [json.loads(r["metadata"])["domain"] for r in rows]


def test_backend_errors_are_clear() -> None:
    with pytest.raises(ValueError, match="Unknown backend 'vllm'"):
        make_backend(ModelConfig(name="x", model="m", backend="vllm"))
    backend = OpenAIChatBackend(
        ModelConfig(name="x", model="m", base_url="http://127.0.0.1:9/v1", max_retries=0)
    )
    [(index, err)] = list(backend.generate([[{"role": "user", "content": "hi"}]]))
    assert index == 0 and isinstance(err, BackendError) and "APIConnectionError" in str(err)


def test_a_reply_without_text_is_retried_never_returned_as_an_answer() -> None:
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    replies = [None, None, "Answer: 4"]  # content null twice, then text
    calls = []

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args) -> None:
            pass

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers["Content-Length"]))
            content = replies[min(len(calls), len(replies) - 1)]
            calls.append(content)
            body = json.dumps(
                {"id": "x", "object": "chat.completion", "created": 0, "model": "m",
                 "choices": [{"index": 0, "finish_reason": "stop",
                              "message": {"role": "assistant", "content": content}}]}
            ).encode()  # fmt: skip
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_port}/v1"
        backend = OpenAIChatBackend(ModelConfig(name="x", model="m", base_url=url, max_retries=2))
        assert backend.complete([{"role": "user", "content": "2+2?"}]) == "Answer: 4" and len(calls) == 3
        calls.clear()
        replies[:] = [None]
        with pytest.raises(BackendError, match="no text in 3 replies"):
            backend.complete([{"role": "user", "content": "2+2?"}])
        assert len(calls) == 3
    finally:
        server.shutdown()


def test_local_backend_math_verify_only_and_domain_column(tmp_path: Path, model_dir: Path) -> None:
    rows = _pool(tmp_path, 24, seed=5)
    base = {
        "name": "tiny",
        "backend": "local",
        "model": str(model_dir),
        "max_tokens": 6,
        "batch_size": 8,
        "num_threads": 1,
    }
    config = load_config(
        str(REPO / "recipes/configs/selection/tiny.yaml"),
        {
            "output_dir": str(tmp_path),
            "featurize.input": str(tmp_path / "pool.jsonl"),
            "featurize.base_models": [base],
            "featurize.tokenizer": str(model_dir),
        },
    )
    assert config.featurize.judge is None and config.featurize.classifier is None
    result = run_featurize(config)
    out = rows_of(result.output)
    for row, got in zip(rows, out, strict=True):
        assert isinstance(got["attempt_tiny"], str)
        assert got["domain"] == json.loads(row["metadata"])["domain"]
        if "\\boxed" in row["solution"]:
            assert got["correct_tiny"] is False  # a random tiny model does not solve additions
            assert got["teacher_correct"] is (f"boxed{{{task_answer(row['question'])}}}" in row["attempt"])
        else:
            assert got["correct_tiny"] is None and got["teacher_correct"] is None
            assert any("no judge configured" in e for e in got["feature_errors"])
    again = run_featurize(config)
    stats = json.loads(Path(again.report_path).read_text())["info"]["calls"]
    assert all(s["called"] == 0 for s in stats.values()), stats
    assert rows_of(again.output) == out


def test_local_backend_with_a_thinking_budget(model_dir: Path) -> None:
    from budget_forcing.selection.backends import LocalHFBackend

    config = ModelConfig(
        name="tiny", model=str(model_dir), backend="local", max_tokens=12, temperature=0.0, thinking_budget=3,
        thinking_format="think", num_threads=1,
    )  # fmt: skip
    backend = LocalHFBackend(config)
    outputs = dict(backend.generate([[{"role": "user", "content": f"What is {k} + {k}?"}] for k in range(3)]))
    for text in outputs.values():
        assert text.startswith("<think>") and "</think>" in text  # thinking was cut at 3 tokens
        assert "<|endoftext|>" not in text
    plain = dict(
        LocalHFBackend(
            ModelConfig(name="tiny", model=str(model_dir), backend="local", max_tokens=12)
        ).generate([[{"role": "user", "content": "What is 1 + 1?"}]])
    )
    assert "</think>" not in plain[0]


def _featurize_cmd(config_path: Path) -> list[str]:
    return [sys.executable, str(REPO / "recipes/select_s1k.py"), "featurize", "--config", str(config_path)]


def _env() -> dict[str, str]:
    return {
        **os.environ,
        "S1K_TEST_KEY": SECRET,
        "OMP_NUM_THREADS": "1",
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
    }


def _uninterrupted_run(tmp_path: Path, tok_dir: Path) -> tuple[str, list, dict]:
    """The reference for the kill tests: ``(pool path, featurized rows, calls answered)`` of one full run."""
    _pool(tmp_path, 150, seed=7)
    pool = str(tmp_path / "pool.jsonl")
    with FakeChatServer() as server:
        ref_dir = tmp_path / "ref"
        run_featurize(
            load_config(None, server_config(server.url, ref_dir, tok_dir, **{"featurize.input": pool}))
        )
        return pool, rows_of(ref_dir / "featurized.parquet"), dict(server.answered)


@pytest.mark.slow
def test_kill_and_resume_loses_nothing_and_redoes_nothing(tmp_path: Path, tok_dir: Path) -> None:
    pool, reference, answered = _uninterrupted_run(tmp_path, tok_dir)
    expected_calls = set(answered)
    total = len(expected_calls)

    # a run killed (SIGKILL) while requests are in flight, then rerun
    with FakeChatServer(hold_after=total // 2) as server:
        run_dir = tmp_path / "run"
        config_path = tmp_path / "run.yaml"
        config_path.write_text(
            yaml.safe_dump(server_config(server.url, run_dir, tok_dir, **{"featurize.input": pool}))
        )
        with started(_featurize_cmd(config_path), env=_env()) as proc:
            assert server.holding.wait(120), "the featurize run never reached the hold point"
            cache = run_dir / "cache.sqlite"
            deadline = time.time() + 30
            while cached_call_count(cache) < server.total_answered() and time.time() < deadline:
                time.sleep(0.05)
            answered_before_kill = server.total_answered()
            assert cached_call_count(cache) == answered_before_kill  # every answer was committed
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(30)
        assert proc.returncode == -signal.SIGKILL
        assert not (run_dir / "featurized.parquet").exists()
        assert 0 < answered_before_kill < total and server.held >= 1

        with server.lock:
            server.hold_after = None
        server.release()
        done = run(_featurize_cmd(config_path), env=_env(), timeout=300)
        assert SECRET not in done.stdout + done.stderr
        assert rows_of(run_dir / "featurized.parquet") == reference
        # nothing answered twice, nothing missing: exactly the reference run's calls
        assert max(server.answered.values()) == 1
        assert set(server.answered) == expected_calls


@pytest.mark.slow
def test_kill_at_an_arbitrary_moment_gives_the_same_output(tmp_path: Path, tok_dir: Path) -> None:
    pool, reference, answered = _uninterrupted_run(tmp_path, tok_dir)
    total = sum(answered.values())
    with FakeChatServer() as server:
        run_dir = tmp_path / "run"
        config_path = tmp_path / "run.yaml"
        config_path.write_text(
            yaml.safe_dump(server_config(server.url, run_dir, tok_dir, **{"featurize.input": pool}))
        )
        with started(_featurize_cmd(config_path), env=_env()) as proc:
            deadline = time.time() + 120
            while server.total_answered() < total // 3 and time.time() < deadline:
                time.sleep(0.005)
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(30)
        assert proc.returncode == -signal.SIGKILL and not (run_dir / "featurized.parquet").exists()
        run(_featurize_cmd(config_path), env=_env(), timeout=300)
        assert rows_of(run_dir / "featurized.parquet") == reference
        # at most the requests in flight at the kill (4 per endpoint) were answered twice
        duplicates = sum(c - 1 for c in server.answered.values())
        assert duplicates <= 4
        assert len(server.answered) == total


def test_empty_or_missing_solutions_are_never_sent_to_the_judge(tmp_path: Path, tok_dir: Path) -> None:
    rows = _pool(tmp_path, 12)
    proofs = [i for i, r in enumerate(rows) if "\\boxed" not in r["solution"]][:2]
    empty, missing = (proofs + [0, 1])[:2]
    rows[empty]["solution"], rows[missing]["solution"] = "   ", None
    write_jsonl(tmp_path / "pool.jsonl", rows)
    with FakeChatServer() as server:
        config = _config(server, tmp_path, tok_dir)
        assert config.featurize.judge is not None  # a judge is configured
        out = rows_of(run_featurize(config).output)
    for i in (empty, missing):  # a judge verdict or a failed judge call would show here
        assert out[i]["correct_base_a"] is None and out[i]["teacher_correct"] is None
        errors = " ".join(out[i]["feature_errors"])
        assert "no reference solution (empty or missing)" in errors and "no judge configured" not in errors
    assert all(out[i]["correct_base_a"] is not None for i in range(len(rows)) if i not in (empty, missing))
