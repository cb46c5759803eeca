# Two commands: `make demo` (set up, then train the CPU demo) and `make test` (set up, then run the tests).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: install demo test clean

$(BIN)/vlp: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip
	$(BIN)/pip install -e ".[dev,ray]"  # ray: ~250 MB and ~25 s more, so that the ray engine's tests run
	touch $@

install: $(BIN)/vlp

demo: install
	rm -rf runs/demo  # the demo starts afresh each time; `vlp train` refuses a run directory in use
	$(BIN)/vlp train --config configs/demo.yaml

test: install
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) runs
