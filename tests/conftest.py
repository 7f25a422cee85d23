import copy
import http.server
import threading
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO.parent / "shared" / "data" / "enwiki-sample.xml.bz2"

TINY_RUN = {
    "model": {"n_layer": 2, "d_model": 32, "n_head": 2, "d_ff": 64, "context": 32, "dropout": 0.0},
    "optimizer": {"name": "adamw", "weight_decay": 1.0e-4},
    "schedule": {"lr_min": 1.0e-4, "lr_max": "auto"},
    "lr_range_test": {"lr_start": 1.0e-5, "lr_end": 1.0, "iterations": 20, "skip_start": 2, "smoothing": 0.8},
    "train": {"iterations": 30, "batch_size": 4, "eval_interval": 10, "eval_batches": 2, "log_interval": 5},
    "eval": {"batch_size": 16},
}


@pytest.fixture
def params() -> dict:
    """The repo's params.yaml, parsed: tests mutate a copy."""
    return copy.deepcopy(yaml.safe_load((REPO / "params.yaml").read_text()))


def tiny_text(n: int = 60_000, seed: int = 0) -> bytes:
    """Generated, learnable bytes: words from a small vocabulary with markup, newlines and non-ASCII."""
    import random

    rng = random.Random(seed)
    words = ["the", "byte", "model", "<page>", "</page>", "café", "1cycle", "[[link]]", "\n", "==", "of", "and"]
    out = bytearray()
    while len(out) < n:
        out += rng.choice(words).encode() + b" "
    return bytes(out[:n])


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture
def http_dir(tmp_path):
    """Serve a directory on 127.0.0.1 (random free port); yields (directory, base URL)."""
    root = tmp_path / "www"
    root.mkdir()
    handler = lambda *a, **kw: _QuietHandler(*a, directory=str(root), **kw)  # noqa: E731
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
