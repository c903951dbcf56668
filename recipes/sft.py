"""s1 supervised fine-tuning with TRL's `SFTTrainer`, launched by accelerate.

Reproduces s1's training (Qwen2.5-32B-Instruct, 1,000 examples, 5 epochs, global batch 16, lr 1e-5,
5% warmup + cosine, AdamW 0.9/0.95, wd 1e-4, bf16, 32K block, no packing, loss only on the assistant
part) on current TRL / transformers / accelerate. Every option lives in a YAML recipe under
``recipes/configs/sft/``; any option can be overridden on the command line.

Usage:
    # s1-32B on 2 nodes x 8 H100 (FSDP2); run once per node, see recipes/launch_multinode.sh
    accelerate launch --config_file recipes/accelerate_configs/fsdp2_2nodes_8gpus.yaml \\
        --num_machines 2 --machine_rank $RANK --main_process_ip $MASTER --main_process_port 29500 \\
        recipes/sft.py --config recipes/configs/sft/s1-32B.yaml

    # quick run of a small model on one GPU
    accelerate launch --config_file recipes/accelerate_configs/single_gpu.yaml \\
        recipes/sft.py --config recipes/configs/sft/s1-qwen2.5-0.5B-single-gpu.yaml

    # tiny model on CPU (seconds); the model directory holds a config + tokenizer
    accelerate launch --config_file recipes/accelerate_configs/cpu.yaml recipes/sft.py \\
        --config recipes/configs/sft/tiny-cpu.yaml \\
        --model_name_or_path path/to/tiny-model --dataset_name path/to/train.jsonl --output_dir runs/tiny-sft

Data (``dataset_name``): a local ``.jsonl`` / ``.json`` / ``.parquet`` file or directory, or a hub id.
Rows either have a ``messages`` column (user turn(s), then one assistant turn whose content is
``S1_FORMAT.render(thinking, answer)`` or ``THINK_FORMAT.render(...)``, as the selection recipe writes
them) or the raw s1K columns (``question`` + ``thinking_trajectories`` / ``attempt`` for
``simplescaling/s1K``, ``deepseek_thinking_trajectory`` / ``deepseek_attempt`` for
``simplescaling/s1K-1.1``), rendered with ``thinking_format`` exactly as s1 did.

Each row becomes a prompt-completion pair: prompt = the chat template of everything before the
assistant turn, up to and including the generation prompt ``<|im_start|>assistant\\n``; completion =
the assistant text + the end-of-turn token (``eos_token``, ``<|im_end|>``), appended once. TRL then
computes the loss on the completion tokens only (``completion_only_loss: true``), which is s1's span:
thinking + answer + ``<|im_end|>``.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import Any

from budget_forcing.formats import FORMATS, ThinkingFormat

logger = logging.getLogger("recipes.sft")

#: Columns of the two s1 hub datasets: (trajectory column, attempt column), first match wins.
S1K_COLUMNS: list[tuple[str, str]] = [
    ("deepseek_thinking_trajectory", "deepseek_attempt"),  # simplescaling/s1K-1.1 (DeepSeek-R1 traces)
    ("thinking_trajectories", "attempt"),  # simplescaling/s1K (Gemini traces)
]
WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)
LOCAL_FORMATS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv"}


@dataclass
class ScriptArguments:
    """Data and model-initialisation options of the recipe (the ``SFTConfig`` holds the training ones)."""

    dataset_name: str = field(
        default="simplescaling/s1K-1.1",
        metadata={
            "help": "Hub id (simplescaling/s1K, simplescaling/s1K-1.1) or a local .jsonl/.json/.parquet file or "
            "directory, e.g. the selection recipe's output with a `messages` column."
        },
    )
    dataset_config: str | None = field(
        default=None, metadata={"help": "Dataset configuration name on the hub."}
    )
    dataset_train_split: str = field(default="train", metadata={"help": "Split to train on."})
    thinking_format: str = field(
        default="s1",
        metadata={
            "help": "How raw s1K rows (question / trajectory / attempt columns) are rendered into the assistant "
            "text: 's1' (<|im_start|>think ... <|im_start|>answer) or 'think' (<think> ... </think>). Rows that "
            "already have `messages` are used as they are.",
            "choices": sorted(FORMATS),
        },
    )
    trajectory_column: str | None = field(
        default=None,
        metadata={
            "help": "Column holding the reasoning trace of raw rows (str or list of str). Default: "
            "deepseek_thinking_trajectory if present (s1K-1.1), else thinking_trajectories (s1K)."
        },
    )
    attempt_column: str | None = field(
        default=None,
        metadata={"help": "Column holding the answer of raw rows. Default: deepseek_attempt, else attempt."},
    )
    question_column: str = field(
        default="question", metadata={"help": "Column holding the question of raw rows."}
    )
    answer_prefix: str = field(
        default="Answer: ",
        metadata={
            "help": "Prepended to a raw attempt that does not contain it already (s1 does so); '' disables."
        },
    )
    system_prompt: str | None = field(
        default=None,
        metadata={
            "help": "System message put before the question of raw rows. Default: none, so the chat template "
            "adds its own (Qwen2.5: 'You are Qwen, created by Alibaba Cloud...'), as in s1's training data."
        },
    )
    max_train_samples: int | None = field(
        default=None, metadata={"help": "Train on the first N rows only (quick runs); default: all rows."}
    )
    init_from_scratch: bool = field(
        default=False,
        metadata={
            "help": "Randomly initialise the model from the config in `model_name_or_path` instead of loading "
            "weights (a directory with config.json + tokenizer is enough)."
        },
    )


# ----------------------------------------------------------------------------------------------------------
# Data
# ----------------------------------------------------------------------------------------------------------


def load_raw_dataset(script_args: ScriptArguments):
    """Load ``dataset_name``: a local file or directory, else a hub id. Returns a ``datasets.Dataset``."""
    from datasets import load_dataset, load_from_disk

    name = script_args.dataset_name
    if os.path.isfile(name):
        ext = os.path.splitext(name)[1].lower()
        if ext not in LOCAL_FORMATS:
            raise ValueError(
                f"Unsupported data file {name!r}: use one of {sorted(LOCAL_FORMATS)} or a hub dataset id."
            )
        return load_dataset(LOCAL_FORMATS[ext], data_files=name, split="train")
    if os.path.isdir(name) and os.path.exists(os.path.join(name, "dataset_info.json")):
        dataset = load_from_disk(name)  # written by Dataset.save_to_disk
        return dataset[script_args.dataset_train_split] if hasattr(dataset, "keys") else dataset
    return load_dataset(name, name=script_args.dataset_config, split=script_args.dataset_train_split)


def s1k_messages(
    row: dict[str, Any],
    fmt: ThinkingFormat,
    question_column: str = "question",
    trajectory_column: str = "thinking_trajectories",
    attempt_column: str = "attempt",
    answer_prefix: str = "Answer: ",
    system_prompt: str | None = None,
) -> list[dict[str, str]]:
    """The chat of one raw s1K row, rendered exactly as s1's ``tokenize_data.py`` does.

    Trace = the trajectory (a list of str is joined with newlines), stripped; answer = the attempt,
    stripped, with ``answer_prefix`` prepended when the attempt does not contain it.

    Example:
        >>> from budget_forcing.formats import S1_FORMAT
        >>> row = {"question": "1+1?", "thinking_trajectories": ["1+1=2"], "attempt": "2"}
        >>> s1k_messages(row, S1_FORMAT)[-1]["content"]
        '<|im_start|>think\\n1+1=2\\n<|im_start|>answer\\nAnswer: 2'
    """
    trace = row[trajectory_column]
    if isinstance(trace, (list, tuple)):
        trace = "\n".join(trace)
    messages = [] if system_prompt is None else [{"role": "system", "content": system_prompt}]
    messages.append({"role": "user", "content": row[question_column]})
    messages.append(
        {
            "role": "assistant",
            "content": fmt.render_attempt(trace or "", row[attempt_column] or "", answer_prefix),
        }
    )
    return messages


def to_messages(dataset, script_args: ScriptArguments):
    """Give every row a ``messages`` column (raw s1K rows are rendered); other columns are dropped."""
    columns = dataset.column_names
    if "messages" in columns:
        return dataset.select_columns(["messages"])
    traj, attempt = script_args.trajectory_column, script_args.attempt_column
    if traj is None or attempt is None:
        found = next(((t, a) for t, a in S1K_COLUMNS if t in columns and a in columns), None)
        if found is not None:
            traj, attempt = traj or found[0], attempt or found[1]
    needed = [script_args.question_column, traj, attempt]
    if None in needed or any(c not in columns for c in needed):
        raise ValueError(
            f"Dataset {script_args.dataset_name!r} has columns {columns}: expected a `messages` column (chat with a "
            "final assistant turn) or the raw s1K columns question + thinking_trajectories + attempt (s1K) / "
            "deepseek_thinking_trajectory + deepseek_attempt (s1K-1.1). Set --question_column, "
            "--trajectory_column and --attempt_column for other names."
        )
    fmt = FORMATS[script_args.thinking_format]
    kwargs = dict(
        fmt=fmt,
        question_column=script_args.question_column,
        trajectory_column=traj,
        attempt_column=attempt,
        answer_prefix=script_args.answer_prefix,
        system_prompt=script_args.system_prompt,
    )
    return dataset.map(
        lambda row: {"messages": s1k_messages(row, **kwargs)},
        remove_columns=columns,
        desc=f"Rendering {script_args.dataset_name} in the {fmt.name} format",
    )


def prompt_completion(messages: list[dict[str, str]], tokenizer, end_token: str) -> dict[str, str]:
    """Split a chat into s1's (prompt, completion) strings.

    ``prompt`` is the chat template of every turn before the last one with the generation prompt
    (``...<|im_start|>assistant\\n``); ``completion`` is the last (assistant) turn's text followed by
    ``end_token`` exactly once.

    Example:
        >>> from budget_forcing.testing import tiny_tokenizer
        >>> msgs = [{"role": "user", "content": "1+1?"}, {"role": "assistant", "content": "<think>2</think>2"}]
        >>> prompt_completion(msgs, tiny_tokenizer(), "<|im_end|>")["completion"]
        '<think>2</think>2<|im_end|>'
    """
    if not messages or messages[-1].get("role") != "assistant" or len(messages) < 2:
        roles = [m.get("role") for m in messages or []]
        raise ValueError(
            f"A `messages` row must end with an assistant turn after at least one other turn; got roles {roles}."
        )
    completion = messages[-1]["content"]
    if not completion:
        raise ValueError("A `messages` row has an empty assistant turn; remove it from the data.")
    prompt = tokenizer.apply_chat_template(messages[:-1], tokenize=False, add_generation_prompt=True)
    if not completion.endswith(end_token):
        completion += end_token
    return {"prompt": prompt, "completion": completion}


def build_dataset(script_args: ScriptArguments, tokenizer, end_token: str):
    """The training set as prompt-completion strings, with a logged count of every row."""
    dataset = load_raw_dataset(script_args)
    n_raw = len(dataset)
    if script_args.max_train_samples is not None:
        dataset = dataset.select(range(min(script_args.max_train_samples, n_raw)))
        logger.info("max_train_samples: using %d of %d rows", len(dataset), n_raw)
    dataset = to_messages(dataset, script_args)
    dataset = dataset.map(
        lambda row: prompt_completion(row["messages"], tokenizer, end_token),
        remove_columns=["messages"],
        desc="Building prompt-completion pairs",
    )
    logger.info("Training rows: %d (from %s)", len(dataset), script_args.dataset_name)
    return dataset


def report_lengths(dataset, tokenizer, max_length: int | None) -> dict[str, int]:
    """Count the rows longer than ``max_length`` tokens (TRL truncates them, keeping the start)."""
    lengths = [
        len(tokenizer(p + c, add_special_tokens=False)["input_ids"])
        for p, c in zip(dataset["prompt"], dataset["completion"], strict=True)
    ]
    stats = {"rows": len(lengths), "max_tokens": max(lengths, default=0), "total_tokens": sum(lengths)}
    stats["truncated"] = 0 if max_length is None else sum(n > max_length for n in lengths)
    logger.info(
        "Token lengths: %d rows, %d tokens, longest %d; %d rows exceed max_length=%s and are truncated (keep_start)",
        stats["rows"],
        stats["total_tokens"],
        stats["max_tokens"],
        stats["truncated"],
        max_length,
    )
    return stats


# ----------------------------------------------------------------------------------------------------------
# Training
# ----------------------------------------------------------------------------------------------------------


def load_tokenizer(model_args):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(
        model_args.model_name_or_path, revision=model_args.model_revision, trust_remote_code=False
    )


def build_trainer(script_args: ScriptArguments, training_args, model_args):
    """Tokenizer, data, model and `SFTTrainer`, ready to ``train()``."""
    from trl import SFTTrainer

    if not model_args.model_name_or_path:
        raise ValueError(
            "Set `model_name_or_path` (a hub id or a local model directory) in the recipe or on the CLI."
        )
    if training_args.completion_only_loss is False:
        logger.warning("completion_only_loss=false: the loss covers the question too, unlike s1.")
    if training_args.packing:
        logger.warning("packing=true: s1 trains without packing.")
    tokenizer = load_tokenizer(model_args)
    end_token = training_args.eos_token or tokenizer.eos_token
    if end_token is None or end_token not in tokenizer.get_vocab():
        raise ValueError(
            f"The end-of-turn token {end_token!r} is not a token of {model_args.model_name_or_path}; set `eos_token` "
            "in the recipe (Qwen chat models: '<|im_end|>')."
        )

    with training_args.main_process_first(desc="preparing the SFT data"):
        train_dataset = build_dataset(script_args, tokenizer, end_token)
        report_lengths(train_dataset, tokenizer, training_args.max_length)

    if script_args.init_from_scratch:
        import torch
        from transformers import AutoConfig, AutoModelForCausalLM

        config = AutoConfig.from_pretrained(model_args.model_name_or_path, revision=model_args.model_revision)
        dtype = None if model_args.dtype in (None, "auto") else getattr(torch, model_args.dtype)
        model = AutoModelForCausalLM.from_config(
            config, dtype=dtype, attn_implementation=model_args.attn_implementation
        )
        logger.info(
            "Initialised %s from scratch (%d parameters)", type(model).__name__, model.num_parameters()
        )
    else:
        model = model_args.model_name_or_path
        if os.path.isdir(model) and not any(os.path.exists(os.path.join(model, f)) for f in WEIGHT_FILES):
            raise ValueError(
                f"{model!r} holds no weights ({', '.join(WEIGHT_FILES)}). To train a model initialised from its "
                "config, pass --init_from_scratch true."
            )
        init_kwargs = {
            "revision": model_args.model_revision,
            "attn_implementation": model_args.attn_implementation,
            "dtype": model_args.dtype,
        }
        training_args.model_init_kwargs = {**init_kwargs, **(training_args.model_init_kwargs or {})}

    return SFTTrainer(
        model=model, args=training_args, train_dataset=train_dataset, processing_class=tokenizer
    )


def main(script_args: ScriptArguments, training_args, model_args) -> None:
    """Train, then save the model and tokenizer to ``output_dir``."""
    trainer = build_trainer(script_args, training_args, model_args)
    trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    trainer.save_model(training_args.output_dir)
    trainer.save_state()  # trainer_state.json: the logged losses and learning rates
    trainer.accelerator.print(f"Model saved to {training_args.output_dir}")
    teardown(trainer)


def teardown(trainer) -> None:
    """Finish every rank's collectives, then free the wrapped model, then destroy the process group.

    Freeing a DDP model frees its gradient reducer, which holds the process group. If that is the last
    reference (after ``destroy_process_group``), the group's destructor joins its worker threads while
    the caller holds the GIL; a gloo worker still releasing the tensors of a just-finished all-gather
    (the per-step loss / token-count gathers) needs the GIL for that, and both wait forever. Here the
    barrier lets every rank's workers finish (its wait releases the GIL) while the slowest rank saves,
    and the group is destroyed at one defined point, after everything that holds it is gone.
    """
    import gc

    accelerator = trainer.accelerator
    accelerator.wait_for_everyone()  # every rank is past its last collective (logging, saving)
    accelerator.free_memory()  # drop the prepared (DDP) model, optimizer, scheduler and dataloaders
    trainer.model_wrapped, trainer.optimizer, trainer.lr_scheduler = trainer.model, None, None
    gc.collect()  # the reducer and its reference to the group go now, not at interpreter exit
    accelerator.end_training()  # finish the trackers, destroy the group: its workers are joined here


def make_parser():
    from trl import ModelConfig, SFTConfig, TrlParser

    return TrlParser((ScriptArguments, SFTConfig, ModelConfig))


if __name__ == "__main__":
    script_args, training_args, model_args = make_parser().parse_args_and_config()
    logging.basicConfig(
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        level=logging.INFO if training_args.process_index == 0 else logging.WARNING,
    )
    main(script_args, training_args, model_args)
