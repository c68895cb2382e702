"""Commands users run: predict, presets, verify-repro, reproduce, real-use, ... (Makefile)."""
