# cowstore: `make demo` runs the main job, `make test` the checks and the test suite; both install first.
# `make demo DRIVER=btrfs` runs the demo on another driver.
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: install lint test test-containerd demo bench soak clean

install: $(STAMP)

$(STAMP): pyproject.toml scripts/install-system-packages.sh
	bash scripts/install-system-packages.sh
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test,bench,lint]'
	$(PY) -m cowstore.snapshotter.api
	touch $(STAMP)

# Lint, formatting, types and the import contracts (pyproject.toml) come before any test runs.
lint: install
	$(VENV)/bin/ruff check src tests
	$(VENV)/bin/ruff format --check src tests
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

test: lint
	$(PY) -m pytest tests

# The containerd snapshotter's tests alone, containerd's own suite on every driver included.
test-containerd: install
	$(PY) -m pytest tests/snapshotter

demo: install
	$(VENV)/bin/cowstore $(if $(DRIVER),--driver $(DRIVER)) demo

bench: install
	$(VENV)/bin/cowstore bench --quick

# Eight processes of random commands for ten minutes per driver (the suite runs 30 seconds),
# then power loss at every flush of a recorded session on vfs, overlay2 and devicemapper.
soak: install
	COWSTORE_SOAK_SECONDS=600 $(PY) -m pytest -s -o timeout=1800 tests/cli/test_soak.py
	COWSTORE_POWER_LOSS=all $(PY) -m pytest -s -o timeout=3600 tests/cli/test_power_loss.py

clean:
	rm -rf $(VENV) build src/*.egg-info
