"""benchmarks/scaling.py: a real (tiny) sweep through lm-eval, resumability, the plot, the CLI."""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from pathlib import Path

import pytest
import torch
from procs import run

pytest.importorskip("lm_eval")
pytest.importorskip("matplotlib")

from budget_forcing.tasks import TASKS_DIR  # noqa: E402
from budget_forcing.testing import tiny_model, tiny_tokenizer  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def load_scaling():
    spec = importlib.util.spec_from_file_location("bf_scaling", REPO / "benchmarks" / "scaling.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["bf_scaling"] = module  # dataclasses resolve string annotations through sys.modules
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def scaling():
    return load_scaling()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    """A random tiny model that never ends thinking on its own: thinking always runs to the cap."""
    path = tmp_path_factory.mktemp("model")
    tok = tiny_tokenizer()
    tok.save_pretrained(path)
    tiny_model(tok, dtype=torch.float64).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def task_dir(tmp_path_factory) -> Path:
    """A user's own task directory: our MATH500 task on a local file (as the docs show)."""
    path = tmp_path_factory.mktemp("tasks")
    (path / "toy.jsonl").write_text(
        "".join(
            json.dumps({"problem": q, "answer": a}) + "\n"
            for q, a in [("What is 2 + 2?", "4"), ("What is 3 * 5?", "15"), ("What is 10 - 7?", "3")]
        )
    )
    (path / "toy_bf.yaml").write_text(
        f"include: {TASKS_DIR / 'math500_bf.yaml'}\n"
        "task: toy_bf\n"
        "dataset_kwargs:\n  data_key: toy\n  hub_path: none\n  hub_split: test\n"
        f"  data_file: {path / 'toy.jsonl'}\n"
    )
    return path


@pytest.mark.slow
def test_sweep_all_methods_exact_counts_resume_and_plot(
    scaling, model_dir, task_dir, tmp_path, monkeypatch
) -> None:
    config = scaling.SweepConfig(
        model=str(model_dir), tasks=["toy_bf"], include_path=[str(task_dir)], output_dir=str(tmp_path / "sweep"),
        methods=list(scaling.METHODS), budgets=[4, 8], waits=[1], samples=2, vote_samples=[1, 2],
        answer_tokens=4, batch_size=3, device="cpu", dtype="float64", format="think",
    )  # fmt: skip
    results = scaling.run_sweep(config)
    methods = results["tasks"]["toy_bf"]
    assert set(methods) == set(scaling.METHODS)

    bf = {p["label"]: p for p in methods["budget_forcing"]["points"]}
    assert list(bf) == ["max=4", "max=8", "max=8+1 waits"]
    # This model never ends thinking itself, so every question thinks exactly up to its cap.
    assert bf["max=4"]["thinking_tokens"] == [4, 4, 4]
    assert bf["max=8"]["thinking_tokens"] == [8, 8, 8]
    assert bf["max=4"]["extra"]["forced_end"] == 1.0
    assert methods["budget_forcing"]["control"] == 100.0
    # Prompt-only control: no forcing below the cap (8), so "think for up to 4 tokens" is ignored.
    tc = {p["label"]: p for p in methods["token_conditional"]["points"]}
    assert tc["prompt 4"]["thinking_tokens"] == [8, 8, 8]
    assert methods["token_conditional"]["control"] == 50.0
    tcbf = {p["label"]: p for p in methods["token_conditional_bf"]["points"]}
    assert tcbf["prompt+max 4"]["thinking_tokens"] == [4, 4, 4]
    cc = {p["label"]: p for p in methods["class_conditional"]["points"]}
    assert (cc["short"]["a_max"], cc["long"]["a_min"]) == (6, 6)  # median of the budgets
    # Rejection sampling: sampled generations all think 8 tokens, none fits 4: the last try is kept.
    rs = {p["label"]: p for p in methods["rejection_sampling"]["points"]}
    assert rs["max=4"]["extra"]["accepted"] == 0.0 and rs["max=8"]["extra"]["accepted"] == 1.0
    assert rs["max=8"]["extra"]["mean_tries"] == 1.0
    # Majority voting spends N samples of thinking per question.
    mv = {p["label"]: p for p in methods["majority_voting"]["points"]}
    assert mv["maj@1"]["thinking_tokens"] == [8, 8, 8] and mv["maj@2"]["thinking_tokens"] == [16, 16, 16]
    for data in methods.values():
        assert {"control", "scaling", "scaling_pairs", "performance"} <= set(data)

    out = Path(config.output_dir)
    assert json.loads((out / "scaling.json").read_text()) == json.loads(json.dumps(results))
    png = (out / "scaling.png").read_bytes()
    assert png[:8] == PNG_MAGIC and len(png) > 10_000
    runs = sorted(p.name for p in (out / "runs").glob("*.json"))
    # 3 budget forcing + 2 + 2 prompt runs + 2 class prompts + 2 sampled generations.
    assert len(runs) == 11
    settings = sorted(name.rsplit("-", 1)[0] for name in runs)  # files are named by their setting
    assert settings == sorted(
        ["max4", "max8", "max8-waits1", "nomax-prompt", "nomax-prompt", "nomax-prompt", "nomax-prompt",
         "max4-prompt", "max8-prompt", "nomax-sample0", "nomax-sample1"]
    )  # fmt: skip
    assert bf["max=8+1 waits"]["extra"]["num_waits"] == 1 and bf["max=8"]["extra"]["num_waits"] == 0

    # Resumable: a rerun evaluates nothing and gives the same results.
    import lm_eval

    def fail(*args, **kwargs):
        raise AssertionError("a finished point was evaluated again")

    monkeypatch.setattr(lm_eval, "simple_evaluate", fail)
    assert scaling.run_sweep(config) == results
    assert sorted(p.name for p in (out / "runs").glob("*.json")) == runs


def test_plot_is_a_png(scaling, tmp_path) -> None:
    from budget_forcing.metrics import ScalingPoint, summarize

    pts = [ScalingPoint("max=0", 0.1, [0, 0]), ScalingPoint("max=64", 0.5, [60, 64])]
    results = {"tasks": {"t": {"budget_forcing": {"points": [p.as_dict() for p in pts], **summarize(pts)}}}}
    path = scaling.plot(results, tmp_path / "p.png")
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC and len(data) > 5_000
    import matplotlib.image

    height, width, _ = matplotlib.image.imread(path).shape
    assert (width, height) == (660, 504)  # 5.5 x 4.2 inches at 120 dpi


def test_config_validation_and_cli_parsing(scaling, tmp_path) -> None:
    with pytest.raises(ValueError, match="Unknown methods"):
        scaling.SweepConfig(model="m", methods=["beam_search"])
    with pytest.raises(ValueError, match="vote_samples"):
        scaling.SweepConfig(model="m", samples=2, vote_samples=[4])
    config = scaling.parse_args(
        ["--model", "m", "--tasks", "a", "b", "--budgets", "16", "32", "--limit", "2"]
    )
    assert (config.tasks, config.budgets, config.limit, config.cap) == (["a", "b"], [16, 32], 2, 32)
    yaml = tmp_path / "sweep.yaml"
    yaml.write_text("model: m\nbudgets: [8]\nwaits: []\nmethods: [budget_forcing, majority_voting]\n")
    config = scaling.parse_args([str(yaml)])
    assert (config.budgets, config.waits, config.methods) == ([8], [], ["budget_forcing", "majority_voting"])


@pytest.mark.slow
def test_cli_with_custom_task_dir_and_local_model(model_dir, task_dir, tmp_path) -> None:
    out = tmp_path / "cli"
    cmd = [
        sys.executable, str(REPO / "benchmarks" / "scaling.py"), "--model", str(model_dir),
        "--include_path", str(task_dir), "--tasks", "toy_bf", "--budgets", "2", "6", "--waits", "0",
        "--answer_tokens", "4", "--device", "cpu", "--dtype", "float64", "--format", "think",
        "--batch_size", "3", "--output_dir", str(out),
    ]  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = run(cmd, env=env, timeout=600, cwd=tmp_path)
    assert "| budget_forcing | 100.0% |" in proc.stdout
    results = json.loads((out / "scaling.json").read_text())
    points = results["tasks"]["toy_bf"]["budget_forcing"]["points"]
    assert [p["mean_thinking"] for p in points] == [2.0, 6.0]
    assert (out / "scaling.png").read_bytes()[:8] == PNG_MAGIC
