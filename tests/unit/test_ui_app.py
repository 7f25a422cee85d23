"""The chargpt MLflow app (chargpt/tracking/ui_app.py): MLflow's own UI page, served with a script that seeds a new
browser with the project's saved view. The page comes from MLflow's real Flask app over a real SQLite store; the
script it carries runs in QuickJS (the `quickjs` package, a dev dependency: no Node.js needed) against a stand-in for
the browser's localStorage."""

import json
import os
import re
from importlib.metadata import entry_points

import pytest
import quickjs
from conftest import seeded_views
from mlflow.tracking import MlflowClient

from chargpt.errors import TrackingError
from chargpt.tracking import ui, ui_app
from chargpt.tracking.view import store_view

VIEW = {
    "searchFilter": "tags.dvc_stage LIKE 'train@%' AND tags.note != '</script>'",  # "</" must not end the element
    "orderByKey": "metrics.`test_bpc`",
    "orderByAsc": True,
    "selectedColumns": ["metrics.`val_bpc`", "metrics.`test_bpc`", "params.`schedule.name`"],
    "columnOrder": ["metrics.`val_bpc`", "metrics.`test_bpc`", "params.`schedule.name`"],
}
WORKFLOW, ASSISTANT = "mlflow.workflowType_v1", "mlflow.assistant.fab.autoOpenedOnFirstLoad_v1"


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """(experiment id, the UI page as served, the headers, a static file's body) from the chargpt app."""
    uri = f"sqlite:///{tmp_path_factory.mktemp('store') / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    experiment_id = client.create_experiment("chargpt")
    client.create_experiment("without a view")  # no saved view: nothing to seed for it
    store_view(client, experiment_id, VIEW)
    mp = pytest.MonkeyPatch()
    mp.setenv("_MLFLOW_SERVER_FILE_STORE", uri)  # what `mlflow ui --backend-store-uri` gives its workers
    mp.delenv("_MLFLOW_SGI_NAME", raising=False)  # not under uvicorn: the Flask app itself
    try:
        app = ui_app.create_app()
        assert ui_app.create_app() is app  # a second call hooks nothing twice
        with app.test_client() as http:
            page = http.get("/")
            static = http.get("/static-files/manifest.json")
        yield experiment_id, page.get_data(as_text=True), page.headers, static.get_data(as_text=True)
    finally:
        mp.undo()


def run_script(page: str, storage: dict[str, str]) -> dict[str, str]:
    """Run the page's seeding script in a JavaScript engine (QuickJS) on a localStorage holding `storage`; return
    what it then holds."""
    (script,) = re.findall(r"<script>(.*?)</script>", page, flags=re.S)
    engine = quickjs.Context()
    engine.set_time_limit(10)  # seconds: a script that loops is a failure, not a hang
    harness = f"""
        var storage = new Map(Object.entries({json.dumps(storage)}));
        var localStorage = {{
            getItem: function (k) {{ return storage.has(k) ? storage.get(k) : null; }},
            setItem: function (k, v) {{ storage.set(k, String(v)); }},
        }};
        new Function("window", {json.dumps(script)})({{localStorage: localStorage}});
        JSON.stringify(Object.fromEntries(storage));
    """
    return json.loads(engine.eval(harness))


def test_the_ui_page_carries_the_seeding_script_ahead_of_mlflows_bundle_and_is_not_cached(served):
    _, page, headers, static = served
    assert page.startswith('<!doctype html><html lang="en"><head><script>\n')
    assert page.index("seedMlflowUi(window.localStorage") < page.index('src="static-files/static/js/main.')
    assert page.count("</script>") == 2  # the seed's element and MLflow's bundle: the view's "</" is escaped
    key, seeded = ui_app.experiment_state_key(served[0]), f"chargpt.seededColumns.{served[0]}"
    assert seeded_views(page) == [{"key": key, "seededKey": seeded, "state": VIEW}]  # the other has no view
    assert headers["Cache-Control"] == "no-store" and "ETag" not in headers
    assert "seedMlflowUi" not in static  # only the page is rewritten


def test_a_new_browser_opens_in_model_training_mode_on_the_saved_view(served):
    experiment_id, page, *_ = served
    after = run_script(page, {})
    assert json.loads(after[WORKFLOW]) == "machine_learning" and json.loads(after[ASSISTANT]) is True
    key = ui_app.experiment_state_key(experiment_id)
    assert key == f'MLflowLocalStorage-1.1-ExperimentPage-["{experiment_id}"]-ReactComponentState'
    assert json.loads(after[key]) == VIEW  # the table's columns, sort and filter, exactly the saved view
    assert len([k for k in after if k.startswith("MLflowLocalStorage-")]) == 1  # the experiment without one: none


def test_what_a_user_chose_stays(served):
    experiment_id, page, *_ = served
    key = ui_app.experiment_state_key(experiment_id)
    own = json.dumps({"selectedColumns": ["metrics.`train_loss`"], "orderByKey": "attributes.start_time"})
    before = {WORKFLOW: json.dumps("genai"), ASSISTANT: "false", key: own}
    assert run_script(page, before) == before


def test_mlflows_default_columns_or_an_older_seed_get_the_current_view(served):
    experiment_id, page, *_ = served
    key, seeded = ui_app.experiment_state_key(experiment_id), f"chargpt.seededColumns.{experiment_id}"
    # MLflow's defaults (a visit before anything was trained): no metric column; the rest of the state stays
    defaults = {"selectedColumns": ["attributes.`Source`", "attributes.`Models`"], "runsPinned": ["r1"]}
    after = json.loads(run_script(page, {key: json.dumps(defaults)})[key])
    assert after == VIEW | {"runsPinned": ["r1"]}
    # the columns an older view seeded, untouched since: the view with the params that differ now
    old = ["metrics.`val_bpc`"]
    after = run_script(page, {key: json.dumps({"selectedColumns": old}), seeded: json.dumps(old)})
    assert json.loads(after[key])["selectedColumns"] == VIEW["selectedColumns"]
    assert json.loads(after[seeded]) == VIEW["selectedColumns"]
    # seeded once, then changed by the user: theirs
    mine = {"selectedColumns": ["metrics.`val_bpc`", "metrics.`train_loss`"]}
    before = {key: json.dumps(mine), seeded: json.dumps(old)}
    assert run_script(page, before) == before | {WORKFLOW: '"machine_learning"', ASSISTANT: "true"}


def test_a_state_the_browser_cannot_parse_is_left_to_mlflow(served):
    experiment_id, page, *_ = served
    key = ui_app.experiment_state_key(experiment_id)
    after = run_script(page, {key: "{not json"})
    assert after[key] == "{not json" and json.loads(after[WORKFLOW]) == "machine_learning"


def test_chargpt_ui_prints_the_links_and_serves_mlflow_as_the_chargpt_app(monkeypatch, tmp_path, capsys):
    (app,) = [e for e in entry_points(group="mlflow.app") if e.name == ui.UI_APP]
    assert app.value == "chargpt.tracking.ui_app:create_app"  # what `mlflow ui --app-name chargpt` loads
    monkeypatch.setattr(ui, "publish_view", lambda root, uri: "7")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///store.db")
    monkeypatch.delenv(ui.NO_JOBS[0], raising=False)  # restored after the test
    ran = []

    def execvp(file, args):
        ran.append(args)
        raise SystemExit(0)

    monkeypatch.setattr(ui.os, "execvp", execvp)
    with pytest.raises(SystemExit):
        ui.ui_main(["--repo", str(tmp_path), "--port", "5123"])
    printed = capsys.readouterr().out
    assert "runs by test BPC:  http://127.0.0.1:5123/#/experiments/7/runs?viewStateShareKey=compare" in printed
    assert "trained models:    http://127.0.0.1:5123/#/experiments/7/models" in printed
    assert ran[0][1:] == ["-m", "mlflow", "ui", "--app-name", "chargpt", "--backend-store-uri", "sqlite:///store.db",
                          "--workers", "1", "--host", "127.0.0.1", "--port", "5123"]  # fmt: skip
    assert os.environ["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] == "false"  # no GenAI job runner beside it
    # an environment installed before the app existed: what to do, before MLflow's own "Failed to find app"
    monkeypatch.setattr(ui, "entry_points", lambda group: [])
    with pytest.raises(TrackingError, match=r"no 'chargpt' app .* reinstall the project: pip install -e \."):
        ui.ui_main(["--repo", str(tmp_path)])


def test_a_store_that_cannot_be_read_leaves_mlflows_page_as_it_is(served, monkeypatch, tmp_path, caplog):
    app = ui_app.create_app()
    (tmp_path / "mlflow.db").write_bytes(b"not a database")
    monkeypatch.setenv("_MLFLOW_SERVER_FILE_STORE", f"sqlite:///{tmp_path / 'mlflow.db'}")
    with app.test_client() as http:
        page = http.get("/").get_data(as_text=True)
    assert "seedMlflowUi" not in page and 'src="static-files/static/js/main.' in page  # MLflow's UI, as it ships
    assert "MLflow UI defaults not seeded" in caplog.text


def test_with_a_tracking_server_chargpt_ui_prints_its_links_and_starts_nothing(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(ui, "publish_view", lambda root, uri: "7")
    monkeypatch.setattr(ui.store, "check_reachable", lambda uri: None)  # (the server answers)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://alice:s3cret@mlflow.example:5000/")
    monkeypatch.setattr(ui.os, "execvp", lambda *a: pytest.fail(f"started {a}"))
    ui.ui_main(["--repo", str(tmp_path)])
    printed = capsys.readouterr().out
    assert "runs by test BPC:  http://***@mlflow.example:5000/#/experiments/7/runs?viewStateShareKey=compare" in printed
    assert "s3cret" not in printed and "alice" not in printed  # the links are for sharing: no credentials
    assert "`mlflow server --app-name chargpt`" in printed


def test_chargpt_ui_on_a_taken_port_fails_in_one_line_and_starts_nothing(monkeypatch, tmp_path):
    import socket

    monkeypatch.setattr(ui, "publish_view", lambda root, uri: "7")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///store.db")
    monkeypatch.setattr(ui.os, "execvp", lambda *a: pytest.fail(f"started {a}"))
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(TrackingError, match=f"cannot serve on 127.0.0.1:{port} .*; pass another --port"):
            ui.ui_main(["--repo", str(tmp_path), "--port", str(port)])
    with pytest.raises(SystemExit) as usage:
        ui.ui_main(["--repo", str(tmp_path), "--port", "70000"])
    assert usage.value.code == 2


def test_chargpt_ui_on_an_unreachable_server_fails_within_seconds(monkeypatch, tmp_path):
    import socket
    import time

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{s.getsockname()[1]}")
    monkeypatch.setattr(ui, "publish_view", lambda root, uri: pytest.fail("read the store"))
    started = time.monotonic()
    with pytest.raises(TrackingError, match="is unreachable"):
        ui.ui_main(["--repo", str(tmp_path)])
    assert time.monotonic() - started < 10


def test_chargpt_ui_warns_when_it_serves_beyond_this_machine(monkeypatch, tmp_path, caplog):
    import socket

    monkeypatch.setattr(ui, "publish_view", lambda root, uri: "7")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///store.db")
    monkeypatch.delenv(ui.NO_JOBS[0], raising=False)  # restored after the test
    ran = []
    monkeypatch.setattr(ui.os, "execvp", lambda file, args: ran.append(args))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = str(s.getsockname()[1])
    ui.ui_main(["--repo", str(tmp_path), "--host", "0.0.0.0", "--port", port])
    assert "serving on 0.0.0.0: MLflow's server has no authentication" in caplog.text and ran
    caplog.clear()
    ui.ui_main(["--repo", str(tmp_path), "--port", port])
    assert "no authentication" not in caplog.text
