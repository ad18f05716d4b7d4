# streamgmm: `make demo` and `make test` work from a fresh clone.
# `make image-test` (root, podman, runc, mmdebstrap; minutes) builds the
# container image and runs it against a broker; not part of `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)
DURATION ?= 0

.PHONY: all venv demo test lint format bench soak image-test system-tools clean

all: test

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	rm -f $(VENV)/.installed-* && touch $@

venv: $(STAMP)

# Debian tools some tests drive (promtool, systemd-analyze, prometheus).
system-tools:
	@sh scripts/ensure-system-tools

demo: $(STAMP)
	$(VENV)/bin/streamgmm demo --duration $(DURATION)

lint: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

format: $(STAMP)
	$(PY) -m ruff format .
	$(PY) -m ruff check --fix .

test: $(STAMP) system-tools
	$(PY) -m ruff check .
	$(PY) -m pytest -m "not slow"

bench: $(STAMP)
	$(PY) benchmarks/run_all.py
	$(PY) benchmarks/end_to_end.py
	$(PY) benchmarks/codec_throughput.py
	$(PY) benchmarks/entities.py
	$(PY) benchmarks/scale_out.py

soak: $(STAMP) system-tools
	STREAMGMM_FIGURES=docs/reliability/figures $(PY) -m pytest -m "slow or reliability" tests -s --timeout=7200
	$(PY) scripts/reliability_report.py

# Build the image offline (mmdebstrap base and wheelhouse cached in build/image)
# and check it against an embedded broker: docs/operations.md, section 1.3.
image-test: $(STAMP)
	$(PY) scripts/image_test.py

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .ruff_cache .hypothesis
