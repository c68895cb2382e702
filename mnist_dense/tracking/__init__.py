"""The records of runs: the MLflow store, run logs, provenance, publishing and the registry."""
