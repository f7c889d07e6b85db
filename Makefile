# gangway: `make run` starts the stack with the default config; `make test` runs every test.
# Both set up everything they need on a fresh Debian machine (the venv; apt packages for tests).

PY ?= python3
VENV := .venv
VPY := $(VENV)/bin/python
RUN_DIR ?= run
PYTEST_ARGS ?=

.PHONY: run test venv deps-test unit e2e bench clean down

$(VENV)/.installed: pyproject.toml
	$(PY) -m venv $(VENV)
	$(VPY) -m pip install -q --upgrade pip
	$(VPY) -m pip install -q -e '.[test]'
	touch $@

venv: $(VENV)/.installed

run: venv
	$(VENV)/bin/gangway --run-dir $(RUN_DIR) up $(if $(CONFIG),--config $(CONFIG))

down: venv
	$(VENV)/bin/gangway --run-dir $(RUN_DIR) down

deps-test:
	@scripts/install-test-deps.sh

test: venv deps-test
	$(VPY) -m pytest -q -p no:cacheprovider $(PYTEST_ARGS)

unit: venv
	$(VPY) -m pytest -q tests/unit $(PYTEST_ARGS)

bench: venv deps-test
	@command -v slirp4netns >/dev/null && command -v pasta >/dev/null || \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slirp4netns passt >/dev/null)
	$(VPY) -m bench.run
	$(VPY) -m bench.dns_qps

clean:
	rm -rf $(VENV) build .pytest_cache .hypothesis
