"""s1K data selection, the same command as ``budget-forcing select``.

    python recipes/select_s1k.py all --config recipes/configs/selection/s1k.yaml

See ``budget-forcing select --help`` and docs/recipes/selection.md.
"""

import sys

from budget_forcing.selection.cli import main

if __name__ == "__main__":
    sys.exit(main())
