# attnlab: two commands set everything up.
#   make demo   creates .venv, installs attnlab, runs the main job on the bundled data
#   make test   creates .venv with the dev extras, runs the whole CPU test suite
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
TORCH_PIN := torch==2.13.0

.PHONY: demo test install install-dev browser clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip

# Install torch first when none is present: the pinned CPU wheel is local on our machines,
# while the package metadata keeps the range torch>=2.5 so users bring their own build.
$(VENV)/.torch: | $(PY)
	$(PY) -c "import torch" 2>/dev/null || $(PIP) install -q $(TORCH_PIN)
	touch $@

$(VENV)/.installed: pyproject.toml $(VENV)/.torch
	$(PIP) install -q -e .
	touch $@

$(VENV)/.installed-dev: pyproject.toml $(VENV)/.torch
	$(PIP) install -q -e ".[dev]"
	touch $@ $(VENV)/.installed

# A headless browser for the report test (tests/compare/test_report_browser.py): Debian's chromium and chromedriver
# when they are missing and apt can install them (as root); otherwise that test says why it is skipped.
browser:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || \
	  { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
	    { apt-get install -y -q chromium chromium-driver >/dev/null 2>&1 || \
	      { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q chromium chromium-driver >/dev/null 2>&1; }; }; } || \
	  echo "note: no chromium/chromedriver (the browser test of the report will be skipped)"

install: $(VENV)/.installed
install-dev: $(VENV)/.installed-dev

# The main job: compare attention mechanisms on Tiny Shakespeare at equal parameters (about 5-8 minutes on
# 2 CPU cores). --resume keeps the runs a previous `make demo` finished, so a second call only re-reports.
demo: $(VENV)/.installed
	$(VENV)/bin/attnlab compare --preset quick --out runs/demo-compare --resume

test: $(VENV)/.installed-dev browser
	$(PY) -m pytest -n 2 -q

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info
