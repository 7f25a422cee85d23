"""The download against a local HTTP server (127.0.0.1) that misbehaves on purpose; bounded in requests and time."""

import http.server
import io
import re
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
        if self.path in ("/endless", "/trickle"):  # no Content-Length: the body ends when the connection closes
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.end_headers()
            self.close_connection = True
            try:
                for _ in range(100_000 if self.path == "/endless" else 50):  # a trickle of 5 s
                    self.wfile.write(b"x" * (65536 if self.path == "/endless" else 1))
                    self.wfile.flush()
                    if self.path == "/trickle":
                        time.sleep(0.1)  # each read well within the timeout, the whole never done
            except OSError:  # the client hung up
                pass
            return
        if self.path == "/huge.zip":
            self.send_response(200)
            self.send_header("Content-Type", "application/zip")
            self.send_header("Content-Length", str(10**12))
            self.end_headers()
            return
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


def bounded(url, tmp_path, **data):
    return download_corpus(
        DataConfig(**{"url": url, "checksums": None, "retries": 2, "timeout_s": 2, "format": "raw", **data}),
        tmp_path / "c.bin",
        tmp_path / "c.json",
        backoff_s=0.01,
    )


def test_an_endless_response_stops_at_data_max_bytes_and_is_not_retried(server, tmp_path):
    started = time.monotonic()
    with pytest.raises(DataError, match=r"/endless: the download exceeds 1,000,000 bytes \(data.max_bytes\)"):
        bounded(server + "/endless", tmp_path, max_bytes=1_000_000)
    assert Misbehaving.hits["/endless"] == 1 and time.monotonic() - started < 10
    assert list(tmp_path.iterdir()) == []


def test_a_size_announced_over_the_limit_is_refused_before_any_byte(server, tmp_path):
    with pytest.raises(DataError, match=r"announces 1,000,000,000,000 bytes, over 4,294,967,296 \(data.max_bytes\)"):
        bounded(server + "/huge.zip", tmp_path, format="zip")
    assert list(tmp_path.iterdir()) == []


def test_a_trickling_server_meets_the_total_deadline(server, tmp_path):
    started = time.monotonic()
    with pytest.raises(DataError, match=r"/trickle: the download is still unfinished after data.deadline_s \(1 s"):
        bounded(server + "/trickle", tmp_path, deadline_s=1)
    assert time.monotonic() - started < 5 and list(tmp_path.iterdir()) == []


def test_a_decompression_bomb_stops_at_the_size_the_checksums_give_or_max_bytes(tmp_path):
    import bz2

    from chargpt.data.config import Checksums

    bomb = tmp_path / "bomb.bz2"
    bomb.write_bytes(bz2.compress(bytes(20_000_000)))  # 20 MB of zeros in a few KB
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(DataError, match=r"the unpacked corpus exceeds 1,000,000 bytes \(data.max_bytes\)"):
        bounded(str(bomb), out, format="bz2", max_bytes=1_000_000)
    sizes = Checksums(size=5_000_000)
    with pytest.raises(DataError, match=r"exceeds 5,000,000 bytes \(the size data.checksums gives\)"):
        download_corpus(DataConfig(url=str(bomb), checksums=sizes), out / "c.bin", out / "c.json")
    assert list(out.iterdir()) == []


def zip_with(flags: int = 0, method: int | None = None) -> bytes:
    """A zip whose one member is marked encrypted, or declares a compression method zipfile cannot unpack: the
    fields patched in its local header (flags at offset 6, method at 8) and its central directory entry (8, 10)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("enwik8", PAYLOAD)
    data = bytearray(buf.getvalue())
    central = data.index(b"PK\x01\x02")
    for offset, value in ((8, method),) if method is not None else ((6, flags),):
        value = value if offset == 8 else int.from_bytes(data[6:8], "little") | value
        data[offset : offset + 2] = value.to_bytes(2, "little")  # the central entry's field is 2 bytes further on
        data[central + offset + 2 : central + offset + 4] = value.to_bytes(2, "little")
    return bytes(data)


@pytest.mark.parametrize(
    "archive, said",
    [
        (zip_with(flags=0x1), "the archive's member 'enwik8' is encrypted"),
        (zip_with(method=99), "the archive's member 'enwik8' uses zip compression method 99"),
    ],
)
def test_an_encrypted_or_unsupported_zip_member_is_one_line(tmp_path, archive, said):
    path = tmp_path / "in.zip"
    path.write_bytes(archive)
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(DataError, match=re.escape(said)):
        download_corpus(DataConfig(url=str(path), checksums=None), out / "c.bin", out / "c.json")
    assert list(out.iterdir()) == []
