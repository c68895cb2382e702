# make run   - set up .venv (when missing or requirements.txt changed), then run the pipeline
# make test  - the test suite
# make ui    - MLflow UI on http://127.0.0.1:5000 for this project's runs
# make mlflow-server - tracking server on http://127.0.0.1:5002 (MLFLOW_TRACKING_URI; docs/team.md)
# make lint  - ruff
# make verify-repro - re-run preprocess, train, evaluate in a scratch copy; compare with dvc.lock
# make exp PRESET=seed-notebook - run a named preset (presets.yaml) as a DVC experiment
# make presets-table - run every preset over 3 seeds; print the README's table
# make bench - speed and memory against a plain Keras baseline (results/bench.md)
# make predict IMAGES='digit.png scans/' - the digit in each image (models/model.keras)
# make real-use - accuracy on MNIST test digits redrawn like photos, through predict

VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PYTHON ?= python3
UI_PORT ?= 5000
SERVER_HOST ?= 127.0.0.1
SERVER_PORT ?= 5002
SERVER_STORE ?= sqlite:///$(CURDIR)/mlflow.db?timeout=60
SERVER_ARTIFACTS ?= $(CURDIR)/mlartifacts

.PHONY: run test ui mlflow-server lint venv verify-repro exp presets-table bench predict real-use

venv: $(STAMP)

$(STAMP): requirements.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.txt
	touch $@

run: $(STAMP)
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/dvc repro

test: $(STAMP)
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m pytest

ui: $(STAMP)
	$(BIN)/mlflow ui --host 127.0.0.1 --port $(UI_PORT) \
		--backend-store-uri sqlite:///$(CURDIR)/mlflow.db

# Clients anywhere upload artifacts through the server (--serve-artifacts) into SERVER_ARTIFACTS.
mlflow-server: $(STAMP)
	$(BIN)/mlflow server --host $(SERVER_HOST) --port $(SERVER_PORT) \
		--backend-store-uri '$(SERVER_STORE)' \
		--serve-artifacts --artifacts-destination '$(SERVER_ARTIFACTS)'

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

verify-repro: $(STAMP)
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m scripts.verify_repro

exp: $(STAMP)
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m scripts.presets run $(PRESET)

bench: $(STAMP)
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/dvc repro download
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m bench.bench

presets-table: $(STAMP)
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m scripts.presets table

predict: $(STAMP)
	$(BIN)/python -m stages.predict $(IMAGES)

real-use: $(STAMP)
	$(BIN)/python -m scripts.real_use
