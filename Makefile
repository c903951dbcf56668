# Developer and demo commands. `make demo` works on a fresh clone: it creates .venv, installs the
# CPU build of torch and the package with every extra, then runs "s1 in miniature".
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# torch comes from PyTorch's CPU wheel index (no CUDA wheels); where that index cannot be reached
# (offline mirrors, a local wheel cache), one quick try and then the configured package index.
TORCH_SPEC ?= torch==2.13.0
TORCH_INDEX ?= https://download.pytorch.org/whl/cpu
TORCH_PIP_ARGS ?=
DEMO_ARGS ?=

.PHONY: install demo test lint format docs

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --timeout 5 --retries 0 --index-url $(TORCH_INDEX) "$(TORCH_SPEC)" $(TORCH_PIP_ARGS) \
		|| $(BIN)/python -m pip install "$(TORCH_SPEC)" $(TORCH_PIP_ARGS)
	$(BIN)/python -m pip install -e ".[all]"
	touch $@

demo: install
	$(BIN)/python -m demo.run $(DEMO_ARGS)

test: install
	$(BIN)/python -m pytest -q

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: install
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

docs: install
	$(BIN)/mkdocs build --strict
