"""The team's `mlflow server`, asking who you are: MLflow's own authentication (`--app-name
basic-auth`), an admin and one team user with generated passwords, everyone else read-only.

Every secret reaches the server through its environment (readable by its own user only), never
its command line: the store URI with the database password, the S3 keys, the admin password,
the session-signing key. The users live in an SQLite file in the stack's folder.
"""

import configparser
import io
import os
from pathlib import Path

from mlflow.utils.rest_utils import MlflowHostCreds, http_request, verify_rest_response

ADMIN, TEAM_USER = "admin", "team"
USERS_API = "/api/2.0/mlflow/users"  # the basic-auth app's routes (mlflow.server.auth.routes)


def auth_config(folder: Path) -> str:
    """The basic-auth app's configuration (MLFLOW_AUTH_CONFIG_PATH): users in folder's
    SQLite file; a user reads what others made, and manages what they make themselves."""
    config = configparser.ConfigParser()
    config["mlflow"] = {
        "default_permission": "READ",
        "database_uri": f"sqlite:///{folder / 'mlflow-users.db'}",
        "admin_username": ADMIN,
        "authorization_function": "mlflow.server.auth:authenticate_request_basic_auth",
    }
    text = io.StringIO()
    config.write(text)
    return text.getvalue()


def environment(
    backend: str, config: Path, admin_password: str, secret_key: str, s3: dict[str, str]
) -> dict[str, str]:
    """The server's environment: its stores, its users' configuration, no telemetry, no job
    runners (GenAI jobs this project has none of; they double the start-up)."""
    telemetry = os.environ.get("MNIST_TELEMETRY") == "1"
    return s3 | {
        "MLFLOW_BACKEND_STORE_URI": backend,
        "MLFLOW_ARTIFACTS_DESTINATION": "s3://mlflow/artifacts",
        "MLFLOW_AUTH_CONFIG_PATH": str(config),
        "MLFLOW_AUTH_ADMIN_PASSWORD": admin_password,
        "MLFLOW_FLASK_SERVER_SECRET_KEY": secret_key,
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
        "MLFLOW_DISABLE_TELEMETRY": "false" if telemetry else "true",
    }


def command(mlflow: str, port: int) -> list[str]:
    return [
        mlflow, "server", "--app-name", "basic-auth", "--serve-artifacts",
        "--host", "127.0.0.1", "--port", str(port), "--workers", "2",
    ]  # fmt: skip


def ensure_user(url: str, admin_password: str, username: str, password: str) -> None:
    """Create `username` unless the server has it (team-up runs again and again). Through
    MLflow's REST helpers as the admin: its AuthServiceClient would import the whole server app
    into team-up, which would then take seconds longer to start."""
    admin = MlflowHostCreds(url, username=ADMIN, password=admin_password)
    found = http_request(admin, f"{USERS_API}/get", "GET", params={"username": username})
    if found.status_code == 404:  # RESOURCE_DOES_NOT_EXIST
        form = {"username": username, "password": password}
        created = http_request(admin, f"{USERS_API}/create", "POST", json=form)
        verify_rest_response(created, f"{USERS_API}/create")
    else:
        verify_rest_response(found, f"{USERS_API}/get")
