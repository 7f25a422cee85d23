"""The `chargpt` MLflow app (`mlflow ui --app-name chargpt`, which `chargpt ui` runs): MLflow's own server, whose UI
page first seeds the browser with the project's defaults, so that MLflow's home and an experiment's runs table open
on BPC however the user gets there, not only from the links `chargpt ui` prints.

MLflow's UI keeps its mode and each experiment's table state in the browser's localStorage, under keys of its own
making, and offers no server-side default. The seeding script (mlflow_ui_defaults.js) writes those keys where the
browser has none of its own yet. tests/unit/test_lock.py checks that the installed UI still reads them.
"""

from __future__ import annotations

import json
import logging
import os
from importlib.resources import files

from chargpt.tracking.view import stored_view

log = logging.getLogger(__name__)

# MLflow's useLocalStorage hook stores under `${key}_v${version}`. Set where a browser has no value yet: the
# model-training mode (the UI opens in GenAI mode otherwise), and the LLM assistant's panel closed until asked for
# (it opens on a first visit otherwise, and covers a third of the runs table).
PREFERENCES = [
    {"key": "mlflow.workflowType_v1", "value": "machine_learning"},
    {"key": "mlflow.assistant.fab.autoOpenedOnFirstLoad_v1", "value": True},
]
# MLflow's LocalStorageUtils: "MLflowLocalStorage-<version>-<component>-<id>-<key>", id = JSON of the sorted ids.
STATE_KEY = "MLflowLocalStorage-1.1-ExperimentPage-{ids}-ReactComponentState"
SEEDED_KEY = "chargpt.seededColumns.{experiment_id}"  # the columns this app last seeded, per experiment


def experiment_state_key(experiment_id: str) -> str:
    return STATE_KEY.format(ids=json.dumps([experiment_id], separators=(",", ":")))


def saved_view_entries(client) -> list[dict]:
    """For each experiment holding the saved view, the localStorage entries of its table state."""
    out = []
    for experiment in client.search_experiments():
        if (state := stored_view(experiment.tags)) is not None:
            eid = experiment.experiment_id
            seeded = SEEDED_KEY.format(experiment_id=eid)
            out.append({"key": experiment_state_key(eid), "seededKey": seeded, "state": state})
    return out


def seed_script(views: list[dict]) -> str:
    """The <script> element: the seeding function, then its call on this store's views."""
    source = files("chargpt.tracking").joinpath("mlflow_ui_defaults.js").read_text()
    # JSON inside <script>: "</" would end the element early
    call = f"seedMlflowUi(window.localStorage, {json.dumps(PREFERENCES)}, {json.dumps(views)});".replace("</", "<\\/")
    return f"<script>\n{source}\n{call}\n</script>"


def add_seed_script(response):
    """Flask after_request: put the seeding script at the top of the UI's page (MLflow's `serve` route)."""
    from flask import request
    from mlflow.server import BACKEND_STORE_URI_ENV_VAR
    from mlflow.tracking import MlflowClient

    if request.endpoint != "serve" or response.status_code != 200 or response.mimetype != "text/html":
        return response
    try:
        views = saved_view_entries(MlflowClient(tracking_uri=os.environ.get(BACKEND_STORE_URI_ENV_VAR)))
    except Exception as e:  # the UI must still load where the store cannot be read for its defaults
        log.warning("chargpt: MLflow UI defaults not seeded: %s", e)
        return response
    response.direct_passthrough = False  # send_from_directory streams the file; we rewrite it
    html = response.get_data(as_text=True)
    if "<head>" not in html:
        log.warning("chargpt: MLflow's index.html has no <head>; UI defaults not seeded")
        return response
    response.set_data(html.replace("<head>", "<head>" + seed_script(views), 1))
    # the page now depends on the store: no cached copy with an older view
    response.headers["Cache-Control"] = "no-store"
    response.headers.pop("ETag", None)
    response.headers.pop("Last-Modified", None)
    return response


def create_app():
    """MLflow's app factory protocol (as its basic-auth app): the Flask app, wrapped in FastAPI under uvicorn."""
    from mlflow.environment_variables import _MLFLOW_SGI_NAME
    from mlflow.server import app

    if add_seed_script not in app.after_request_funcs.get(None, []):  # one MLflow app per process: hook it once
        app.after_request(add_seed_script)
    if _MLFLOW_SGI_NAME.get() == "uvicorn":
        from mlflow.server.fastapi_app import create_fastapi_app

        return create_fastapi_app(app)
    return app
