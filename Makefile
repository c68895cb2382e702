# make run   - set up .venv (when missing or requirements.txt changed), then run the pipeline
# make test  - the test suite
# make ui    - MLflow UI on http://127.0.0.1:5000 for this project's runs
# make lint  - ruff
# make verify-repro - re-run preprocess, train, evaluate in a scratch copy; compare with dvc.lock

VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PYTHON ?= python3
UI_PORT ?= 5000

.PHONY: run test ui lint venv verify-repro

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

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

verify-repro: $(STAMP)
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python scripts/verify_repro.py
