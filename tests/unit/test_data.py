import bz2
import gzip
import hashlib
import io
import os
import zipfile

import pytest
import torch
from conftest import tiny_text

from chargpt.data.batches import BatchSampler, load_split
from chargpt.data.config import Checksums, DataConfig
from chargpt.data.corpus import download_corpus, split_corpus, split_sizes
from chargpt.errors import DataError


def sha(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


def make_zip(member: str, payload: bytes) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr(member, payload)
    return buf.getvalue()


@pytest.mark.parametrize(
    "n, expected",
    [
        (100_000_000, (90_000_000, 5_000_000, 5_000_000)),  # enwik8
        (6_089_746, (5_480_771, 304_487, 304_488)),  # the Wikipedia sample
        (1000, (900, 50, 50)),
        (7, (6, 0, 1)),
    ],
)
def test_split_sizes(n, expected):
    assert split_sizes(n, (0.9, 0.05, 0.05)) == expected


@pytest.mark.parametrize("copy_in_kernel", ["os", "unsupported", "absent"])
def test_split_concatenation_is_the_input_byte_for_byte(tmp_path, monkeypatch, copy_in_kernel):
    if copy_in_kernel == "unsupported":  # e.g. the splits on another filesystem than the corpus: copied via mmap
        monkeypatch.setattr(
            os, "copy_file_range", lambda *a: (_ for _ in ()).throw(OSError(18, "EXDEV")), raising=False
        )
    elif copy_in_kernel == "absent":  # not Linux
        monkeypatch.delattr(os, "copy_file_range", raising=False)
    payload = bytes(range(256)) * 40 + b"\x00\n\r\xff" * 100  # every byte value, NULs and newlines included
    (tmp_path / "corpus.bin").write_bytes(payload)
    meta = split_corpus(tmp_path / "corpus.bin", tmp_path / "out", (0.9, 0.05, 0.05))
    parts = [(tmp_path / "out" / f"{s}.bin").read_bytes() for s in ("train", "val", "test")]
    assert b"".join(parts) == payload
    assert [meta["splits"][s]["bytes"] for s in ("train", "val", "test")] == [len(p) for p in parts]
    assert [meta["splits"][s]["sha256"] for s in ("train", "val", "test")] == [sha(p) for p in parts]
    assert meta["source_sha256"] == sha(payload)


def test_split_refuses_a_corpus_too_small(tmp_path):
    (tmp_path / "corpus.bin").write_bytes(b"tiny")
    with pytest.raises(DataError, match="each split needs at least 2 bytes"):
        split_corpus(tmp_path / "corpus.bin", tmp_path / "out", (0.9, 0.05, 0.05))
    assert not (tmp_path / "out" / "train.bin").exists()


def test_download_zip_over_http_verifies_every_checksum(http_dir, tmp_path):
    root, base = http_dir
    payload = tiny_text(50_000)
    archive = make_zip("enwik8", payload)
    (root / "enwik8.zip").write_bytes(archive)
    sums = Checksums(
        archive_size=len(archive),
        archive_sha256=sha(archive),
        size=len(payload),
        md5=hashlib.md5(payload).hexdigest(),
        sha256=sha(payload),
    )
    info = download_corpus(
        DataConfig(url=f"{base}/enwik8.zip", checksums=sums), tmp_path / "c.bin", tmp_path / "c.json"
    )
    assert (tmp_path / "c.bin").read_bytes() == payload
    assert set(info["verified"]) == {"archive_size", "archive_sha256", "size", "md5", "sha256"}


def test_checksum_mismatch_names_expected_and_actual_and_writes_nothing(http_dir, tmp_path):
    root, base = http_dir
    payload = tiny_text(10_000)
    (root / "enwik8.zip").write_bytes(make_zip("enwik8", payload))
    wrong = "0" * 64
    with pytest.raises(DataError, match=f"corpus sha256 mismatch: expected {wrong}, got {sha(payload)}"):
        download_corpus(
            DataConfig(url=f"{base}/enwik8.zip", checksums=Checksums(sha256=wrong)),
            tmp_path / "c.bin",
            tmp_path / "c.json",
        )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["www"]


@pytest.mark.parametrize(
    "name, body, message",
    [
        ("enwik8.zip", b"<html>Service unavailable</html>", "not a valid zip archive"),
        ("enwik8.zip", None, "the archive has no member 'enwik8'"),
    ],
)
def test_bad_archives_fail_cleanly(http_dir, tmp_path, name, body, message):
    root, base = http_dir
    (root / name).write_bytes(body if body is not None else make_zip("other", b"abc"))
    with pytest.raises(DataError, match=message):
        download_corpus(DataConfig(checksums=None, url=f"{base}/{name}"), tmp_path / "c.bin", tmp_path / "c.json")
    assert not (tmp_path / "c.bin").exists() and not (tmp_path / "c.json").exists()


def test_truncated_zip_fails_cleanly(http_dir, tmp_path):
    root, base = http_dir
    (root / "enwik8.zip").write_bytes(make_zip("enwik8", tiny_text(20_000))[:-200])
    with pytest.raises(DataError, match="enwik8.zip"):
        download_corpus(DataConfig(checksums=None, url=f"{base}/enwik8.zip"), tmp_path / "c.bin", tmp_path / "c.json")
    assert not (tmp_path / "c.bin").exists()


def test_http_404_is_not_retried(http_dir, tmp_path):
    _, base = http_dir
    with pytest.raises(DataError, match=r"/missing.zip: HTTP 404"):
        download_corpus(DataConfig(url=f"{base}/missing.zip", retries=5), tmp_path / "c.bin", tmp_path / "c.json")


def test_unreachable_server_is_retried_then_named(tmp_path):
    import socket

    with socket.socket() as s:  # a port that was free a moment ago: connection refused
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/enwik8.zip"
    with pytest.raises(DataError, match=rf"{url}: download failed after 3 attempts") as err:
        download_corpus(
            DataConfig(url=url, retries=2, timeout_s=2), tmp_path / "c.bin", tmp_path / "c.json", backoff_s=0.01
        )
    assert not (tmp_path / "c.bin").exists()
    # ... and it says how to go on offline, with the sample a clone holds
    assert "dvc exp run -S data.url=samples/enwiki-sample.xml.bz2 -S data.checksums=null" in str(err.value)
    from conftest import SAMPLE

    assert SAMPLE.is_file()


@pytest.mark.parametrize("suffix, pack", [(".bz2", bz2.compress), (".gz", gzip.compress), (".txt", lambda b: b)])
def test_local_corpora_by_file_url_and_path(tmp_path, suffix, pack):
    payload = b"\xff\xfeU\x00T\x00F\x00" + tiny_text(5_000)  # UTF-16 BOM and NULs: any bytes go
    src = tmp_path / f"corpus{suffix}"
    src.write_bytes(pack(payload))
    for url in (src.as_uri(), str(src)):
        info = download_corpus(
            DataConfig(checksums=None, url=url, member=None), tmp_path / "c.bin", tmp_path / "c.json"
        )
        assert (tmp_path / "c.bin").read_bytes() == payload
        assert info["corpus"]["sha256"] == sha(payload) and info["verified"] == []


def test_a_local_corpus_that_is_not_a_regular_file_is_named_as_what_it_is(tmp_path):
    """A path that exists but is a directory, a device or a FIFO is not "no such file": each is named as it is,
    before anything is read or written."""
    os.mkfifo(tmp_path / "fifo")
    os.symlink(tmp_path / "gone", tmp_path / "dangling")
    cases = {
        str(tmp_path / "missing.txt"): "not found",
        str(tmp_path): "a directory, not a regular file",
        "/dev/zero": "a character device, not a regular file",
        (tmp_path / "fifo").as_uri(): "a FIFO (named pipe), not a regular file",
        str(tmp_path / "dangling"): "a link to a missing file",
    }
    for url, expected in cases.items():
        with pytest.raises(DataError) as refused:
            download_corpus(DataConfig(checksums=None, url=url, member=None), tmp_path / "c.bin", tmp_path / "c.json")
        assert str(refused.value) == f"{url}: {expected}"
        assert not (tmp_path / "c.bin").exists() and not (tmp_path / "c.json").exists()


def test_a_split_that_is_missing_or_not_a_file_says_which(tmp_path):
    with pytest.raises(FileNotFoundError, match="train.bin: split not found"):
        load_split(tmp_path / "train.bin")
    (tmp_path / "train.bin").mkdir()
    with pytest.raises(DataError, match="train.bin: a directory, not a regular file"):
        load_split(tmp_path / "train.bin")


def test_batch_sampler_shapes_targets_and_determinism():
    data = torch.arange(1000, dtype=torch.int64).remainder(256).to(torch.uint8)
    a = BatchSampler(data, context=16, batch_size=4, seed=3, device=torch.device("cpu"))
    b = BatchSampler(data, context=16, batch_size=4, seed=3, device=torch.device("cpu"))
    x, y = a.next()
    assert x.shape == y.shape == (4, 16) and x.dtype == torch.int64
    assert torch.equal(y[:, :-1], x[:, 1:])  # targets are the inputs shifted by one byte
    assert torch.equal(x, b.next()[0])
    # each window is one contiguous slice of the split: with data[i] = i mod 256 from a random-looking permutation,
    # a window that skipped or repeated a byte would match no slice
    data = torch.randperm(256, generator=torch.Generator().manual_seed(0)).repeat(4).to(torch.uint8)
    sampler = BatchSampler(data, context=16, batch_size=8, seed=5, device=torch.device("cpu"))
    for _ in range(3):
        x, y = sampler.next()
        for window, target in zip(x, y):
            start = int(torch.nonzero(data[:256] == window[0])[0])  # each byte value occurs once per 256
            slices = [data[s : s + 17].long() for s in range(start, len(data) - 16, 256)]
            assert any(torch.equal(torch.cat([window, target[-1:]]), s) for s in slices)
    with pytest.raises(DataError, match="too short for windows of context 16"):
        BatchSampler(data[:10], context=16, batch_size=4, seed=0, device=torch.device("cpu"))
