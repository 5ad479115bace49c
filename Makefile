# The README's two commands: `make demo` and `make test`. Both set up .venv first when it is missing.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
FMNIST := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
RUN ?= runs/demo-mae-fmnist

.PHONY: setup demo lint test test-faults clean

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade pip >/dev/null
	# torch and torchvision together: this pair is the one timm's torchvision import works with here.
	$(PIP) install torch==2.14.1 torchvision==0.29.1
	$(PIP) install -e '.[dev]'
	touch $@

setup: $(VENV)/.installed
	@if [ ! -f $(FMNIST) ] && [ -z "$$MIMKIT_DATA" ] && command -v apt-get >/dev/null 2>&1; then \
		echo "installing Debian's dataset-fashion-mnist"; \
		(apt-get install -y dataset-fashion-mnist || (apt-get update && apt-get install -y dataset-fashion-mnist)) \
		|| echo "could not install dataset-fashion-mnist; mimkit will try to download Fashion-MNIST instead"; \
	fi

demo: setup
	$(PY) -m mimkit.demo --out $(RUN)

# ruff, configured in pyproject.toml: pycodestyle, pyflakes and import order over src, tests and scripts, and the
# formatting (`ruff format .` fixes it)
lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

# TEST_WORKERS pytest-xdist processes (the suite must stay under 10 minutes on 2 cores: 2 workers took 7 min there,
# one 10.4; most of a test's time is starting Python and torch in a subprocess, which a second worker overlaps);
# TEST_WORKERS=0 runs in this process, one test at a time. --durations: the 15 slowest tests, printed after every run
TEST_WORKERS ?= 2
test: setup lint
	$(PY) -m pytest -q -m "not faults" -n $(TEST_WORKERS) --durations=15

# the slower fault injections (tests/test_faults.py, about 2 minutes): kill -9 at random moments, a full disk during a
# checkpoint write, a torchrun job with a stopped or killed rank. CI runs them after `make test`.
test-faults: setup
	$(PY) -m pytest -q -m faults

clean:
	rm -rf runs .pytest_cache
