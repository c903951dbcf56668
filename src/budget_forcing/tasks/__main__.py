"""``python -m budget_forcing.tasks`` prints the task directory, for lm-eval's ``--include_path``."""

from budget_forcing.tasks import TASKS_DIR

print(TASKS_DIR)
