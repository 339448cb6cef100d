# The two commands (see README): `make run` and `make test`.
# Both create or reuse .venv and install opengem with the pinned constraints.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: run test test-fast lint lock clean

$(STAMP): pyproject.toml constraints.txt
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "opengem needs Python >= 3.11; set PYTHON=python3.11")'
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e '.[dev]'
	@touch $(STAMP)

run: $(STAMP)
	$(VENV)/bin/opengem run

test: $(STAMP)
	$(PY) -m ruff check src tests scripts
	$(PY) -m mypy
	$(PY) -m pytest

# The quick loop (see README, Development): lint, then the tests that are not slow and
# need neither the shared datasets nor a browser; `make test` runs everything.
test-fast: $(STAMP)
	$(PY) -m ruff check src tests scripts
	$(PY) -m pytest -q -m "not slow and not corpus and not browser"

lint: $(STAMP)
	$(PY) -m ruff check src tests scripts
	$(PY) -m mypy

# Re-pin every dependency to what is installed now (after a deliberate upgrade).
lock: $(STAMP)
	@{ sed -n '/^#/p;/^torch==/p' constraints.txt; \
	   $(PY) -m pip freeze --exclude-editable | grep -iv '^torch==' | sort -f; } > constraints.txt.new
	@mv constraints.txt.new constraints.txt

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
