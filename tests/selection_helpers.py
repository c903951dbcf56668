"""Helpers for the selection recipe tests: a real OpenAI-compatible HTTP server on loopback, pools, configs."""

from __future__ import annotations

import hashlib
import json
import re
import sqlite3
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from budget_forcing.selection.synthetic import DOMAINS, task_answer

REPO = Path(__file__).resolve().parent.parent

SECRET = "sk-test-very-secret-0123456789"
BASE_MODELS = ("base-a", "base-b")


def h(*parts: str) -> int:
    return int.from_bytes(hashlib.blake2b("\x00".join(parts).encode(), digest_size=8).digest(), "big")


def question_of_attempt_prompt(content: str) -> str:
    return content.split("\n\nPlease reason step by step", 1)[0]


def solves(model: str, question: str) -> bool:
    """Whether the fake base model answers this question correctly (about 1 in 4)."""
    return h(model, question) % 4 == 0


def judge_says_yes(attempt: str) -> bool:
    return h("judge", attempt) % 3 == 0


def classifier_domain(question: str) -> str | None:
    """The code the fake classifier replies with; None: it replies without a code (1 in 40)."""
    if h("unsure", question) % 40 == 0:
        return None
    codes = sorted(DOMAINS)
    return codes[h("domain", question) % len(codes)]


def flaky(content: str) -> bool:
    """Requests that fail once with HTTP 500 before succeeding (exercises retries)."""
    return h("flaky", content) % 10 == 0


class FakeChatServer:
    """An OpenAI-compatible ``/v1/chat/completions`` server answering deterministically, counting calls.

    ``answered`` counts successful replies per ``(kind, model, content hash)``. With ``hold_after`` set,
    once that many replies were sent, new requests are held (``holding`` is set) until ``release()``,
    and then refused with HTTP 503: they are never answered.
    """

    def __init__(self, hold_after: int | None = None) -> None:
        self.answered: Counter[tuple[str, str, str]] = Counter()
        self.received = 0
        self.failed_once: set[str] = set()
        self.auth_headers: Counter[str] = Counter()
        self.hold_after = hold_after
        self.holding = threading.Event()
        self.released = threading.Event()
        self.held = 0
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                server.auth_headers[self.headers.get("Authorization", "")] += 1
                status, reply, key = server.respond(body)
                data = json.dumps(reply).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
                if status == 200:
                    with server.lock:
                        server.answered[key] += 1

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def __enter__(self) -> FakeChatServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()
        self.httpd.shutdown()
        self.httpd.server_close()

    def release(self) -> None:
        self.released.set()

    def total_answered(self) -> int:
        with self.lock:
            return sum(self.answered.values())

    def respond(self, body: dict[str, Any]) -> tuple[int, dict[str, Any], tuple[str, str, str]]:
        model, content = body["model"], body["messages"][-1]["content"]
        with self.lock:
            self.received += 1
            hold = self.hold_after is not None and sum(self.answered.values()) >= self.hold_after
            if hold:
                self.held += 1
        if hold:
            self.holding.set()
            self.released.wait(60)
            return 503, {"error": "held"}, ("", "", "")
        digest = hashlib.sha256(content.encode()).hexdigest()[:16]
        with self.lock:
            first_failure = flaky(content) and digest not in self.failed_once
            if first_failure:
                self.failed_once.add(digest)
        if first_failure:
            return 500, {"error": "transient"}, ("", "", "")
        if "## Reference solution" in content:
            kind = "judge"
            attempt = content.split("## Student's attempt\n", 1)[1].split("\n\nDecide whether", 1)[0]
            text = "Compared the final answers.\n" + ("Yes" if judge_says_yes(attempt) else "No")
        elif "Mathematics Subject Classification" in content:
            kind = "classify"
            question = content.split("## Question\n", 1)[1].split("\n\nThink about which domain", 1)[0]
            code = classifier_domain(question)
            text = f"This is about the topic.\n{code}" if code else "I am not sure which one."
        else:
            kind = "attempt"
            question = question_of_attempt_prompt(content)
            answer = task_answer(question) or 0
            text = f"Let me add.\nThe answer is $\\boxed{{{answer if solves(model, question) else answer + 7}}}$."
        reply = {
            "id": "chatcmpl-test",
            "object": "chat.completion",
            "model": model,
            "choices": [
                {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
            ],
        }
        return 200, reply, (kind, model, digest)


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    return path


def write_eval_sets(directory: Path, eval_sets: dict[str, list[str]]) -> list[str]:
    """The first set as JSONL (``problem``), the others as parquet (``question``)."""
    from datasets import Dataset

    paths = []
    for n, (name, questions) in enumerate(eval_sets.items()):
        if n == 0:
            paths.append(str(write_jsonl(directory / f"{name}.jsonl", [{"problem": q} for q in questions])))
        else:
            path = directory / f"{name}.parquet"
            Dataset.from_dict({"question": questions, "answer": ["0"] * len(questions)}).to_parquet(str(path))
            paths.append(str(path))
    return paths


def server_config(url: str, output_dir: Path, tokenizer_dir: Path, **extra: Any) -> dict[str, Any]:
    """A recipe mapping using the fake server for base models, judge and classifier."""

    def endpoint(name: str, model: str) -> dict[str, Any]:
        return {
            "name": name,
            "model": model,
            "backend": "openai",
            "base_url": url,
            "api_key_env": "S1K_TEST_KEY",
            "max_concurrency": 4,
            "max_retries": 3,
            "timeout_seconds": 30,
        }

    config: dict[str, Any] = {
        "output_dir": str(output_dir),
        "pool": str(output_dir / "pool.jsonl"),
        "seed": 0,
        "decontaminate": {"eval_files": []},
        "featurize": {
            "base_models": [endpoint(m.replace("-", "_"), m) for m in BASE_MODELS],
            "judge": endpoint("judge", "judge-model"),
            "classifier": endpoint("classifier", "classifier-model"),
            "tokenizer": str(tokenizer_dir),
        },
        "select": {"n": 50, "long_trace_min_tokens": 400},
    }
    for dotted, value in extra.items():
        node = config
        *head, last = dotted.split(".")
        for part in head:
            node = node.setdefault(part, {})
        node[last] = value
    return config


def cached_call_count(cache_path: Path) -> int:
    """Entries of model calls (not local computations) committed to the cache."""
    conn = sqlite3.connect(f"file:{cache_path}?mode=ro", uri=True, timeout=5)
    try:
        return conn.execute(
            "SELECT COUNT(*) FROM entries WHERE stage LIKE 'attempt:%' OR stage LIKE 'judge:%' OR stage LIKE 'classify:%'"
        ).fetchone()[0]
    finally:
        conn.close()


def rows_of(path: str | Path) -> list[dict[str, Any]]:
    from datasets import Dataset

    return Dataset.from_parquet(str(path), keep_in_memory=True).to_list()


def strip_ansi(text: str) -> str:
    return re.sub(r"\x1b\[[0-9;]*m", "", text)
