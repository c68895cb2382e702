"""Tooling for the commands and the tests, not for the pipeline: running processes and copies
of the project, the servers of the team stack, the DVC queue, a headless browser."""
