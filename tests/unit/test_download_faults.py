"""The download against a local HTTP server (127.0.0.1) that misbehaves on purpose; bounded in requests and time."""

import http.server
import io
import threading
import time
import zipfile

import pytest

from chargpt.data.config import DataConfig
from chargpt.data.corpus import download_corpus
from chargpt.errors import DataError

PAYLOAD = b"<page>byte-level text</page>\n" * 500


def zipped() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("enwik8", PAYLOAD)
    return buf.getvalue()


class Misbehaving(http.server.BaseHTTPRequestHandler):
    hits: dict[str, int] = {}

    def log_message(self, *args):
        pass

    def do_GET(self):
        n = self.hits[self.path] = self.hits.get(self.path, 0) + 1
        body = zipped()
        if self.path == "/500.zip" or (self.path == "/flaky.zip" and n == 1):
            return self.send_error(500, "Internal Server Error")
        if self.path == "/slow.zip":
            time.sleep(1.5)  # longer than the client's timeout
        if self.path == "/html.zip":
            body = b"<html><body>Please log in</body></html>"
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            return self.wfile.write(body)
        self.send_response(200)
        self.send_header("Content-Type", "application/zip")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.path == "/short.zip":
            body = body[: len(body) // 2]  # then close: fewer bytes than announced
            self.close_connection = True
        self.wfile.write(body)


@pytest.fixture
def server():
    Misbehaving.hits = {}
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Misbehaving)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def download(url, tmp_path, retries=2):
    return download_corpus(
        DataConfig(url=url, checksums=None, retries=retries, timeout_s=0.5),
        tmp_path / "c.bin",
        tmp_path / "c.json",
        backoff_s=0.01,
    )


@pytest.mark.parametrize(
    "path, message, attempts",
    [
        ("/500.zip", "download failed after 3 attempts: HTTP 500", 3),
        ("/slow.zip", "download failed after 3 attempts: .*timed out", 3),
        ("/short.zip", "download failed after 3 attempts: received \\d+ of \\d+ bytes", 3),
        ("/html.zip", "expected a zip archive, the server sent 'text/html; charset=utf-8'", 1),
    ],
)
def test_misbehaving_server_gives_one_clear_error_and_no_output(server, tmp_path, path, message, attempts):
    with pytest.raises(DataError, match=f"^{server}{path}: {message}"):
        download(server + path, tmp_path)
    assert Misbehaving.hits[path] == attempts
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # not even a temporary file


def test_a_transient_failure_is_retried_and_then_succeeds(server, tmp_path):
    download(server + "/flaky.zip", tmp_path)
    assert Misbehaving.hits["/flaky.zip"] == 2 and (tmp_path / "c.bin").read_bytes() == PAYLOAD
