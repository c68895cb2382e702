"""Serving a model: image file to digit, and the model MLflow logs and serves."""
