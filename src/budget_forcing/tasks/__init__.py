"""s1's benchmarks as lm-eval tasks (AIME24, AIME25, MATH500, GPQA Diamond and the ``s1_bf`` group).

The YAML files and their ``utils.py`` ship inside the package; ``budget-forcing eval`` adds this
directory to lm-eval's task path itself. With the stock ``lm_eval`` command pass it yourself::

    lm_eval --include_path "$(python -m budget_forcing.tasks)" --tasks aime24_bf ...

Example:
    >>> from budget_forcing.tasks import TASKS_DIR
    >>> (TASKS_DIR / "aime24_bf.yaml").is_file()
    True
"""

from pathlib import Path

__all__ = ["TASKS_DIR"]

#: The directory of the task YAMLs (pass it as lm-eval's ``--include_path``).
TASKS_DIR = Path(__file__).resolve().parent
