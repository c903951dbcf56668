"""Real `accelerate launch` runs of recipes/sft.py with the tiny CPU recipe: one process, then two (gloo)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from procs import free_port, run

pytest.importorskip("trl")
pytest.importorskip("accelerate")

from budget_forcing.formats import S1_FORMAT, THINK_FORMAT  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
NUM_EXAMPLES = 16


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, tokenizer):
    """A tiny Qwen2 model directory, a config-only directory and 16 memorisable examples in both formats."""
    from budget_forcing.testing import tiny_model

    path = tmp_path_factory.mktemp("sft-launch")
    model = tiny_model(tokenizer)
    tokenizer.save_pretrained(path / "model")
    model.save_pretrained(path / "model")
    tokenizer.save_pretrained(path / "config-only")
    model.config.save_pretrained(path / "config-only")
    with open(path / "train.jsonl", "w") as f:
        for i in range(NUM_EXAMPLES):
            fmt = S1_FORMAT if i % 2 == 0 else THINK_FORMAT
            thinking, answer = f"{i} + 3 = {i + 3}.", f"Answer: {i + 3}"
            messages = [
                {"role": "user", "content": f"What is {i} + 3?"},
                {"role": "assistant", "content": fmt.render(thinking, answer)},
            ]
            f.write(json.dumps({"messages": messages}) + "\n")
    return path


def launch(accelerate_config: str, *args: str, timeout: float = 420) -> subprocess.CompletedProcess:
    """``accelerate launch`` the recipe in its own process group, on a free port, with a deadline."""
    accelerate = shutil.which("accelerate", path=os.path.dirname(sys.executable)) or shutil.which(
        "accelerate"
    )
    command = [
        accelerate,
        "launch",
        "--config_file",
        str(ROOT / "recipes/accelerate_configs" / accelerate_config),
        "--main_process_port",
        str(free_port()),
    ]
    command += [
        str(ROOT / "recipes/sft.py"),
        "--config",
        str(ROOT / "recipes/configs/sft/tiny-cpu.yaml"),
        *args,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    return run(command, cwd=ROOT, env=env, timeout=timeout)


def logged_losses(output_dir: Path) -> list[float]:
    state = json.loads((output_dir / "trainer_state.json").read_text())
    return [entry["loss"] for entry in state["log_history"] if "loss" in entry]


@pytest.mark.slow
@pytest.mark.timeout(480)
def test_single_process_launch_trains_and_saves(workdir, tokenizer):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = workdir / "out-1proc"
    epochs = 20  # 16 examples / batch 4 = 4 steps per epoch
    launch(
        "cpu.yaml",
        *("--model_name_or_path", str(workdir / "model"), "--dataset_name", str(workdir / "train.jsonl")),
        *("--output_dir", str(out), "--num_train_epochs", str(epochs), "--disable_tqdm", "true"),
    )
    state = json.loads((out / "trainer_state.json").read_text())
    assert state["max_steps"] == epochs * NUM_EXAMPLES // 4 == state["global_step"]
    losses = logged_losses(out)
    assert len(losses) == state["max_steps"]
    first, last = sum(losses[:4]) / 4, sum(losses[-4:]) / 4  # first and last epoch
    assert last < 0.5 * first, f"loss did not go down enough: {losses}"

    model = AutoModelForCausalLM.from_pretrained(out)
    assert model.config.hidden_size == 32 and model.config.eos_token_id == tokenizer.eos_token_id
    assert AutoTokenizer.from_pretrained(out).eos_token == "<|im_end|>"


@pytest.mark.slow
@pytest.mark.timeout(480)
def test_two_process_cpu_launch_from_scratch(workdir):
    out = workdir / "out-2proc"
    epochs = 3
    result = launch(
        "cpu_2proc.yaml",
        *("--model_name_or_path", str(workdir / "config-only"), "--init_from_scratch", "true"),
        *("--dataset_name", str(workdir / "train.jsonl"), "--output_dir", str(out)),
        *("--num_train_epochs", str(epochs), "--disable_tqdm", "true"),
    )
    # two data-parallel ranks share each epoch: 16 examples / (batch 4 x 2 processes) = 2 steps per epoch
    state = json.loads((out / "trainer_state.json").read_text())
    assert state["max_steps"] == epochs * NUM_EXAMPLES // (4 * 2) == state["global_step"]
    # the token count logged after the first epoch is gathered over both ranks: every example, once
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(workdir / "config-only")
    rows = [json.loads(line)["messages"] for line in (workdir / "train.jsonl").read_text().splitlines()]
    total = sum(
        len(
            tok(
                tok.apply_chat_template(m[:1], tokenize=False, add_generation_prompt=True)
                + m[1]["content"]
                + "<|im_end|>"
            )["input_ids"]
        )
        for m in rows
    )
    assert [e["num_tokens"] for e in state["log_history"] if e.get("epoch") == 1.0] == [total]
    assert "from scratch" in result.stderr
    assert (out / "model.safetensors").exists()
    losses = logged_losses(out)
    assert len(losses) == state["max_steps"] and losses[-1] < losses[0]
