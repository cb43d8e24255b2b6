# The README's two commands: `make demo` and `make test`. Every target bootstraps
# the virtual environment first; re-running is quick when pyproject.toml is unchanged.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
EXTRAS ?= dev,apps

.PHONY: demo test test-slow test-lowest lint typecheck pytest bench bench-gpu clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[$(EXTRAS)]'
	$(BIN)/python -m rnnjax.kernels.build  # the C++ kernels, compiled once, never in a trace
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/rnnjax demo

lint: $(STAMP)
	$(BIN)/ruff check rnnjax tests benchmarks
	$(BIN)/ruff format --check rnnjax tests benchmarks

typecheck: $(STAMP)
	$(BIN)/mypy rnnjax

# `make test`: everything but the end-to-end runs marked slow (processes, signals, whole
# applications), which `make test-slow` runs; CI runs both.
pytest: $(STAMP)
	$(BIN)/python -m pytest -n 2 --dist worksteal -m "not slow" --durations=15

test: lint typecheck pytest

test-slow: $(STAMP)
	$(BIN)/python -m pytest -n 2 --dist worksteal -m slow --durations=15

# `make test-lowest`: the suite again in a second environment holding the oldest version of
# every dependency pyproject.toml allows (.ci/lowest_requirements.py pins each lower bound).
# The notebooks (ipykernel) and the PyTorch oracles (torch is pinned, not bounded) stay out.
LOWEST := .venv-lowest
test-lowest:
	test -x $(LOWEST)/bin/python || $(PYTHON) -m venv $(LOWEST)
	$(PYTHON) .ci/lowest_requirements.py apps dev > $(LOWEST)/constraints.txt
	$(LOWEST)/bin/python -m pip install --quiet --disable-pip-version-check \
		-c $(LOWEST)/constraints.txt -e '.[apps]' chex pytest pytest-xdist
	$(LOWEST)/bin/python -m pip list --disable-pip-version-check | grep -iE '^(jax|jaxlib|numpy|optax|flax|orbax-checkpoint|matplotlib|rich|chex|scikit-learn) '
	$(LOWEST)/bin/python -m rnnjax.kernels.build
	$(LOWEST)/bin/python -m pytest -n 2 --dist worksteal -m "not slow" -p no:cacheprovider \
		--ignore tests/test_notebooks.py

bench: $(STAMP)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev,apps,bench]'
	$(BIN)/python benchmarks/bench_speed.py

# On a CUDA machine, with the machine's own CUDA-enabled JAX (the .venv holds the CPU build):
# every GPU kernel vs scan, then the timing table, into benchmarks/results/gpu_<card>.{json,md}
# and the README's GPU block. A run cut by its time budget: `make bench-gpu ARGS=--resume`.
bench-gpu:
	PYTHONPATH=. $(PYTHON) benchmarks/bench_gpu.py --readme README.md $(ARGS)

clean:
	rm -rf $(VENV) $(LOWEST) build *.egg-info
