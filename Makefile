# The two commands of the README: `make quickstart` and `make test`. Both create .venv from
# pyproject.toml first if it is missing or older than pyproject.toml or constraints.txt, installing
# the versions the tests ran with (constraints.txt; pyproject.toml itself only has lower bounds).
VENV ?= .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=

.PHONY: quickstart test cluster bench clean

$(VENV)/.installed: pyproject.toml constraints.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e '.[dev]'
	touch $@

quickstart: $(VENV)/.installed
	$(VENV)/bin/zmdist quickstart --out runs/quickstart

# The SLURM tests need the two-node test cluster on this machine (root); ZMDIST_SLURM_TESTS=0 skips it
# and deselects those tests.
cluster:
ifeq ($(ZMDIST_SLURM_TESTS),0)
	@echo "ZMDIST_SLURM_TESTS=0: not starting the local SLURM cluster"
else
	bash slurm/local-cluster.sh up
endif

test: $(VENV)/.installed cluster
	$(PY) -m pytest -q -ra $(PYTEST_ARGS)

bench: $(VENV)/.installed
	$(PY) benchmarks/embed_throughput.py

clean:
	rm -rf runs .pytest_cache
