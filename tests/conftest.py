"""Shared fixtures: everything offline, tiny and deterministic; no process outlives the test run."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402
from procs import no_process_left_behind  # noqa: E402, F401  (session-end check, autouse)

from budget_forcing.testing import tiny_model, tiny_tokenizer  # noqa: E402

torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tokenizer():
    return tiny_tokenizer()


@pytest.fixture(scope="session")
def model(tokenizer):
    # float64: padding and batching change float32 results in the last bits, which could flip a
    # greedy argmax and make exact token-for-token comparisons flaky.
    return tiny_model(tokenizer, dtype=torch.float64)
