"""The s1K data selection recipe: a pool of questions in s1's schema -> 1,000 SFT examples.

Stages (each reads and writes a parquet/JSONL file and writes a report):

1. :mod:`~budget_forcing.selection.decontaminate`: word 8-gram decontamination against evaluation sets,
   cross-source near-duplicate removal and exact dedup.
2. :mod:`~budget_forcing.selection.featurize`: base-model attempts, grading, MSC domain, trace length.
3. :mod:`~budget_forcing.selection.filters`: quality and difficulty filters.
4. :mod:`~budget_forcing.selection.algorithm`: the paper's Algorithm 1 and the ablation selections.
5. :mod:`~budget_forcing.selection.formatting`: SFT examples with a ``messages`` column.

Example:
    >>> from budget_forcing.selection.pipeline import load_config, run_all
    >>> config = load_config("recipes/configs/selection/tiny.yaml", {"output_dir": "outputs/s1k_tiny"})
    >>> results = run_all(config)  # doctest: +SKIP
"""
