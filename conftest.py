"""Collection rules for the whole repository."""

import importlib.util

# vLLM lives in its own environment (.venv-vllm, see the Makefile): elsewhere, skip what imports it.
if importlib.util.find_spec("vllm") is None:
    collect_ignore = ["src/budget_forcing/vllm.py"]
    collect_ignore_glob = ["tests/test_vllm*.py", "tests/vllm_support.py", "src/budget_forcing/vllm_*.py"]
