# Two commands: `make serve` and `make test`. Both set everything up first.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
MODEL := models/digits/1/saved_model.pb
LINEAR_MODEL := models/digits_linear/1/saved_model.pb
# The models with other signatures the tests serve (models/build_test_models.py).
TEST_MODELS := models/test/.built
# The example pipeline's locator (examples/digit_reader).
LOCATOR_MODEL := models/locator/1/saved_model.pb

# Token auth on local clusters breaks drivers joining with ray.init(address=...)
# (see docs/operations.md); this project chooses the mode explicitly for every process.
export RAY_AUTH_MODE ?= disabled
export TF_CPP_MIN_LOG_LEVEL ?= 2

.PHONY: serve test test-unit test-cluster test-browser lint model browser bench kuberay clean

# scikit-learn and matplotlib serve only the tests' digits, the model builds and the benchmark's
# plot, never the server; but Keras imports both in every process that imports TensorFlow
# whenever they can be found (1.5 s of CPU per model replica here). So they live in TOOLS, not
# in the venv's site-packages, and only those processes look there (harness/tools.py for the
# tests and the benchmark, PYTHONPATH below): the clusters' workers import what a user's
# install has. Pinned with those of their dependencies (as uv resolves them) the venv lacks.
TOOLS := $(VENV)/tools
TOOL_PACKAGES := scikit-learn==1.9.1 scipy==1.17.1 joblib==1.6.0 threadpoolctl==3.8.0 \
  cloudpickle==3.1.3 narwhals==2.29.0 matplotlib==3.11.2 contourpy==1.3.3 cycler==0.12.1 \
  fonttools==4.69.1 kiwisolver==1.5.1

# uv installs the pinned packages from PyPI in parallel: ~20 s, where pip took ~95 s.
UV := uv==0.13.9
$(STAMP): pyproject.toml Makefile
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet $(UV)
	$(BIN)/uv pip install --quiet --compile-bytecode --python $(BIN)/python -e '.[test,bench]'
	$(BIN)/uv pip install --quiet --compile-bytecode --python $(BIN)/python --no-deps \
	  --target $(TOOLS) $(TOOL_PACKAGES)
	touch $(STAMP)

$(MODEL): | $(STAMP)
	PYTHONPATH=$(TOOLS) $(BIN)/python -m models.build_digits

$(LINEAR_MODEL): | $(STAMP)
	PYTHONPATH=$(TOOLS) $(BIN)/python -m models.build_digits_linear

$(TEST_MODELS): models/build_test_models.py | $(STAMP)
	$(BIN)/python -m models.build_test_models
	touch $@

$(LOCATOR_MODEL): models/build_locator.py | $(STAMP)
	PYTHONPATH=$(TOOLS) $(BIN)/python -m models.build_locator

model: $(MODEL) $(LINEAR_MODEL) $(TEST_MODELS) $(LOCATOR_MODEL)

# configs/server.env: Serve's faster serving path (HAProxy ingress, throughput mode).
# SERVE_CONFIG: another app to serve, e.g. make serve SERVE_CONFIG=examples/digit_reader/config.yaml
# deployments.run supervises `serve run`: however it is stopped, nothing it started is left.
SERVE_CONFIG ?= configs/config.yaml
serve: $(STAMP) model
	set -a && . ./configs/server.env && set +a && exec $(BIN)/python -m deployments.run $(SERVE_CONFIG)

# mypy reads its settings (the package, the pydantic plugin) from pyproject.toml.
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy

# Debian's Chromium and its driver, for the demo page's browser tests (as root, like CI).
browser:
	command -v chromedriver >/dev/null || (apt-get update && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends chromium chromium-driver)

# The models build while ruff and mypy run. Then three pytest processes at once: the session
# cluster's tests; those that start a cluster of their own (the CLI, make serve), then the
# `second_cluster` modules in a session cluster of their own (tests/conftest.py); and the
# in-process tiers (no Ray). The other two's reports print after the first's, and any failing
# fails the target. (With every session-cluster module in the first, a fresh clone's run took
# ~3 min longer, 12-12.5 min, with about a third of two cores idle once the others were done.)
LOGS := build/tests
test: $(STAMP)
	$(MAKE) --no-print-directory -j3 model lint browser
	@mkdir -p $(LOGS)
	$(BIN)/pytest -m unit -q > $(LOGS)/unit.log 2>&1 & unit=$$!; \
	  $(BIN)/pytest -m "own_cluster or second_cluster" --durations=10 > $(LOGS)/second.log 2>&1 & \
	  second=$$!; \
	  $(BIN)/pytest -m "cluster and not own_cluster and not second_cluster" --durations=15; \
	  cluster=$$?; wait $$second; second=$$?; wait $$unit; unit=$$?; \
	  echo "--- clusters of their own, then a second session cluster ---"; \
	  tail -n 40 $(LOGS)/second.log; \
	  echo "--- in-process tiers (pytest -m unit) ---"; tail -n 30 $(LOGS)/unit.log; \
	  exit $$(( cluster || second || unit ))

# One tier at a time (tests/conftest.py): no Ray (~55 s in two workers), a real cluster, the browser.
test-unit: $(STAMP) model lint
	$(BIN)/pytest -m unit -n 2

test-cluster: $(STAMP) model
	$(BIN)/pytest -m "cluster and not browser"

test-browser: $(STAMP) model browser
	$(BIN)/pytest -m browser

# deploy/kuberay/*.yaml from configs/ (a unit test fails when they are stale).
kuberay: $(STAMP)
	$(BIN)/python -m deploy.rayservice

bench: $(STAMP)
	$(BIN)/python -m benchmarks $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache
