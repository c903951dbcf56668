"""Budget forcing (s1: Simple test-time scaling) for any Hugging Face causal LM, in one generate() call.

Example:
    >>> from budget_forcing import BudgetForcing
    >>> from budget_forcing.testing import tiny_model, tiny_tokenizer
    >>> tok = tiny_tokenizer(); model = tiny_model(tok)
    >>> bf = BudgetForcing(tok, min=4, max=16, format="think")
    >>> inputs = tok(["What is 2 + 2?"], return_tensors="pt")
    >>> out = model.generate(**inputs, logits_processor=[bf], max_new_tokens=32, do_sample=False)
    >>> 4 <= bf.stats.thinking_tokens[0] <= 16
    True
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# The public names and their modules. They load on first use, so `budget-forcing --help` and the
# selection recipe do not pay for importing torch and transformers.
_EXPORTS = {
    "BudgetForcing": "budget_forcing.processor",
    "BudgetForcingLogitsProcessor": "budget_forcing.processor",
    "BudgetForcingStoppingCriteria": "budget_forcing.stopping",
    "BudgetStats": "budget_forcing.processor",
    "end_overhead": "budget_forcing.processor",
    "S1_FORMAT": "budget_forcing.formats",
    "THINK_FORMAT": "budget_forcing.formats",
    "ThinkingFormat": "budget_forcing.formats",
    "get_format": "budget_forcing.formats",
}

__all__ = [
    "BudgetForcing",
    "BudgetForcingLogitsProcessor",
    "BudgetForcingStoppingCriteria",
    "BudgetStats",
    "S1_FORMAT",
    "THINK_FORMAT",
    "ThinkingFormat",
    "end_overhead",
    "get_format",
]

if TYPE_CHECKING:
    from budget_forcing.formats import S1_FORMAT, THINK_FORMAT, ThinkingFormat, get_format
    from budget_forcing.processor import (
        BudgetForcing,
        BudgetForcingLogitsProcessor,
        BudgetStats,
        end_overhead,
    )
    from budget_forcing.stopping import BudgetForcingStoppingCriteria


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'budget_forcing' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
