# Set-up on a fresh machine is part of every target: the venv is created and the package installed when missing or
# when pyproject.toml / constraints.txt changed.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test install clean

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c constraints.txt -e ".[train,test]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/vaedeploy demo

# pytest's own exit code: 5 (no test collected) fails too, so an empty or missing test folder cannot pass CI.
test: $(STAMP)
	@test -d tests || { echo "make test: no tests/ folder here; expected the test suite in $(CURDIR)/tests"; exit 1; }
	$(BIN)/python -m pytest -q -ra

# Mutation testing of the numeric code (docs/testing.md): minutes, not part of `make test` or CI.
.PHONY: mutation
mutation: $(STAMP)
	$(BIN)/python tests/mutation/run.py

clean:
	rm -rf $(VENV) build *.egg-info
