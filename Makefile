# squeezeedge: `make demo` runs the main job on the embedded default, `make test` runs the tests.
# Both set up everything on a fresh machine: a local virtualenv with pinned dependencies.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
SE     := $(VENV)/bin/squeezeedge
STAMP  := $(VENV)/.installed

.PHONY: setup demo test test-slow clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

# The embedded default: the full-size SqueezeBERT (seeded init), exported and validated.
demo: $(STAMP)
	$(SE) export --model squeezebert-uncased --out build/demo/export
	$(SE) inspect build/demo/export

test: $(STAMP)
	$(PY) -m pytest -q -m "not slow"

test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow

clean:
	rm -rf build .pytest_cache
