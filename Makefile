# Two entry points do all set-up on a fresh Debian machine (run as root, or with sudo for apt):
#   make run   - create .venv, install the node, start it with embedded defaults
#   make test  - create .venv with dev extras, install the Debian tools the tests use, run
#                ruff, mypy and the whole pytest suite (slow end-to-end tests included),
#                PYTEST_WORKERS=4 in parallel (make test PYTEST_WORKERS=6)
# and: make demo (Orthanc + node + a synthetic CT), make viewer (OHIF on the dev Orthanc),
#      make bench (benchmarks)
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# Every pip install takes constraints.txt: pyproject.toml gives ranges, constraints.txt the
# exact versions (torch's cached CPU build). torch is named in the same command as the node
# so pip resolves it together with monai (and takes the cached CPU wheel, not a CUDA build).
CONSTRAINTS := constraints.txt
PIP_INSTALL := $(BIN)/pip install -q -c $(CONSTRAINTS)
RUN_DEBS := dcmtk
TEST_DEBS := orthanc orthanc-dicomweb orthanc-python dcmtk chromium fonts-liberation prometheus openssl postgresql
APT_GET := $(shell [ "$$(id -u)" = 0 ] || echo sudo) env DEBIAN_FRONTEND=noninteractive apt-get

.PHONY: run test lint demo bench viewer viewer-dist debs-run debs-test clean

# Install only the Debian packages that are missing.
define apt_install
	@missing=""; for pkg in $(1); do dpkg -s $$pkg >/dev/null 2>&1 || missing="$$missing $$pkg"; done; \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages:$$missing"; \
		$(APT_GET) update -qq && $(APT_GET) install -y -qq --no-install-recommends $$missing; \
	fi
endef

# pyradiomics (the `radiomics` extra) is an sdist whose setup.py imports numpy and versioneer:
# it is built without build isolation, after them, with a C compiler and Python headers.
RADIOMICS_DEBS := gcc python3-dev
define install_radiomics
	$(call apt_install,$(RADIOMICS_DEBS))
	$(PIP_INSTALL) 'setuptools>=77' wheel versioneer
	$(PIP_INSTALL) --no-build-isolation -e '.[radiomics]'
endef

$(BIN)/python:
	@$(PYTHON) -c 'import ensurepip, venv' 2>/dev/null || \
		{ $(APT_GET) update -qq && $(APT_GET) install -y -qq python3-venv; }
	$(PYTHON) -m venv $(VENV)
	$(PIP_INSTALL) --upgrade pip

$(VENV)/.installed-run: pyproject.toml $(CONSTRAINTS) | $(BIN)/python
	$(PIP_INSTALL) torch -e .
	$(install_radiomics)
	@touch $@

$(VENV)/.installed-dev: pyproject.toml $(CONSTRAINTS) | $(BIN)/python
	$(PIP_INSTALL) torch -e '.[dev]'
	$(install_radiomics)
	@touch $@ $(VENV)/.installed-run $(VENV)/.installed-tools

# The development tools (demo, viewer) on top of the node: pyorthanc.
$(VENV)/.installed-tools: pyproject.toml $(CONSTRAINTS) | $(VENV)/.installed-run
	$(PIP_INSTALL) torch -e '.[tools]'
	@touch $@

debs-run:
	$(call apt_install,$(RUN_DEBS))

debs-test:
	$(call apt_install,$(TEST_DEBS))

run: $(VENV)/.installed-run debs-run
	TCP_NODELAY=1 $(BIN)/ainode serve $(if $(CONFIG),--config $(CONFIG))

lint: $(VENV)/.installed-dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports

# OHIF's prebuilt dist from npm (pinned version and hash), unpacked under var/viewer/.
viewer-dist: $(VENV)/.installed-run
	$(BIN)/python -m tools.viewer.ohif

# The suite in two passes (tests/README.md): the parallel-safe tests on PYTEST_WORKERS
# pytest-xdist workers, then the tests marked serial alone. Both always run; either
# failing fails make test. `.venv/bin/pytest` alone is still the whole suite, serially.
PYTEST_WORKERS ?= 4
test: $(VENV)/.installed-dev debs-test viewer-dist lint
	@status=0; \
	TCP_NODELAY=1 $(BIN)/pytest -n $(PYTEST_WORKERS) --dist loadgroup --no-loadscope-reorder \
		-m "not serial" $(PYTEST_ARGS) || status=1; \
	TCP_NODELAY=1 $(BIN)/pytest -m serial $(PYTEST_ARGS) || status=1; \
	exit $$status

demo: $(VENV)/.installed-tools debs-test
	TCP_NODELAY=1 $(BIN)/python -m tools.demo

viewer: $(VENV)/.installed-tools debs-test viewer-dist
	TCP_NODELAY=1 $(BIN)/python -m tools.viewer --orthanc http://127.0.0.1:8042 --port 3000

# Every benchmark section (about 45 min on 2 cores) -> benchmarks/results/<section>.json/.png
# and benchmarks/results/README.md; e.g. make bench BENCH_ARGS="--only urgent --only soak".
bench: $(VENV)/.installed-dev debs-test
	TCP_NODELAY=1 MPLBACKEND=Agg $(BIN)/python -m benchmarks $(BENCH_ARGS)

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache .mypy_cache .ruff_cache
