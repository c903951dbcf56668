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

from budget_forcing.formats import S1_FORMAT, THINK_FORMAT, ThinkingFormat, get_format
from budget_forcing.processor import BudgetForcing, BudgetForcingLogitsProcessor, BudgetStats, end_overhead
from budget_forcing.stopping import BudgetForcingStoppingCriteria

__version__ = "0.1.0"

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
