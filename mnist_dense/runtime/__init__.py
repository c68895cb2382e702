"""The process a stage or command runs in: kernel path, quiet start-up, one-line errors."""
