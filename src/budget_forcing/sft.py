"""s1 supervised fine-tuning with TRL's `SFTTrainer`: data rendering, model set-up, saving, teardown.

The library side of ``recipes/sft.py`` (the ``accelerate launch`` target, a short ``main``); the same
run is ``accelerate launch -m budget_forcing.sft ...`` or ``budget-forcing sft ...`` from any
directory. Every option lives in a YAML recipe under ``recipes/configs/sft/`` and can be overridden on
the command line: `ScriptArguments` here, TRL's ``SFTConfig`` (training) and ``ModelConfig`` (model,
LoRA: ``--use_peft true --lora_r 8``, quantisation: ``--load_in_4bit true``).

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
thinking + answer + ``<|im_end|>``. The final model is saved in its loading dtype (``save_dtype:
auto``): a bf16 model is saved in bf16, as s1's checkpoints, although FSDP2 trains fp32 master weights.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import Any

from budget_forcing.formats import FORMATS, ThinkingFormat

logger = logging.getLogger(__name__)

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
    save_dtype: str = field(
        default="auto",
        metadata={
            "help": "dtype of the saved weights. auto: the loading dtype (`dtype`), so a bf16 model that FSDP2 "
            "trained as fp32 master weights is saved in bf16, as s1's checkpoints (an fp32 full state dict of a "
            "32B model is ~128 GB on rank 0); bfloat16, float16 or float32 force one.",
            "choices": ["auto", "bfloat16", "float16", "float32"],
        },
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


def load_tokenizer(model_args, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(
        model_args.model_name_or_path, revision=model_args.model_revision, trust_remote_code=trust_remote_code
    )


def build_trainer(script_args: ScriptArguments, training_args, model_args):
    """Tokenizer, data, model and `SFTTrainer`, ready to ``train()``.

    LoRA (``--use_peft true``, ``--lora_r`` ...) and 4/8-bit loading (``--load_in_4bit true``) come from
    TRL's ``ModelConfig`` through ``get_peft_config`` / ``get_quantization_config``, as TRL's own
    ``scripts/sft.py``; ``--trust_remote_code`` (default off) reaches the tokenizer and the model.
    """
    from trl import SFTTrainer, get_peft_config, get_quantization_config

    if not model_args.model_name_or_path:
        raise ValueError(
            "Set `model_name_or_path` (a hub id or a local model directory) in the recipe or on the CLI."
        )
    if training_args.completion_only_loss is False:
        logger.warning("completion_only_loss=false: the loss covers the question too, unlike s1.")
    if training_args.packing:
        logger.warning("packing=true: s1 trains without packing.")
    trust_remote_code = bool(training_args.trust_remote_code)
    tokenizer = load_tokenizer(model_args, trust_remote_code)
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

        config = AutoConfig.from_pretrained(
            model_args.model_name_or_path,
            revision=model_args.model_revision,
            trust_remote_code=trust_remote_code,
        )
        dtype = None if model_args.dtype in (None, "auto") else getattr(torch, model_args.dtype)
        model = AutoModelForCausalLM.from_config(
            config,
            dtype=dtype,
            attn_implementation=model_args.attn_implementation,
            trust_remote_code=trust_remote_code,
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
            "trust_remote_code": trust_remote_code,
        }
        training_args.model_init_kwargs = {**init_kwargs, **(training_args.model_init_kwargs or {})}

    quantization_config = get_quantization_config(model_args)
    if quantization_config is not None and not isinstance(model, str):
        raise ValueError("--load_in_4bit / --load_in_8bit load pretrained weights; drop --init_from_scratch.")
    peft_config = get_peft_config(model_args)
    if quantization_config is not None and peft_config is None:
        raise ValueError("A quantised model trains only adapters: add --use_peft true (LoRA).")
    return SFTTrainer(
        model=model,
        args=training_args,
        train_dataset=train_dataset,
        processing_class=tokenizer,
        peft_config=peft_config,
        quantization_config=quantization_config,
    )


def save_dtype(script_args: ScriptArguments, model_args) -> str | None:
    """The dtype to save in: ``save_dtype``, or with ``auto`` the loading dtype (None: as trained).

    Example:
        >>> from types import SimpleNamespace
        >>> save_dtype(ScriptArguments(), SimpleNamespace(dtype="bfloat16"))
        'bfloat16'
        >>> save_dtype(ScriptArguments(), SimpleNamespace(dtype="auto")) is None
        True
    """
    if script_args.save_dtype != "auto":
        return script_args.save_dtype
    return model_args.dtype if model_args.dtype not in (None, "auto") else None


def save_model(trainer, output_dir: str, dtype: str | None = "bfloat16") -> None:
    """Save the trained model (full weights, or the LoRA adapters) and tokenizer in ``dtype`` (None: as trained).

    Under FSDP2 the full state dict is gathered on rank 0 (``fsdp_state_dict_type: FULL_STATE_DICT``)
    and cast there, tensor by tensor, so a 32B model is written as ~64 GB of bf16, not 128 GB of fp32.
    """
    import torch

    if dtype is None:
        trainer.save_model(output_dir)
        return
    target = getattr(torch, dtype)
    accelerator = trainer.accelerator
    state_dict = accelerator.get_state_dict(trainer.model_wrapped)  # gathered on rank 0 under FSDP
    if accelerator.is_main_process:
        # A model under torch.compile (`accelerate launch --dynamo_backend ...`) names every weight
        # `_orig_mod.<name>`: saved as such, `from_pretrained` would find none of them.
        state_dict = {name.removeprefix("_orig_mod."): t for name, t in state_dict.items()}
        cast: dict[tuple, torch.Tensor] = {}  # tied weights (embeddings = lm_head) stay one tensor
        state_dict = {
            name: cast.setdefault((t.data_ptr(), t.shape), t.to(target))
            if torch.is_tensor(t) and t.is_floating_point()
            else t
            for name, t in state_dict.items()
        }
        model = accelerator.unwrap_model(trainer.model)
        model.save_pretrained(output_dir, state_dict=state_dict, safe_serialization=True)
        if hasattr(model, "peft_config"):
            # Adapters only: the base model's own config keeps its dtype, the adapters are saved in ``dtype``.
            logger.info("Saved LoRA adapters (%d tensors) in %s", len(state_dict), dtype)
        else:
            model.config.dtype = target
            model.config.save_pretrained(output_dir)
        trainer.processing_class.save_pretrained(output_dir)
        torch.save(trainer.args, os.path.join(output_dir, "training_args.bin"))
    accelerator.wait_for_everyone()


def main(script_args: ScriptArguments, training_args, model_args) -> None:
    """Train, then save the model and tokenizer to ``output_dir``."""
    trainer = build_trainer(script_args, training_args, model_args)
    trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    save_model(trainer, training_args.output_dir, save_dtype(script_args, model_args))
    trainer.save_state()  # trainer_state.json: the logged losses and learning rates
    trainer.accelerator.print(f"Model saved to {training_args.output_dir}")
    teardown(trainer)


def teardown(trainer) -> None:
    """Finish every rank's collectives, free the wrapped model, then destroy the process group.

    The group's destructor joins its gloo worker threads while holding the GIL, and a worker that
    is still releasing the tensors of a just-finished all-gather (the loss and token-count gathers
    of the last step) needs the GIL to do so: if the last reference to the group goes while that
    is pending, the process hangs at exit. Left to itself that reference is the DDP reducer's, freed
    with ``main()``'s locals right after the last gather on the ranks that do not save. Here every
    rank waits at a barrier (without the GIL, while rank 0 saves), frees the wrapped model, optimizer
    and scheduler, waits once more, and only then destroys the group, whose workers are idle.
    """
    import gc

    accelerator = trainer.accelerator
    accelerator.wait_for_everyone()  # every rank is past its last collective; workers finish meanwhile
    accelerator.free_memory()  # drop the prepared (DDP) model, optimizer, scheduler and dataloaders
    trainer.model_wrapped, trainer.optimizer, trainer.lr_scheduler = trainer.model, None, None
    gc.collect()  # the reducer and its reference to the group go now, not at interpreter exit
    accelerator.wait_for_everyone()  # a worker still freeing an old result holds the queue: let it finish
    accelerator.end_training()  # finish the trackers, destroy the group: its workers are joined here


def make_parser():
    from trl import ModelConfig, SFTConfig, TrlParser

    return TrlParser((ScriptArguments, SFTConfig, ModelConfig))


def parse_args(argv: list[str] | None = None):
    """``(script_args, training_args, model_args)`` from the command line (``--config recipe.yaml`` + overrides),
    with logging set up: INFO on the main process, WARNING on the others."""
    script_args, training_args, model_args = make_parser().parse_args_and_config(argv)
    logging.basicConfig(
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        level=logging.INFO if training_args.process_index == 0 else logging.WARNING,
    )
    return script_args, training_args, model_args


if __name__ == "__main__":  # accelerate launch -m budget_forcing.sft --config recipe.yaml
    main(*parse_args())
