# hpc-ft: the two commands of the README, and a few more.
#   make demo   set up (first time) and run the main job on the embedded local default
#   make test   set up, start the local Slurm (node localhost + the two-node partition multi),
#               run the whole test suite against it
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: setup demo test test-fast slurm-start slurm-stop bench clean

setup: $(STAMP)

# torch first, pinned: the CPU wheel; a looser pin would pull gigabytes of CUDA wheels.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[hf,plot,test]'
	touch $@

demo: setup
	$(BIN)/hpc-ft demo

# node localhost (partitions debug, gpu) and partition multi of node1 + node2, each in its own
# network and UTS namespace (tests/slurm/test_multinode_real.py runs jobs across them)
slurm-start:
	scripts/local-slurm.sh start --nodes 2

slurm-stop:
	scripts/local-slurm.sh stop

test: setup slurm-start
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q -p no:cacheprovider -n 2 --dist loadgroup --durations=30

# everything but the real-Slurm tests
test-fast: setup
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q -m "not slurm"

bench: setup
	for b in bench/bench_*.py; do echo "== $$b"; $(BIN)/python $$b || exit 1; done

clean:
	rm -rf $(VENV) build dist *.egg-info
