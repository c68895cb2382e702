"""The team's MLflow server: only the release role moves an alias (imported by the server).

MLflow's basic-auth app lets whoever may update a registered model (EDIT) also set and delete
its aliases and rename it, and registering a version needs that same EDIT. So permissions alone
cannot let members register versions without also letting them move `champion`, whose version
the served model runs. This module is the server's `authorization_function` (its auth config,
tooling/tracking_server.py): it authenticates as MLflow's own basic auth does, then refuses
(403) setting or deleting an alias and renaming a registered model to anyone but the people
with the role `release` in MNIST_TEAM_ROLES (tooling/team_people.py) and the server's admins.
The file is read on each such request, so a changed list applies at the next `team-up`; when
it cannot be read, no one but an admin may move an alias (closed, not open).
"""

import json
import os
from pathlib import Path

from flask import Response, make_response, request
from werkzeug.datastructures import Authorization

# The routes (REST and the UI's ajax ones, under any static prefix) whose handlers move a
# release: the alias, and a rename, which could swap another model in under the name.
GUARDED = ("/mlflow/registered-models/alias", "/mlflow/registered-models/rename")
ROLES = "MNIST_TEAM_ROLES"


def release_people() -> set[str]:
    try:
        return set(json.loads(Path(os.environ[ROLES]).read_text())["release"])
    except (KeyError, OSError, ValueError, TypeError):
        return set()


def moves_a_release() -> bool:
    """Whether the request goes to a guarded route's handler (the rule Flask matched: a path
    it would redirect or 404 reaches no handler)."""
    rule = request.url_rule.rule if request.url_rule is not None else ""
    return request.method in ("POST", "PATCH", "DELETE") and rule.endswith(GUARDED)


def authenticate() -> Authorization | Response:
    from mlflow.server import auth

    who = auth.authenticate_request_basic_auth()
    if not isinstance(who, Authorization) or not moves_a_release():
        return who
    if who.username in release_people() or auth.store.get_user(who.username).is_admin:
        return who
    refused = make_response(
        f"Permission denied: {who.username} is not in the release role; only it moves an "
        "alias or renames a registered model (docs/team.md)"
    )
    refused.status_code = 403
    return refused
