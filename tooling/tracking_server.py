"""The team's `mlflow server`, asking who you are: MLflow's own authentication (`--app-name
basic-auth`), an admin and one account per person (tooling/team_people.py) with generated
passwords. Each person may log runs in the team's experiment and register versions of its
model (EDIT); the release role MANAGEs both, and only it moves an alias (tooling/release_guard.py).
Everyone reads everything else; a person manages what they create themselves.

Every secret reaches the server through its environment (readable by its own user only), never
its command line: the store URI with the database password, the S3 keys, the admin password,
the session-signing key. The users live in an SQLite file in the stack's folder.
"""

import configparser
import io
import os
from pathlib import Path

from mlflow.utils.rest_utils import MlflowHostCreds, http_request, verify_rest_response

ADMIN = "admin"
USERS_API = "/api/2.0/mlflow/users"  # the basic-auth app's routes (mlflow.server.auth.routes)
GRANTS_API = "/api/3.0/mlflow/users/permissions"
ROLES_FILE = "roles.json"  # in the stack's folder: who has which role, for the release guard


def auth_config(folder: Path) -> str:
    """The basic-auth app's configuration (MLFLOW_AUTH_CONFIG_PATH): users in folder's
    SQLite file; a user reads what others made, and manages what they make themselves;
    requests authenticated by MLflow's basic auth behind the release guard."""
    config = configparser.ConfigParser()
    config["mlflow"] = {
        "default_permission": "READ",
        "database_uri": f"sqlite:///{folder / 'mlflow-users.db'}",
        "admin_username": ADMIN,
        "authorization_function": "tooling.release_guard:authenticate",
    }
    text = io.StringIO()
    config.write(text)
    return text.getvalue()


def environment(
    backend: str, config: Path, admin_password: str, secret_key: str, s3: dict[str, str]
) -> dict[str, str]:
    """The server's environment: its stores, its users' configuration and roles (beside the
    configuration: the release guard reads them), no telemetry, no job runners (GenAI jobs this
    project has none of; they double the start-up)."""
    telemetry = os.environ.get("MNIST_TELEMETRY") == "1"
    return s3 | {
        "MLFLOW_BACKEND_STORE_URI": backend,
        "MLFLOW_ARTIFACTS_DESTINATION": "s3://mlflow/artifacts",
        "MLFLOW_AUTH_CONFIG_PATH": str(config),
        "MNIST_TEAM_ROLES": str(config.parent / ROLES_FILE),
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


def _admin(url: str, admin_password: str) -> MlflowHostCreds:
    return MlflowHostCreds(url, username=ADMIN, password=admin_password)


def ensure_user(url: str, admin_password: str, username: str, password: str) -> None:
    """Create `username` with `password`, or set its password to it (the password file is the
    truth: team-up runs again and again). Through MLflow's REST helpers as the admin: its
    AuthServiceClient would import the whole server app into team-up, which would then take
    seconds longer to start."""
    admin = _admin(url, admin_password)
    found = http_request(admin, f"{USERS_API}/get", "GET", params={"username": username})
    form = {"username": username, "password": password}
    if found.status_code == 404:  # RESOURCE_DOES_NOT_EXIST
        created = http_request(admin, f"{USERS_API}/create", "POST", json=form)
        verify_rest_response(created, f"{USERS_API}/create")
    else:
        verify_rest_response(found, f"{USERS_API}/get")
        updated = http_request(admin, f"{USERS_API}/update-password", "PATCH", json=form)
        verify_rest_response(updated, f"{USERS_API}/update-password")


def remove_users_but(url: str, admin_password: str, kept: set[str]) -> list[str]:
    """Delete every account that is neither an admin nor in `kept` (someone taken off the
    list, or the shared `team` account of stacks before per-person accounts); their names."""
    admin = _admin(url, admin_password)
    listed = http_request(admin, f"{USERS_API}/list", "GET")
    users = verify_rest_response(listed, f"{USERS_API}/list").json()["users"]
    removed = [u["username"] for u in users if not u["is_admin"] and u["username"] not in kept]
    for username in removed:
        gone = http_request(admin, f"{USERS_API}/delete", "DELETE", json={"username": username})
        verify_rest_response(gone, f"{USERS_API}/delete")
    return removed


def grant(
    url: str, admin_password: str, username: str, kind: str, resource: str, permission: str
) -> None:
    """Give `username` exactly `permission` on one resource (kind `experiment`: its id;
    `registered_model`: its name), replacing what it had there (MANAGE as its creator)."""
    admin = _admin(url, admin_password)
    target = {"username": username, "resource_type": kind, "resource_id": resource}
    http_request(admin, f"{GRANTS_API}/revoke", "POST", json=target)  # none yet: an error
    granted = http_request(
        admin, f"{GRANTS_API}/grant", "POST", json=target | {"permission": permission}
    )
    verify_rest_response(granted, f"{GRANTS_API}/grant")
