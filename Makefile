# The two set-up commands: `make demo` and `make test`. Each creates .venv when missing.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test lint sysdeps kafka unit integration bench clean

$(STAMP): pyproject.toml setup.py schemas/_ccolumnar.pyx
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || { echo "driftline needs Python >= 3.11 (set PYTHON=...)"; exit 1; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/driftline up --duration 60 --rate 2000 --drift-at 30

lint: $(STAMP)
	$(PY) -m ruff check driftline schemas inference detectors streams tests bench examples
	$(PY) -m mypy

sysdeps:
	scripts/system-deps

# Apache Kafka's jars, fetched once with Maven into ~/.cache/driftline/kafka-VERSION (or DRIFTLINE_KAFKA_HOME);
# the integration tests run on it as well as on the embedded broker (and fetch it themselves when missing).
kafka: $(STAMP)
	$(PY) -m driftline.streams.kafka.apache

test: sysdeps lint kafka  # sysdeps first: gcc for the compiled codec, which the install builds
	$(PY) -m pytest --doctest-modules driftline/schemas driftline/inference driftline/detectors tests

unit: $(STAMP)
	$(PY) -m pytest tests/unit

integration: $(STAMP) kafka
	$(PY) -m pytest -m kafka tests/integration

bench: $(STAMP)
	$(PY) bench/e2e.py

clean:
	rm -rf $(VENV) .driftline .pytest_cache .mypy_cache .ruff_cache *.egg-info build
