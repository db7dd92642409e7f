# One command per job; each creates the virtual environment and installs what it needs by itself.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# The PyTorch build to install. This default lies on local disk on the project's machines;
# elsewhere any torch>=2.4 (and a matching torchvision for the tests) works.
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
STAMP := $(VENV)/.installed
OUT ?= runs/demo
PYTEST_ARGS ?=

.PHONY: install data demo test test-all lint bench-quick clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH_SPEC)
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

# Fashion-MNIST: Debian's package where we can install it, else slimkit downloads the official files.
data: $(STAMP)
	@$(PY) -c "from slimkit.data import locate_fashion_mnist as f; f(download=False)" 2>/dev/null || \
	  { if command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
	      apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist; \
	    fi; \
	    $(PY) -c "from slimkit.data import locate_fashion_mnist as f; print('Fashion-MNIST in', f())"; }

demo: data
	$(VENV)/bin/slimkit demo --out $(OUT) --overwrite

test: data
	$(PY) -m pytest -m "not slow" -q $(PYTEST_ARGS)

test-all: data
	$(PY) -m pytest -q $(PYTEST_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

bench-quick: data
	for b in benchmarks/*.py; do $(PY) $$b --quick --out .bench/$$(basename $$b .py).json || exit 1; done

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .bench
