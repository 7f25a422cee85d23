"""Credentials in MLFLOW_TRACKING_URI never leave it: every message, link and tag shows the URI redacted, and the
reachability check sends them as HTTP basic auth (as MLflow does), so a server behind a password is reachable."""

import base64
import http.server
import threading

import pytest

from chargpt.errors import TrackingError
from chargpt.tracking import connection as store
from chargpt.tracking.tags import run_tags


@pytest.mark.parametrize(
    "uri, shown",
    [
        ("http://alice:s3cret@mlflow.example:5000/", "http://***@mlflow.example:5000/"),
        ("https://token@host/path?x=1", "https://***@host/path?x=1"),
        ("https://host/api?access_token=abc&run=7&API_KEY=k", "https://host/api?access_token=***&run=7&API_KEY=***"),
        ("http://mlflow.example:5000", "http://mlflow.example:5000"),
        ("sqlite:////work/p/mlflow.db?timeout=60", "sqlite:////work/p/mlflow.db?timeout=60"),
    ],
)
def test_redact(uri, shown):
    assert store.redact(uri) == shown


def test_a_message_quoting_the_uri_loses_its_credentials():
    text = "Max retries exceeded with url: http://alice:s3cret@mlflow.example:5000/api (Caused by ...)"
    assert store.redact_text(text) == text.replace("alice:s3cret@", "***@")


def serve(expected_user: str, expected_password: str):
    wanted = "Basic " + base64.b64encode(f"{expected_user}:{expected_password}".encode()).decode()

    class Health(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            ok = self.path == "/health" and self.headers.get("Authorization") == wanted
            self.send_response(200 if ok else 401)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Health)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def test_a_server_behind_a_password_is_reachable_with_the_password_in_the_uri():
    server = serve("alice", "s3c/ret")
    try:
        port = server.server_address[1]
        store.check_reachable(f"http://alice:s3c%2Fret@127.0.0.1:{port}")  # URL-encoded, as a URI must hold it
        with pytest.raises(TrackingError) as e:
            store.check_reachable(f"http://alice:wrong@127.0.0.1:{port}")
        assert f"http://***@127.0.0.1:{port} is unreachable" in str(e.value) and "wrong" not in str(e.value)
    finally:
        server.shutdown()


def test_the_unreachable_error_and_the_fallback_tag_show_no_password(monkeypatch, tmp_path, caplog):
    import torch

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://alice:s3cret@127.0.0.1:9/")  # the discard port: refused
    with pytest.raises(TrackingError) as e:
        store.connect("fail")
    assert "http://***@127.0.0.1:9/ is unreachable" in str(e.value) and "s3cret" not in str(e.value)
    fallen_back = store.connect("local")  # the fallback goes on to the local store, recording where from
    assert fallen_back.uri.startswith(f"sqlite:///{tmp_path.resolve()}/mlflow.db")
    assert fallen_back.fallback_from == "http://***@127.0.0.1:9/"
    assert (
        run_tags("r", "train@r", torch.device("cpu"), fallback_from=fallen_back.fallback_from)["tracking_fallback_from"]
        == "http://***@127.0.0.1:9/"
    )
    assert "s3cret" not in caplog.text
