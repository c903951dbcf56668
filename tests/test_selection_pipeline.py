"""Formatting for SFT, and the whole recipe end to end (fake server; tiny local model)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from datasets import Dataset
from procs import run
from selection_helpers import (
    REPO,
    SECRET,
    FakeChatServer,
    rows_of,
    server_config,
    write_eval_sets,
    write_jsonl,
)

from budget_forcing.selection.config import FormatConfig
from budget_forcing.selection.formatting import assistant_text, to_sft
from budget_forcing.selection.io import save_table
from budget_forcing.selection.pipeline import load_config, run_all, run_format
from budget_forcing.selection.synthetic import make_pool
from budget_forcing.testing import tiny_model, tiny_tokenizer


def test_assistant_text_formats() -> None:
    assert assistant_text("think hard", "The answer is 4", "s1", "auto") == (
        "<|im_start|>think\nthink hard\n<|im_start|>answer\nAnswer: The answer is 4"
    )
    assert assistant_text("t", "Answer: 4", "s1", "auto").endswith("answer\nAnswer: 4")  # not doubled
    assert assistant_text("t\n", "4", "think", "auto") == "<think>\nt\n</think>\n\n4"  # as Qwen3 writes it
    assert assistant_text("t", "4", "s1", None).endswith("answer\n4")


def test_to_sft_teachers_and_trl_compatible(tmp_path: Path) -> None:
    data = Dataset.from_dict(
        {
            "row_id": [0, 1, 2],
            "question": ["What is 1+1?", "What is 2+2?", "What is 3+3?"],
            "thinking_trajectories": [["one plus one"], ["two plus two"], []],
            "attempt": ["2", "Answer: 4", "6"],
            "deepseek_thinking_trajectory": ["r1 thinks 1+1", "r1 thinks 2+2", "r1 thinks 3+3"],
            "deepseek_attempt": ["**2**", "4", "6"],
        }
    )
    gemini, bad = to_sft(data, FormatConfig(format="s1", teacher="gemini"))
    assert bad == [(2, "empty thinking_trajectories")]
    assert gemini[0]["messages"] == [
        {"role": "user", "content": "What is 1+1?"},
        {"role": "assistant", "content": "<|im_start|>think\none plus one\n<|im_start|>answer\nAnswer: 2"},
    ]
    deepseek, bad = to_sft(data, FormatConfig(format="think", teacher="deepseek", system_prompt="Be brief."))
    assert bad == []
    assert deepseek[1]["messages"][0] == {"role": "system", "content": "Be brief."}
    assert deepseek[1]["messages"][2]["content"] == "<think>\nr1 thinks 2+2\n</think>\n\n4"
    with pytest.raises(ValueError, match="no column"):
        to_sft(data.remove_columns("deepseek_attempt"), FormatConfig(teacher="deepseek"))

    # the report accounts for the row without a trace, and the output feeds TRL's SFTTrainer as is
    save_table(data, tmp_path / "selected.parquet")
    result = run_format(load_config(None, {"output_dir": str(tmp_path)}))
    assert [(d["id"], d["reason"]) for d in result.report.dropped] == [(2, "missing_teacher_text")]
    sft = Dataset.from_parquet(result.output)
    assert len(sft) == 2 and "text" not in sft.column_names

    from trl import SFTConfig, SFTTrainer

    tok = tiny_tokenizer()
    trainer = SFTTrainer(
        model=tiny_model(tok),
        processing_class=tok,
        train_dataset=sft,
        args=SFTConfig(
            output_dir=str(tmp_path / "sft"),
            max_steps=1,
            report_to=[],
            use_cpu=True,
            assistant_only_loss=False,
        ),
    )
    ids = trainer.train_dataset[0]["input_ids"]
    assert "<|im_start|>think\none plus one\n<|im_start|>answer\nAnswer: 2" in tok.decode(ids)


def _check_accounting(out: Path, n_pool: int) -> dict:
    reports = {p.stem: json.loads(p.read_text()) for p in (out / "reports").glob("*.json")}
    for r in reports.values():
        assert r["rows_in"] - len(r["dropped"]) == r["rows_out"]
        for step in r["steps"]:
            assert step["rows_in"] - sum(step["dropped"].values()) == step["rows_out"]
    chain = ["decontaminate", "featurize", "filter", "select", "format"]
    assert reports["decontaminate"]["rows_in"] == n_pool
    for a, b in zip(chain, chain[1:], strict=False):
        assert reports[a]["rows_out"] == reports[b]["rows_in"], (a, b)
    # every pool row is either dropped once (with a reason) before selection, or a candidate
    dropped = [d["id"] for s in ("decontaminate", "filter") for d in reports[s]["dropped"]]
    assert len(dropped) == len(set(dropped))
    assert len(dropped) + reports["select"]["rows_in"] == n_pool
    return reports


def test_all_stages_with_server_and_ablations(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("S1K_TEST_KEY", SECRET)
    pool = make_pool(800, seed=31)
    write_jsonl(tmp_path / "pool.jsonl", pool.rows)
    eval_files = write_eval_sets(tmp_path / "eval", pool.eval_sets)
    tok_dir = tmp_path / "tok"
    tiny_tokenizer().save_pretrained(tok_dir)
    with FakeChatServer() as server:
        data = server_config(
            server.url,
            tmp_path / "out",
            tok_dir,
            **{
                "pool": str(tmp_path / "pool.jsonl"),
                "decontaminate.eval_files": eval_files,
                "select.ablations": ["random", "diverse", "longest", "full"],
            },
        )
        results = run_all(load_config(None, data))
    out = tmp_path / "out"
    reports = _check_accounting(out, 800)
    planted = {
        i for k in ("contaminated", "duplicate_exact", "duplicate_cross_source") for i in pool.truth[k]
    }
    assert {d["id"] for d in reports["decontaminate"]["dropped"]} == planted
    reasons = {d["id"]: d["reason"] for d in reports["filter"]["dropped"]}
    assert {i for i, r in reasons.items() if r.startswith("format_")} | {
        i
        for i in pool.truth["format"]
        if reasons.get(i) == "missing_feature"  # dropped by an earlier filter
    } == set(pool.truth["format"])
    assert len(rows_of(results["select"].output)) == 50
    for method in ("random", "diverse", "longest"):
        assert len(rows_of(out / f"selected_{method}.parquet")) == 50
        assert (out / f"reports/select_{method}.png").exists()
    assert len(rows_of(out / "selected_full.parquet")) == reports["decontaminate"]["rows_out"]
    sft = rows_of(results["format"].output)
    assert len(sft) == 50 and all(m["messages"][1]["content"].startswith("<|im_start|>think\n") for m in sft)
    assert (out / "reports/select.png").exists() and (out / "reports/filter.txt").exists()


@pytest.mark.slow
def test_cli_all_tiny_recipe_local_model_no_server(tmp_path: Path) -> None:
    """What the CPU demo runs: a tiny local base model, math-verify only, domains from metadata."""
    import sys

    run(
        [
            sys.executable,
            str(REPO / "recipes/select_s1k.py"),
            "synth",
            "--rows",
            "300",
            "--output",
            str(tmp_path / "pool.jsonl"),
        ],
        timeout=120,
    )
    tok = tiny_tokenizer()
    tok.save_pretrained(tmp_path / "model")
    tiny_model(tok).save_pretrained(tmp_path / "model")
    base = "[{name: tiny, backend: local, model: %s, max_tokens: 4, batch_size: 32, num_threads: 1}]" % (
        tmp_path / "model"
    )
    cmd = [
        sys.executable, str(REPO / "recipes/select_s1k.py"), "all",
        "--config", str(REPO / "recipes/configs/selection/tiny.yaml"),
        "--output_dir", str(tmp_path / "out"),
        "--pool", str(tmp_path / "pool.jsonl"),
        "--decontaminate.eval_files", f"[{tmp_path}/eval_aime24.jsonl, {tmp_path}/eval_math500.jsonl]",
        "--featurize.base_models", base,
        "--featurize.tokenizer", str(tmp_path / "model"),
        "--n", "40",
    ]  # fmt: skip
    run(cmd, timeout=600, env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})
    reports = _check_accounting(tmp_path / "out", 300)
    assert reports["featurize"]["info"]["grading"]["correct_tiny"]["judge"] == 0
    assert len(rows_of(tmp_path / "out/sft.parquet")) == 40


def test_shipped_recipes_load_and_configs_are_documented() -> None:
    import dataclasses

    from budget_forcing.selection import config as cfg

    for path in sorted((REPO / "recipes/configs/selection").glob("*.yaml")):
        loaded = load_config(str(path))
        assert loaded.select.method in ("s1k", "random", "diverse", "longest", "full"), path
    real = load_config(str(REPO / "recipes/configs/selection/s1k.yaml"))
    assert real.pool == "simplescaling/data_ablation_full59K" and real.select.n == 1000
    assert [m.model for m in real.featurize.base_models] == [
        "Qwen/Qwen2.5-7B-Instruct",
        "Qwen/Qwen2.5-32B-Instruct",
    ]
    assert (
        load_config(str(REPO / "recipes/configs/selection/s1k_1.1.yaml")).format.input
        == "simplescaling/s1K-1.1"
    )
    assert (
        load_config(str(REPO / "recipes/configs/selection/s1k_format_only.yaml")).format.input
        == "simplescaling/s1K"
    )
    for klass in (cfg.ModelConfig, cfg.DecontaminateConfig, cfg.FeaturizeConfig, cfg.FilterConfig, cfg.SelectConfig,
                  cfg.FormatConfig, cfg.SelectionConfig):  # fmt: skip
        assert all(f.metadata.get("help") for f in dataclasses.fields(klass)), klass


def test_config_errors_name_the_fix() -> None:
    with pytest.raises(ValueError, match=r"Unknown key\(s\) \['nn'\] in `select`; valid keys: .*'n'"):
        load_config(None, {"select.nn": 3})
    with pytest.raises(TypeError, match="`select.n` must be int"):
        load_config(None, {"select.n": "many"})
    with pytest.raises(ValueError, match="required positional argument: 'model'"):
        load_config(None, {"featurize.base_models": [{"name": "x"}]})


def test_cli_overrides() -> None:
    from budget_forcing.selection import cli

    args, overrides = cli.parse_args(
        [
            "select",
            "--select.n=7",
            "--featurize.base_models",
            "[{name: a, model: m}]",
            "--pool",
            "p.jsonl",
            "--seed",
            "3",
        ]
    )
    assert args.command == "select" and args.seed == 3
    assert overrides == {
        "select.n": 7,
        "featurize.base_models": [{"name": "a", "model": "m"}],
        "pool": "p.jsonl",
    }
    with pytest.raises(SystemExit):
        cli.parse_args(["select", "--bogus", "1"])
