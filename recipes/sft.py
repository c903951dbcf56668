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

The code is `budget_forcing.sft` (data rendering, LoRA and quantisation from TRL's ``ModelConfig``,
bf16 saving, teardown); ``budget-forcing sft`` runs the same from any directory.
"""

from budget_forcing.sft import main, parse_args  # main(script_args, training_args, model_args)

if __name__ == "__main__":
    main(*parse_args())
