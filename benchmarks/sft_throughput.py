"""SFT throughput of a recipe: tokens/s and model FLOPs utilisation (MFU).

Runs the recipe's real training step (``recipes/sft.py`` = `budget_forcing.sft`: TRL ``SFTTrainer``, the recipe's optimizer,
precision and checkpointing) on synthetic s1-format examples of ``--seq_len`` tokens, times
``--steps`` optimizer steps after ``--warmup`` untimed ones, and prints

    tokens/s = trained tokens (non-padding, all processes) / time
    MFU      = 6 * N * tokens/s / (peak FLOP/s per device * devices)

with N the parameters that do matrix multiplies (all but the input embedding, unless tied to the
LM head). ``MFU+attn`` adds the causal attention FLOPs, 6 * layers * hidden * seq_len per token.
Activation recomputation is not counted (the usual convention), so checkpointing lowers MFU.

The model is random-initialised from ``--arch`` (real Qwen2.5 shapes, nothing downloaded); pass
``--arch recipe`` to load the recipe's own ``model_name_or_path`` instead. Peak FLOP/s comes from a
table of bf16 dense peaks by GPU name, or ``--peak_tflops``; on CPU only tokens/s and achieved
TFLOP/s are printed unless ``--peak_tflops`` is given.

Usage:
    # CPU, tiny model (seconds)
    python benchmarks/sft_throughput.py
    # one GPU, the single-GPU recipe's settings, Qwen2.5-0.5B shapes at 4K tokens
    accelerate launch --config_file recipes/accelerate_configs/single_gpu.yaml benchmarks/sft_throughput.py \\
        --config recipes/configs/sft/s1-qwen2.5-0.5B-single-gpu.yaml --arch qwen2.5-0.5b --seq_len 4096
    # any recipe option can follow, e.g. --gradient_accumulation_steps 1 --activation_checkpointing false
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]

#: bf16 dense peak TFLOP/s per device, matched against torch.cuda.get_device_name() (first match wins).
PEAK_TFLOPS_BF16: list[tuple[str, float]] = [
    ("H100 PCIe", 756.0),
    ("H100 NVL", 835.0),
    ("H100", 989.0),  # SXM
    ("H200", 989.0),
    ("GH200", 989.0),
    ("B200", 2250.0),
    ("A100", 312.0),
    ("L40S", 362.0),
    ("A10G", 70.0),
    ("L4", 121.0),
]

#: Qwen2.5 shapes (config.json of the Instruct models), for random-init benchmarks without downloads.
ARCHS: dict[str, dict] = {
    "qwen2.5-0.5b": dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
                         num_key_value_heads=2, tie_word_embeddings=True, vocab_size=151936),
    "qwen2.5-1.5b": dict(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12,
                         num_key_value_heads=2, tie_word_embeddings=True, vocab_size=151936),
    "qwen2.5-7b": dict(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
                       num_key_value_heads=4, tie_word_embeddings=False, vocab_size=152064),
    "qwen2.5-32b": dict(hidden_size=5120, intermediate_size=27648, num_hidden_layers=64, num_attention_heads=40,
                        num_key_value_heads=8, tie_word_embeddings=False, vocab_size=152064),
}  # fmt: skip


def peak_tflops(override: float | None) -> tuple[float | None, str]:
    """Peak bf16 TFLOP/s of one device and the device's name."""
    if not torch.cuda.is_available():
        return override, "cpu"
    name = torch.cuda.get_device_name()
    if override is not None:
        return override, name
    return next((peak for key, peak in PEAK_TFLOPS_BF16 if key in name), None), name


def write_model_dir(arch: str, path: Path) -> None:
    """A config + tokenizer directory for ``--init_from_scratch``: tiny test model or Qwen2.5 shapes."""
    from transformers import Qwen2Config

    from budget_forcing.testing import tiny_model, tiny_tokenizer

    tok = tiny_tokenizer()
    tok.save_pretrained(path)
    if arch == "tiny":
        tiny_model(tok).config.save_pretrained(path)
        return
    shape = ARCHS[arch]
    config = Qwen2Config(
        max_position_embeddings=32768,
        rope_theta=1e6,
        bos_token_id=tok.pad_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        **shape,
    )
    config.save_pretrained(path)


def write_data(path: Path, tokenizer_dir: Path, num_examples: int, seq_len: int) -> None:
    """Synthetic s1-format examples whose prompt + completion exceed ``seq_len`` tokens (truncated to it)."""
    from transformers import AutoTokenizer

    from budget_forcing.formats import S1_FORMAT
    from budget_forcing.testing import DEFAULT_CORPUS

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    unit = " ".join(DEFAULT_CORPUS) + "\n"
    repeats = math.ceil(seq_len / max(1, len(tok(unit)["input_ids"]))) + 1
    with open(path, "w") as f:
        for i in range(num_examples):
            trace = f"Step {i}. " + unit * repeats
            messages = [
                {"role": "user", "content": f"Question {i}: what is {i} + 1?"},
                {"role": "assistant", "content": S1_FORMAT.render(trace, f"Answer: {i + 1}")},
            ]
            f.write(json.dumps({"messages": messages}) + "\n")


def matmul_params(model) -> int:
    """Parameters taking part in matrix multiplies: all but an untied input embedding."""
    total = sum(p.numel() for p in model.parameters())
    embed = model.get_input_embeddings().weight
    head = model.get_output_embeddings()
    tied = head is not None and head.weight is embed
    return total if tied else total - embed.numel()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--config", default=str(ROOT / "recipes/configs/sft/tiny-cpu.yaml"), help="SFT recipe YAML"
    )
    parser.add_argument("--arch", default="tiny", choices=["tiny", "recipe", *ARCHS], help="model shapes")
    parser.add_argument("--seq_len", type=int, default=512, help="tokens per example (max_length)")
    parser.add_argument("--steps", type=int, default=10, help="timed optimizer steps")
    parser.add_argument("--warmup", type=int, default=2, help="untimed optimizer steps first")
    parser.add_argument(
        "--peak_tflops", type=float, default=None, help="peak TFLOP/s per device (overrides table)"
    )
    parser.add_argument("--json", default=None, help="also write the figures to this JSON file")
    args, overrides = parser.parse_known_args()
    if args.warmup < 1 or args.steps < 1:
        parser.error("--warmup and --steps must be >= 1 (the first step includes allocation and compilation)")

    from transformers import TrainerCallback

    from budget_forcing import sft

    workdir = Path(tempfile.mkdtemp(prefix="sft-bench-"))
    cli = ["--config", args.config, "--output_dir", str(workdir / "out"), "--max_length", str(args.seq_len)]
    cli += ["--max_steps", str(args.warmup + args.steps), "--save_strategy", "no", "--report_to", "none"]
    cli += ["--logging_steps", "1", "--disable_tqdm", "true"]
    if not torch.cuda.is_available():
        cli += ["--use_cpu", "true", "--bf16", "false"]
    script_args, training_args, model_args = sft.make_parser().parse_args_and_config(cli + overrides)
    training_args.include_num_input_tokens_seen = "non_padding"  # summed over processes by Trainer
    if args.arch != "recipe":
        write_model_dir(args.arch, workdir / "model")
        model_args.model_name_or_path = str(workdir / "model")
        script_args.init_from_scratch = True
        if torch.cuda.is_available() and model_args.dtype in (None, "auto"):
            model_args.dtype = "float32"
    world = training_args.world_size
    batch = training_args.per_device_train_batch_size * training_args.gradient_accumulation_steps * world
    num_examples = batch * (args.warmup + args.steps)
    # every process writes its own copy in its own temporary directory: nothing to synchronise
    write_data(workdir / "train.jsonl", Path(model_args.model_name_or_path), num_examples, args.seq_len)
    script_args.dataset_name = str(workdir / "train.jsonl")
    script_args.max_train_samples = None

    class Timer(TrainerCallback):
        def __init__(self) -> None:
            self.marks: list[tuple[float, int]] = []

        def on_step_end(self, args, state, control, **kwargs):
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            self.marks.append((time.perf_counter(), state.num_input_tokens_seen))

    trainer = sft.build_trainer(script_args, training_args, model_args)
    timer = Timer()
    trainer.add_callback(timer)
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    trainer.train()

    (t0, n0), (t1, n1) = timer.marks[args.warmup - 1], timer.marks[-1]
    seconds, tokens = t1 - t0, n1 - n0
    model = trainer.accelerator.unwrap_model(trainer.model)
    config = model.config.get_text_config()
    n_params = matmul_params(model) if world == 1 else None
    if n_params is None or n_params < 1000:  # sharded (FSDP / ZeRO-3): count from the config instead
        from transformers import AutoModelForCausalLM

        with torch.device("meta"):
            meta = AutoModelForCausalLM.from_config(config)
        n_params = matmul_params(meta)
    tokens_per_s = tokens / seconds
    flops_per_token = 6 * n_params
    attn_flops_per_token = 6 * config.num_hidden_layers * config.hidden_size * args.seq_len
    achieved = tokens_per_s * flops_per_token / 1e12
    peak, device = peak_tflops(args.peak_tflops)
    figures = {
        "recipe": Path(args.config).name,
        "arch": args.arch if args.arch != "recipe" else model_args.model_name_or_path,
        "device": device,
        "processes": world,
        "seq_len": args.seq_len,
        "global_batch": batch,
        "matmul_params": n_params,
        "timed_steps": args.steps,
        "seconds": round(seconds, 3),
        "tokens": tokens,
        "tokens_per_s": round(tokens_per_s, 1),
        "tokens_per_s_per_device": round(tokens_per_s / world, 1),
        "achieved_tflops": round(achieved, 4),
        "peak_tflops_per_device": peak,
        "mfu": None if peak is None else round(achieved / (peak * world), 4),
        "mfu_with_attention": None
        if peak is None
        else round(tokens_per_s * (flops_per_token + attn_flops_per_token) / 1e12 / (peak * world), 4),
        "peak_memory_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2)
        if torch.cuda.is_available()
        else None,
        "activation_checkpointing": bool(training_args.activation_checkpointing),
    }
    if training_args.process_index == 0:
        width = max(map(len, figures))
        for key, value in figures.items():
            print(f"{key:<{width}}  {value}")
        if args.json:
            Path(args.json).write_text(json.dumps(figures, indent=2))
    if hasattr(trainer, "end"):
        trainer.end()
    shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
