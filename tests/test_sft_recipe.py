"""The SFT recipe's data, label masking, LoRA, saving and shipped configs (budget_forcing.sft, recipes/configs, accelerate configs)."""

from __future__ import annotations

import glob
import json
import os
from pathlib import Path
from unittest import mock

import pytest

pytest.importorskip("trl")
pytest.importorskip("accelerate")
pytest.importorskip("datasets")

from budget_forcing.formats import S1_FORMAT, THINK_FORMAT  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RECIPE_CONFIGS = sorted(glob.glob(str(ROOT / "recipes/configs/sft/*.yaml")))
ACCELERATE_CONFIGS = sorted(glob.glob(str(ROOT / "recipes/accelerate_configs/*.yaml")))
SYSTEM = (
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"  # the tiny tokenizer's default system turn
)


from budget_forcing import sft  # noqa: E402  (the code of recipes/sft.py)


def chat(question: str, assistant: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": question}, {"role": "assistant", "content": assistant}]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, tokenizer):
    from budget_forcing.testing import tiny_model

    path = tmp_path_factory.mktemp("tiny-model")
    tokenizer.save_pretrained(path)
    tiny_model(tokenizer).save_pretrained(path)
    return path


def make_trainer(model_dir: Path, data_file: Path, output_dir: Path, *extra: str):
    parser = sft.make_parser()
    args = [
        "--config",
        str(ROOT / "recipes/configs/sft/tiny-cpu.yaml"),
        "--model_name_or_path",
        str(model_dir),
    ]
    args += ["--dataset_name", str(data_file), "--output_dir", str(output_dir), *extra]
    script_args, training_args, model_args = parser.parse_args_and_config(args)
    return sft.build_trainer(script_args, training_args, model_args)


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


# ----------------------------------------------------------------------------------------------------------
# Label masking: exactly the assistant's thinking + answer + one <|im_end|>
# ----------------------------------------------------------------------------------------------------------

MASKING_CASES = [
    ("What is 3 + 4?", S1_FORMAT.render("3 + 4 = 7.", "Answer: 7")),
    ("Let x = 5. What is x^2?", THINK_FORMAT.render("x^2 = 25", "The answer is \\boxed{25}.")),
    # an assistant turn that already ends with the end token gets no second one
    ("What is 12 + 30?", S1_FORMAT.render("12 + 30 = 42", "Answer: 42") + "<|im_end|>"),
]


@pytest.fixture(scope="module")
def saved_tokenizer(model_dir):
    """The tokenizer as the recipe loads it from the model directory (the reference for exact ids)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model_dir)


@pytest.fixture(scope="module")
def masked_dataset(tmp_path_factory, model_dir):
    tmp = tmp_path_factory.mktemp("masking")
    data = write_jsonl(tmp / "train.jsonl", [{"messages": chat(q, a)} for q, a in MASKING_CASES])
    return make_trainer(model_dir, data, tmp / "out").train_dataset


@pytest.mark.parametrize("index", range(len(MASKING_CASES)))
def test_loss_covers_exactly_the_assistant_turn(masked_dataset, saved_tokenizer, index):
    tokenizer = saved_tokenizer
    question, assistant = MASKING_CASES[index]
    row = masked_dataset[index]
    prompt_ids = tokenizer.encode(f"{SYSTEM}<|im_start|>user\n{question}<|im_end|>\n<|im_start|>assistant\n")
    body = assistant.removesuffix("<|im_end|>")
    completion_ids = tokenizer.encode(body) + [tokenizer.convert_tokens_to_ids("<|im_end|>")]

    assert row["input_ids"] == prompt_ids + completion_ids
    assert row["labels"] == [-100] * len(prompt_ids) + completion_ids
    trained = [t for t in row["labels"] if t != -100]
    assert tokenizer.decode(trained, skip_special_tokens=False) == body + "<|im_end|>"
    # one end token, at the very end: no doubled EOS
    assert trained.count(tokenizer.eos_token_id) == 1 and trained[-1] == tokenizer.eos_token_id
    # nothing of the system / user turns carries loss
    assert "user" not in tokenizer.decode(trained) and question not in tokenizer.decode(trained)


def test_trained_span_starts_with_the_thinking_delimiter(masked_dataset, saved_tokenizer):
    tokenizer = saved_tokenizer
    im_start, think, end_think = (
        tokenizer.convert_tokens_to_ids(t) for t in ("<|im_start|>", "<think>", "</think>")
    )
    s1_trained = [t for t in masked_dataset[0]["labels"] if t != -100]
    assert (
        s1_trained[0] == im_start and s1_trained.count(im_start) == 2
    )  # <|im_start|>think, <|im_start|>answer
    think_trained = [t for t in masked_dataset[1]["labels"] if t != -100]
    assert think_trained[0] == think and think_trained.count(end_think) == 1 and im_start not in think_trained


def test_truncation_keeps_the_start_and_counts_rows(tmp_path, model_dir, tokenizer, caplog):
    long = S1_FORMAT.render(" ".join(["Wait, let me check that again."] * 40), "Answer: 42")
    data = write_jsonl(
        tmp_path / "train.jsonl", [{"messages": chat("Q?", long)}, {"messages": chat("Q?", "ok")}]
    )
    with caplog.at_level("INFO", logger="budget_forcing.sft"):
        dataset = make_trainer(model_dir, data, tmp_path / "out", "--max_length", "64").train_dataset
    assert [len(r) for r in dataset["input_ids"]] == [64, len(dataset[1]["input_ids"])]
    assert "1 rows exceed max_length=64" in caplog.text


# ----------------------------------------------------------------------------------------------------------
# Data: raw s1K / s1K-1.1 rows, messages rows, errors
# ----------------------------------------------------------------------------------------------------------


def test_s1k_row_renders_like_s1():
    row = {"question": "1+1?", "thinking_trajectories": ["First step.", "Second step. "], "attempt": " 2 "}
    messages = sft.s1k_messages(row, S1_FORMAT)
    assert messages == [
        {"role": "user", "content": "1+1?"},
        {
            "role": "assistant",
            "content": "<|im_start|>think\nFirst step.\nSecond step.\n<|im_start|>answer\nAnswer: 2",
        },
    ]
    already = dict(row, attempt="So the final Answer: 2")
    assert sft.s1k_messages(already, S1_FORMAT)[-1]["content"].endswith("answer\nSo the final Answer: 2")
    think = sft.s1k_messages(row, THINK_FORMAT, system_prompt="Be brief.")
    assert think[0] == {"role": "system", "content": "Be brief."}
    assert think[-1]["content"] == "<think>\nFirst step.\nSecond step.\n</think>\n\nAnswer: 2"


@pytest.mark.parametrize(
    ("columns", "trace", "answer"),
    [
        ({"thinking_trajectories": ["a = 1"], "attempt": "1"}, "a = 1", "Answer: 1"),  # s1K
        (
            {"deepseek_thinking_trajectory": "b = 2", "deepseek_attempt": "2", "attempt": "x"},
            "b = 2",
            "Answer: 2",
        ),
    ],
)
def test_raw_hub_columns_become_prompt_completion(tmp_path, tokenizer, columns, trace, answer):
    data = write_jsonl(tmp_path / "raw.jsonl", [{"question": "Q1", **columns}, {"question": "Q2", **columns}])
    args = sft.ScriptArguments(dataset_name=str(data))
    dataset = sft.build_dataset(args, tokenizer, "<|im_end|>")
    assert dataset.column_names == ["prompt", "completion"] and len(dataset) == 2
    assert dataset[1]["prompt"] == f"{SYSTEM}<|im_start|>user\nQ2<|im_end|>\n<|im_start|>assistant\n"
    assert dataset[1]["completion"] == S1_FORMAT.render(trace, answer) + "<|im_end|>"


def test_parquet_and_max_train_samples(tmp_path, tokenizer):
    from datasets import Dataset

    rows = [{"messages": chat(f"Q{i}", THINK_FORMAT.render("t", str(i)))} for i in range(5)]
    Dataset.from_list(rows).to_parquet(str(tmp_path / "sel.parquet"))
    args = sft.ScriptArguments(dataset_name=str(tmp_path / "sel.parquet"), max_train_samples=3)
    dataset = sft.build_dataset(args, tokenizer, "<|im_end|>")
    assert dataset["completion"] == [f"<think>\nt\n</think>\n\n{i}<|im_end|>" for i in range(3)]


def test_bad_data_raises_clear_errors(tmp_path, tokenizer):
    data = write_jsonl(tmp_path / "bad.jsonl", [{"text": "hello"}])
    with pytest.raises(ValueError, match="expected a `messages` column"):
        sft.build_dataset(sft.ScriptArguments(dataset_name=str(data)), tokenizer, "<|im_end|>")
    with pytest.raises(ValueError, match="must end with an assistant turn"):
        sft.prompt_completion([{"role": "user", "content": "hi"}], tokenizer, "<|im_end|>")
    (tmp_path / "data.txt").write_text("x")
    with pytest.raises(ValueError, match="Unsupported data file"):
        sft.load_raw_dataset(sft.ScriptArguments(dataset_name=str(tmp_path / "data.txt")))


def test_config_only_directory_needs_init_from_scratch(tmp_path, tokenizer, model_dir):
    from transformers import AutoConfig

    config_dir = tmp_path / "config-only"
    tokenizer.save_pretrained(config_dir)
    AutoConfig.from_pretrained(model_dir).save_pretrained(config_dir)
    data = write_jsonl(tmp_path / "train.jsonl", [{"messages": chat("Q?", "A")}])
    with pytest.raises(ValueError, match="--init_from_scratch true"):
        make_trainer(config_dir, data, tmp_path / "out")
    trainer = make_trainer(config_dir, data, tmp_path / "out", "--init_from_scratch", "true")
    assert trainer.model.config.hidden_size == 32 and len(trainer.train_dataset) == 1


# ----------------------------------------------------------------------------------------------------------
# LoRA, quantisation flags, remote code, and the saved dtype
# ----------------------------------------------------------------------------------------------------------


def small_run(model_dir: Path, tmp_path: Path, *extra: str):
    data = write_jsonl(tmp_path / "train.jsonl", [{"messages": chat(q, a)} for q, a in MASKING_CASES])
    return make_trainer(
        model_dir, data, tmp_path / "out", "--max_steps", "2", "--disable_tqdm", "true", *extra
    )


def test_lora_trains_only_the_adapters(tmp_path, model_dir):
    import torch

    pytest.importorskip("peft")
    trainer = small_run(model_dir, tmp_path, "--use_peft", "true", "--lora_r", "4", "--lora_alpha", "8")
    trainable = {n for n, p in trainer.model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    assert trainer.model.peft_config["default"].r == 4
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.train()
    changed = {n for n, p in trainer.model.named_parameters() if not torch.equal(before[n], p.detach())}
    assert changed and changed <= trainable  # the base model's weights did not move
    out = tmp_path / "saved"
    sft.save_model(trainer, str(out), "bfloat16")
    assert (out / "adapter_model.safetensors").is_file() and not (out / "model.safetensors").exists()
    assert saved_dtypes(out / "adapter_model.safetensors") == {torch.bfloat16}


def test_quantisation_needs_adapters_and_remote_code_is_forwarded(tmp_path, model_dir, monkeypatch):
    with pytest.raises(ValueError, match="--use_peft true"):
        small_run(model_dir, tmp_path, "--load_in_4bit", "true")
    seen = []
    real = sft.load_tokenizer
    monkeypatch.setattr(sft, "load_tokenizer", lambda args, trust: seen.append(trust) or real(args, trust))
    trainer = small_run(model_dir, tmp_path)
    assert seen == [False] and trainer.args.model_init_kwargs["trust_remote_code"] is False
    trainer = small_run(model_dir, tmp_path, "--trust_remote_code", "true")
    assert seen == [False, True] and trainer.args.model_init_kwargs["trust_remote_code"] is True


def saved_dtypes(path: Path) -> set:
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        return {f.get_tensor(name).dtype for name in f.keys()}  # noqa: SIM118 (safe_open is not a dict)


def test_the_final_model_is_saved_in_bf16(tmp_path, model_dir):
    import torch
    from transformers import AutoModelForCausalLM

    trainer = small_run(model_dir, tmp_path)
    assert trainer.model.dtype == torch.float32  # trained in fp32, like FSDP2's master weights
    trainer.train()
    out = tmp_path / "bf16"
    sft.save_model(trainer, str(out), "bfloat16")
    assert saved_dtypes(out / "model.safetensors") == {torch.bfloat16}
    assert json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"
    reloaded = AutoModelForCausalLM.from_pretrained(out, dtype="auto")
    assert reloaded.dtype == torch.bfloat16 and (out / "tokenizer_config.json").is_file()
    trained = trainer.model.state_dict()
    for name, tensor in reloaded.state_dict().items():
        assert torch.equal(tensor, trained[name].to(torch.bfloat16)), name
    sft.save_model(trainer, str(tmp_path / "kept"), None)
    assert saved_dtypes(tmp_path / "kept" / "model.safetensors") == {torch.float32}


def test_a_compiled_model_is_saved_under_its_own_weight_names(tmp_path, model_dir):
    import torch
    from transformers import AutoModelForCausalLM

    trainer = small_run(model_dir, tmp_path)
    # as `accelerate launch --dynamo_backend inductor` leaves it (compiling itself waits for a call)
    trainer.model_wrapped = torch.compile(trainer.model)
    assert next(iter(trainer.model_wrapped.state_dict())).startswith("_orig_mod.")
    out = tmp_path / "compiled"
    sft.save_model(trainer, str(out), "float32")
    reloaded = AutoModelForCausalLM.from_pretrained(out)
    trained = trainer.model.state_dict()
    assert reloaded.state_dict().keys() == trained.keys()
    for name, tensor in reloaded.state_dict().items():
        assert torch.equal(tensor, trained[name]), name


def test_fsdp2_recipes_save_bf16():
    for name in ("s1-32B", "s1.1-32B"):  # bf16 models, trained by FSDP2 as fp32 master weights
        script_args, _, model_args = parse_recipe(str(ROOT / f"recipes/configs/sft/{name}.yaml"))
        assert sft.save_dtype(script_args, model_args) == "bfloat16"
    script_args, _, model_args = parse_recipe(str(ROOT / "recipes/configs/sft/tiny-cpu.yaml"))
    assert sft.save_dtype(script_args, model_args) == "float32"  # the CPU recipe keeps its dtype
    for path in ACCELERATE_CONFIGS:
        if "fsdp2" in path:  # rank 0 gathers the full state dict, which save_model casts
            assert "fsdp_state_dict_type: FULL_STATE_DICT" in Path(path).read_text(), path


# ----------------------------------------------------------------------------------------------------------
# Shipped configs parse against the installed TRL / transformers / accelerate
# ----------------------------------------------------------------------------------------------------------


def parse_recipe(path: str):
    # bf16 recipes are validated against the local device; --use_cpu lets them parse on a CPU-only machine.
    # The recipe's `env:` block is applied to os.environ by TrlParser: keep it out of this process.
    with mock.patch.dict(os.environ):
        return sft.make_parser().parse_args_and_config(["--config", path, "--use_cpu", "true"])


def test_every_recipe_parses():
    assert {Path(p).name for p in RECIPE_CONFIGS} >= {"s1-32B.yaml", "s1.1-32B.yaml", "tiny-cpu.yaml"}
    for path in RECIPE_CONFIGS:
        script_args, training_args, model_args = parse_recipe(path)  # unknown or renamed keys raise
        assert model_args.model_name_or_path, path
        assert training_args.completion_only_loss is True and training_args.packing is False, path
        assert training_args.eos_token == "<|im_end|>", path


@pytest.mark.parametrize(
    ("name", "dataset", "max_length"), [("s1-32B", "s1K", 32768), ("s1.1-32B", "s1K-1.1", 20000)]
)
def test_32b_recipes_use_s1_hyperparameters(name, dataset, max_length):
    script_args, args, model_args = parse_recipe(str(ROOT / f"recipes/configs/sft/{name}.yaml"))
    assert model_args.model_name_or_path == "Qwen/Qwen2.5-32B-Instruct"
    assert script_args.dataset_name == f"simplescaling/{dataset}" and script_args.thinking_format == "s1"
    assert (args.num_train_epochs, args.per_device_train_batch_size, args.gradient_accumulation_steps) == (
        5,
        1,
        1,
    )
    assert (args.learning_rate, args.lr_scheduler_type.value, args.warmup_steps) == (1e-5, "cosine", 0.05)
    assert args.get_warmup_steps(315) == 16  # ceil(5% of s1's 315 steps)
    assert (args.adam_beta1, args.adam_beta2, args.weight_decay) == (0.9, 0.95, 1e-4)
    assert args.bf16 and args.max_length == max_length
    # FSDP checkpoints the layers; the trainer must not (transformers refuses both at once)
    assert args.activation_checkpointing is False
    assert args.average_tokens_across_devices is False  # s1: mean over each GPU's sequence, then over GPUs


def fsdp_plugin(config_path: str):
    """The FSDP plugin accelerate builds in each process launched with this config file."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils import FullyShardedDataParallelPlugin
    from accelerate.utils.launch import prepare_multi_gpu_env

    args = launch_command_parser().parse_args(["--config_file", config_path, "recipes/sft.py"])
    args, _, _ = _validate_launch_command(args)
    with mock.patch.dict(os.environ, prepare_multi_gpu_env(args)):
        return FullyShardedDataParallelPlugin()


def test_every_accelerate_config_loads():
    from accelerate.commands.config.config_args import load_config_from_file
    from accelerate.commands.launch import launch_command_parser

    launch_options = {action.dest for action in launch_command_parser()._actions}
    expected = {
        "fsdp2_2nodes_8gpus",
        "fsdp2_1node_8gpus",
        "single_gpu",
        "deepspeed_zero3",
        "cpu",
        "cpu_2proc",
    }
    assert {Path(p).stem for p in ACCELERATE_CONFIGS} >= expected
    for path in ACCELERATE_CONFIGS:
        config = load_config_from_file(path)
        for key in [*(config.fsdp_config or {}), *(config.deepspeed_config or {})]:
            assert key in launch_options, f"{path}: {key} is not an accelerate option"
    two_nodes = load_config_from_file(str(ROOT / "recipes/accelerate_configs/fsdp2_2nodes_8gpus.yaml"))
    assert (two_nodes.num_machines, two_nodes.num_processes, two_nodes.mixed_precision) == (2, 16, "bf16")
    assert (
        load_config_from_file(str(ROOT / "recipes/accelerate_configs/deepspeed_zero3.yaml")).deepspeed_config[
            "zero_stage"
        ]
        == 3
    )


@pytest.mark.parametrize(("name", "offload"), [("fsdp2_2nodes_8gpus", True), ("fsdp2_1node_8gpus", True)])
def test_fsdp2_configs_build_the_intended_plugin(name, offload):
    from transformers.models.qwen2.modeling_qwen2 import Qwen2DecoderLayer

    plugin = fsdp_plugin(str(ROOT / f"recipes/accelerate_configs/{name}.yaml"))
    assert plugin.fsdp_version == 2 and plugin.reshard_after_forward is True  # full shard
    assert plugin.transformer_cls_names_to_wrap == [Qwen2DecoderLayer.__name__]
    assert plugin.activation_checkpointing is True and plugin.activation_checkpointing_offload is offload
    assert plugin.state_dict_type.name == "FULL_STATE_DICT" and plugin.cpu_ram_efficient_loading
