# Set-up on a fresh machine is part of every target: the venv is created and the package installed when missing or
# when pyproject.toml / constraints.txt changed.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test install clean web browser-deps docs mutation gpu-check-prepare gpu-check

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c constraints.txt -e ".[train,test]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/vaedeploy demo

# The explorer page (docs/web.md): onnxruntime-web and esbuild from web/package-lock.json, built into
# vaedeploy/web/page/ (package data; not committed: its wasm is 28 MB and comes from the lockfile).
PAGE := vaedeploy/web/page/build.json
web: $(PAGE)

$(PAGE): web/package.json web/package-lock.json web/build.mjs $(wildcard web/src/*)
	cd web && npm ci --no-audit --no-fund --loglevel=error && node build.mjs

# What the browser tests (tests/web) need, where this machine allows it: the page (npm) and Debian's chromium
# (apt-get, as root). Without them those tests skip and say why; under CI=true they fail.
browser-deps:
	@if command -v npm >/dev/null; then $(MAKE) --no-print-directory web || echo "the page did not build: the browser tests will skip"; \
	else echo "npm not found: the explorer page is not built and the browser tests will skip"; fi
	@if [ ! -x /usr/bin/chromium ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } \
	      || echo "apt-get could not install chromium: the browser tests will skip"; \
	  else echo "no /usr/bin/chromium: the browser tests will skip (apt-get install chromium)"; fi; fi

# ruff first (it takes seconds); then pytest, whose own exit code counts: 5 (no test collected) fails too, so an
# empty or missing test folder cannot pass CI. --durations lists the 10 slowest tests, to keep CI well under 15 min.
test: $(STAMP) browser-deps
	@test -d tests || { echo "make test: no tests/ folder here; expected the test suite in $(CURDIR)/tests"; exit 1; }
	$(BIN)/ruff check vaedeploy kernels export benchmarks tests web
	$(BIN)/python -m pytest -q -ra --durations=10

# Mutation testing of the numeric code (docs/testing.md): minutes, not part of `make test` or CI.
mutation: $(STAMP)
	$(BIN)/python tests/mutation/run.py

clean:
	rm -rf $(VENV) build *.egg-info web/node_modules vaedeploy/web/page

# docs/*.md tables from the committed results in benchmarks/results/*.json (tests/test_docs.py checks they agree)
docs: $(STAMP)
	$(BIN)/python -m benchmarks.report

# Every GPU claim in one run on a CUDA machine, in under ten minutes (docs/gpu.md). gpu-check-prepare, here: the
# bundles and wheels the bare GPU machine lacks, into .gpu_check/ (carried there). gpu-check, there: the image's
# python3 where no venv exists; GPU_RESULTS is where each step's JSON goes (default benchmarks/results/gpu).
GPU_PYTHON := $(if $(wildcard $(BIN)/python),$(BIN)/python,$(PYTHON))
gpu-check-prepare: $(STAMP)
	$(BIN)/python -m benchmarks.gpu_check prepare

gpu-check:
	$(GPU_PYTHON) benchmarks/gpu_check.py run $(if $(GPU_RESULTS),--results $(GPU_RESULTS))
