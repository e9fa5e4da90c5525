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

# pytest exits 5 when it collects no test; that is not a failure of the code under test.
test: $(STAMP)
	$(BIN)/python -m pytest -q -ra; rc=$$?; if [ $$rc -eq 5 ]; then exit 0; else exit $$rc; fi

clean:
	rm -rf $(VENV) build *.egg-info
