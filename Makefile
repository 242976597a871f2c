# Two commands on a fresh machine: `make demo` and `make test`.
# Each creates .venv (if missing) and installs the project with its dev extras.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: test soak demo bench bench-peers lint clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[dev]"
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q tests

# The long form of the fault-injection suite (tests/faults/README.md): 240 SIGKILLs, a
# 30-minute soak, ten times the hostile-input examples; about 40 minutes on two cores.
# Each knob may be overridden (`make soak FLUXON_SOAK_SECONDS=600`); FLUXON_FAULT_SEED
# replays a kill schedule. The figures go to $(FLUXON_FAULT_REPORT), printed at the end.
FLUXON_FAULT_KILLS ?= 240
FLUXON_SOAK_SECONDS ?= 1800
FLUXON_FAULT_EXAMPLES ?= 10
FLUXON_FAULT_REPORT ?= .fault-report.jsonl

soak: $(STAMP)
	rm -f $(FLUXON_FAULT_REPORT)
	FLUXON_FAULT_KILLS=$(FLUXON_FAULT_KILLS) FLUXON_SOAK_SECONDS=$(FLUXON_SOAK_SECONDS) \
	FLUXON_FAULT_EXAMPLES=$(FLUXON_FAULT_EXAMPLES) FLUXON_FAULT_REPORT=$(FLUXON_FAULT_REPORT) \
		$(PY) -m pytest -q tests/faults -p no:cacheprovider --durations=10; \
	status=$$?; cat $(FLUXON_FAULT_REPORT) 2>/dev/null; exit $$status

demo: $(STAMP)
	$(PY) examples/demo.py

# Large buffers are reused instead of first-touched on every message (this VM pays
# about 2 us per fresh 4 KiB page); every peer in a run gets the same setting.
BENCH_ENV := MALLOC_MMAP_THRESHOLD_=268435456 MALLOC_TRIM_THRESHOLD_=536870912

bench: $(STAMP)
	$(BENCH_ENV) $(PY) -m pytest -q bench -o python_files='bench_*.py' -p no:cacheprovider \
		--benchmark-only --benchmark-columns=min,median,mean,ops --benchmark-sort=name

BENCH_STAMP := $(VENV)/.bench-installed
$(BENCH_STAMP): $(STAMP)
	$(PY) -m pip install -q -e ".[dev,bench]"
	touch $(BENCH_STAMP)

# Every peer (mp.Queue, Pipe, POSIX mq, faster-fifo, zmq, iceoryx2, the reference
# fluxon-py in its own venv) on the same workload in one run; ARGS="--quick" for a
# shorter run. The table goes to bench/results/ and bench/README.md.
bench-peers: $(BENCH_STAMP)
	$(BENCH_ENV) $(PY) -m bench.peers $(ARGS)

lint: $(STAMP)
	$(PY) -m ruff check fluxon kernels tests examples bench

clean:
	rm -rf $(VENV) .pytest_cache .benchmarks
