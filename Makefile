# `make demo` and `make test` set everything up on a fresh machine (a .venv here).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
SWEEP ?=
OUTPUT_ROOT = $(or $(SR_OUTPUT_ROOT),outputs)
export WANDB_ERROR_REPORTING ?= false
export WANDB_SILENT ?= true

.PHONY: setup demo test test-slow test-all tables bench bench-eval bench-launchers bench-tables bench-stats bench-fused faults slurm-up slurm-down clean

setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	@echo "installing into $(VENV) (log: $(VENV)/install.log) ..."
	@$(PY) -m pip install --upgrade pip > $(VENV)/install.log 2>&1 || (tail -30 $(VENV)/install.log; exit 1)
	@$(PY) -m pip install -c constraints.txt -e '.[test]' >> $(VENV)/install.log 2>&1 || (tail -30 $(VENV)/install.log; exit 1)
	touch $(STAMP)

# A real mini-study on the built-in photographs (~30 s per job on 2 CPU cores): SRResNet 32x4
# trained 400 steps on bicubic vs the paper's Real-ESRGAN degradations, 4 seeds each; the table
# compares each with the bicubic-trained runs, then says in one sentence what it shows.
DEMO_SWEEP := $(OUTPUT_ROOT)/sweeps/demo
demo: setup
	$(PY) -m sweeper -m preset=demo degradation=bicubic,realesrgan seed=0,1,2,3 sweep_name=demo
	$(PY) -m analysis.tables $(DEMO_SWEEP) --baseline degradation=bicubic
	@$(PY) -m analysis.summary $(DEMO_SWEEP) --baseline degradation=bicubic

test: setup
	$(PY) -m pytest -m "not slow" -q --durations=30

test-slow: setup
	$(PY) -m pytest -m slow -q

test-all: setup
	$(PY) -m pytest -q

# Tables of every sweep under outputs/ (or of one: make tables SWEEP=outputs/sweeps/<name>).
tables: setup
	$(PY) -m analysis.tables $(if $(SWEEP),$(SWEEP),$(OUTPUT_ROOT)/sweeps)

# Degradation throughput vs a per-image reference, and a training iteration vs the bare step.
bench: setup
	$(PY) benchmarks/bench_degradation.py
	$(PY) benchmarks/bench_train.py

# One job's evaluation (Set5 + Set14 + BSD68 x 8 degradations): before issue 20 vs now, cold and warm test-LR cache.
bench-eval: setup
	$(PY) benchmarks/bench_eval.py

# Every table and figure from 1,000 runs' offline wandb logs (generated once, cached in /tmp).
bench-tables: setup
	$(PY) benchmarks/bench_tables.py

# Coverage of the tables' 95% intervals, by simulation at the sizes studies use (docs/statistics.md).
bench-stats: setup
	$(PY) benchmarks/stats_coverage.py

# Launcher overhead: a 9-job smoke sweep under local, local_parallel and slurm (if up).
bench-launchers: setup
	$(PY) benchmarks/bench_launchers.py

# A fused group (issue 26): 4 demo jobs fused vs one at a time, engine and command line.
bench-fused: setup
	$(PY) benchmarks/bench_fused.py

# Fault injection (issue 19): every reliability defect and kill -9 at 13 points of a job's life,
# each rerun checked against an uninterrupted run; ends "N of M faults survived, nothing lost".
faults: setup
	$(PY) benchmarks/fault_injection.py

# A real single-node SLURM cluster on this machine (root; installs Debian's packages if
# missing), with accounting, for launcher=slurm and its tests. State in .slurm/.
slurm-up:
	$(PYTHON) -m sweeper.localslurm up --install

slurm-down:
	$(PYTHON) -m sweeper.localslurm down

clean:
	rm -rf outputs multirun
