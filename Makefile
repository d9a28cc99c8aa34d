# tulu-kit: `make demo` and `make test` each set up .venv on first use, so both are one command on a fresh clone.
SHELL := /bin/bash
PYTHON ?= python3
TORCH ?= torch==2.13.0
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.setup-done
NOTEBOOKS := $(wildcard notebooks/*.ipynb eval/*.ipynb)

# Keep caches inside the project, not in the home directory (HF, DeepSpeed JIT ops, Jupyter, W&B).
export HF_HOME := $(CURDIR)/.cache/huggingface
export TORCH_EXTENSIONS_DIR := $(CURDIR)/.cache/torch_extensions
export IPYTHONDIR := $(CURDIR)/.cache/ipython
export JUPYTER_RUNTIME_DIR := $(CURDIR)/.cache/jupyter_runtime
export MPLCONFIGDIR := $(CURDIR)/.cache/matplotlib
export WANDB_DIR := $(CURDIR)/.cache/wandb
export WANDB_MODE ?= offline
export TOKENIZERS_PARALLELISM := false
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: setup dirs demo sanity test lint format lab clean bench

setup: $(STAMP)

# torch first (here the CPU build already on disk), then everything under constraints.txt plus the exact torch
# that got installed, so no later install can swap it for another build.
$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q -U pip
	$(PIP) install -q $(TORCH)
	{ cat constraints.txt; $(PIP) freeze | grep -E '^torch=='; } | grep -vE '^torch==[0-9.]+$$' > $(VENV)/constraints.txt
	PIP_CONSTRAINT=$(VENV)/constraints.txt $(PIP) install -q -e ".[quant,eval,merge,dev]"
	DS_BUILD_OPS=0 PIP_CONSTRAINT=$(VENV)/constraints.txt $(PIP) install -q --no-build-isolation "deepspeed>=0.19"
	$(PIP) check
	@# DeepSpeed's collectives on CPU need its shm op, built by JIT at a job's first start (about 45 s of compiling,
	@# into $$TORCH_EXTENSIONS_DIR): built once here instead. Not fatal: only DeepSpeed jobs on CPU need it
	$(PY) -c "from deepspeed.comm.torch import build_shm_op; build_shm_op()" \
		|| echo "note: DeepSpeed's CPU shm op did not build here; a DeepSpeed job on CPU builds it when it starts"
	touch $@

dirs:
	@mkdir -p $(HF_HOME) $(TORCH_EXTENSIONS_DIR) $(IPYTHONDIR) $(JUPYTER_RUNTIME_DIR) $(MPLCONFIGDIR) $(WANDB_DIR)

demo: setup dirs
	$(VENV)/bin/tulu-kit run recipes/quickstart.yaml --out runs/demo
	@echo "report: $(CURDIR)/runs/demo/report/report.html"

# The quickstart once per seed (1, 2, 3): the toy world's per-stage table, mean ± sd over the seeds, printed and
# written to runs/sanity/stage_table.md (each seed's run in runs/sanity/seed-<k>, its report beside it).
sanity: setup dirs
	$(VENV)/bin/tulu-kit run recipes/quickstart.yaml --out runs/sanity --set 'seeds=[1,2,3]'
	@echo "table: $(CURDIR)/runs/sanity/stage_table.md"

# Every bench script, median of 3 repeats each: one table (machine and versions in its header) printed and
# written to runs/bench/<time>_<commit>.txt with the JSON beside it (runs/bench/latest.json: the last run).
bench: setup dirs
	$(PY) bench/run_all.py --repeats 3 --out runs/bench

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/nbstripout --verify $(NOTEBOOKS)

# pytest-xdist: one worker per core (at most 4); each test module runs whole on one worker (its module fixtures
# built once), in collection order, where tests/conftest.py puts the demo's module first and makes torch's
# threads wait passively, not spin. TEST_WORKERS=0 runs the tests in this process.
TEST_WORKERS ?= $(shell n=$$(nproc); echo $$(( n > 4 ? 4 : n )))
test: lint dirs
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder

format: setup
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .
	$(VENV)/bin/nbstripout $(NOTEBOOKS)

# The repository root is Lab's root (notebooks/, eval/, runs/, recipes/ all in its file browser); it opens on
# notebooks/. --allow-root only when run as root (as in the Dockerfile), where Jupyter refuses to start without it.
LAB_ARGS ?=
lab: setup dirs
	$(VENV)/bin/jupyter lab --ServerApp.root_dir="$(CURDIR)" --LabApp.default_url=/lab/tree/notebooks \
		$$( [ "$$(id -u)" = 0 ] && echo --allow-root ) $(LAB_ARGS)

clean:
	rm -rf $(VENV) .cache runs .pytest_cache .ruff_cache
