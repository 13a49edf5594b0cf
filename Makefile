# Two commands on a fresh machine:
#   make up    - install jobdeck with the embedded database and run it
#   make test  - install jobdeck with the dev extras and run the test suite
# The first interpreter that runs and is 3.11 or newer (a pyenv shim may exist
# for a version that is not selected, so each candidate is actually run).
PYTHON ?= $(shell for p in python3 python3.13 python3.12 python3.11; do \
	$$p -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null && { command -v $$p; break; }; done)
VENV   := .venv
BIN    := $(VENV)/bin

.PHONY: up test clean

$(BIN)/python:
	@test -n "$(PYTHON)" || { echo "jobdeck needs Python 3.11 or newer; none found (set PYTHON=/path/to/python3.11)"; exit 1; }
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "jobdeck needs Python 3.11 or newer, found " + sys.version.split()[0] + " at " + sys.executable + "; set PYTHON=/path/to/python3.11")'
	$(PYTHON) -m venv $(VENV)

# One stamp per extra, remade when the package metadata changes.
$(VENV)/.embedded: setup.cfg pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[embedded]'
	@touch $@

$(VENV)/.dev: setup.cfg pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[embedded,dev]'
	@touch $@

up: $(VENV)/.embedded
	exec $(BIN)/jobdeck up

# Two test processes (each with its own embedded database), a file each at a time: many tests
# wait on processes and the database, so two run in about half the time on two cores.
TEST_PROCESSES ?= 2

test: $(VENV)/.dev
	$(BIN)/python -m pytest -n $(TEST_PROCESSES) --dist loadfile --durations=15 $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) *.egg-info
