"""The byte corpus: download (with retries and checksums), unpack, and split by offset (batches: chargpt.data.batches).

Every output is written atomically (chargpt.io), so an interrupted or failed stage leaves nothing behind.
"""

from __future__ import annotations

import bz2
import errno
import gzip
import hashlib
import http.client
import logging
import math
import mmap
import os
import shutil
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from tqdm import tqdm

from chargpt.data.config import SPLITS, Checksums, DataConfig
from chargpt.errors import DataError
from chargpt.io import atomic_open, file_problem, write_json

log = logging.getLogger(__name__)

CHUNK = 1 << 20


OFFLINE = (
    "Offline, or without access to it, run on the sample shipped with the repository: dvc exp run -S "
    "data.url=samples/enwiki-sample.xml.bz2 -S data.checksums=null evaluate@quickstart (or any local corpus: "
    "docs/using.md, Troubleshooting)"
)


class _Retryable(Exception):
    pass


@dataclass(frozen=True)
class Bounds:
    """How far a copy may go: at most `max_bytes` (`why` says where the limit comes from), and not past `deadline`
    (time.monotonic(); None: no deadline)."""

    what: str  # the download, or the unpacked corpus
    max_bytes: int
    why: str
    deadline: float | None = None
    deadline_s: float | None = None

    def check(self, url: str, n: int) -> None:
        if n > self.max_bytes:
            raise DataError(f"{url}: the {self.what} exceeds {self.max_bytes:,} bytes ({self.why}); stopped there")
        if self.deadline is not None and time.monotonic() > self.deadline:
            raise DataError(
                f"{url}: the {self.what} is still unfinished after data.deadline_s ({self.deadline_s:g} s, retries "
                f"included); raise it for a slow link. {OFFLINE}"
            )


def _write_error(e: OSError, where: Path | str) -> DataError:
    """A write that failed: a full disk said as such (never retried), anything else with its reason."""
    if e.errno == errno.ENOSPC:
        free = shutil.disk_usage(Path(where).parent).free
        return DataError(f"{where}: the disk is full ({free:,} bytes free); free space, or move the project")
    return DataError(f"{where}: cannot write ({e.strerror or e})")


def _progress(total: int | None, desc: str) -> tqdm:
    return tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=desc, mininterval=1.0)


def _copy_hashing(
    src: IO[bytes], dst: IO[bytes], bar: tqdm | None = None, bounds: Bounds | None = None, url: str = ""
) -> tuple[int, dict[str, str]]:
    md5, sha256, n = hashlib.md5(), hashlib.sha256(), 0
    read = getattr(src, "read1", src.read)  # what has arrived, up to CHUNK: a trickle still meets the deadline
    while chunk := read(CHUNK):
        if bounds is not None:
            bounds.check(url, n + len(chunk))
        try:
            dst.write(chunk)
        except OSError as e:
            raise _write_error(e, getattr(dst, "name", "the output")) from None
        md5.update(chunk)
        sha256.update(chunk)
        n += len(chunk)
        if bar is not None:
            bar.update(len(chunk))
    return n, {"md5": md5.hexdigest(), "sha256": sha256.hexdigest()}


def _local_path(url: str) -> Path | None:
    parsed = urllib.parse.urlparse(url)
    if parsed.scheme == "file":
        return Path(urllib.request.url2pathname(parsed.path))
    return Path(url).expanduser() if parsed.scheme == "" else None


def _fetch_http_once(
    url: str, dst: IO[bytes], timeout: float, expect_zip: bool, bounds: Bounds
) -> tuple[int, dict[str, str]]:
    request = urllib.request.Request(url, headers={"User-Agent": "chargpt"})
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as e:
        if e.code >= 500 or e.code == 429:
            raise _Retryable(f"HTTP {e.code} {e.reason}") from None
        raise DataError(f"{url}: HTTP {e.code} {e.reason}") from None
    except (urllib.error.URLError, TimeoutError, ConnectionError) as e:
        raise _Retryable(str(getattr(e, "reason", e))) from None
    with response:
        content_type = response.headers.get("Content-Type", "")
        if expect_zip and content_type.startswith("text/html"):
            raise DataError(f"{url}: expected a zip archive, the server sent {content_type!r} (an error page?)")
        length = response.headers.get("Content-Length")
        total = int(length) if length and length.isdigit() else None
        if total is not None and total > bounds.max_bytes:  # refused before a byte is written
            raise DataError(f"{url}: the server announces {total:,} bytes, over {bounds.max_bytes:,} ({bounds.why})")
        dst.seek(0)
        dst.truncate()
        try:
            with _progress(total, "download") as bar:
                n, digests = _copy_hashing(response, dst, bar, bounds, url)
        except (TimeoutError, ConnectionError, urllib.error.URLError, http.client.HTTPException, OSError) as e:
            raise _Retryable(f"connection lost: {type(e).__name__}: {e}") from None
        if total is not None and n != total:
            raise _Retryable(f"received {n} of {total} bytes")
        return n, digests


def fetch(
    url: str,
    dst: IO[bytes],
    timeout: float = 60.0,
    retries: int = 3,
    backoff_s: float = 1.0,
    expect_zip: bool = False,
    bounds: Bounds | None = None,
) -> tuple[int, dict[str, str]]:
    """Copy `url` (http(s), file:// or a local path) into the open file `dst`, retrying transient failures
    with exponential backoff, within `bounds`; returns the size and digests of what was copied."""
    bounds = bounds or Bounds("download", 1 << 62, "no limit")
    local = _local_path(url)
    if local is not None:
        if (problem := file_problem(local)) is not None:
            raise DataError(f"{url}: {problem}")
        with open(local, "rb") as src, _progress(local.stat().st_size, "copy") as bar:
            return _copy_hashing(src, dst, bar, bounds, url)
    for attempt in range(retries + 1):
        try:
            return _fetch_http_once(url, dst, timeout, expect_zip, bounds)
        except _Retryable as e:
            if attempt == retries:
                raise DataError(f"{url}: download failed after {retries + 1} attempts: {e}. {OFFLINE}") from None
            wait = backoff_s * 2**attempt
            log.warning("%s: %s; retrying in %.1fs (%d/%d)", url, e, wait, attempt + 1, retries)
            time.sleep(wait)


def resolve_format(cfg: DataConfig) -> str:
    if cfg.format != "auto":
        return cfg.format
    path = urllib.parse.urlparse(cfg.url).path.lower() if _local_path(cfg.url) is None else str(cfg.url).lower()
    for suffix, fmt in ((".zip", "zip"), (".bz2", "bz2"), (".gz", "gz")):
        if path.endswith(suffix):
            return fmt
    return "raw"


def _open_member(archive: Path, url: str, member: str | None) -> IO[bytes]:
    try:
        zf = zipfile.ZipFile(archive)
    except zipfile.BadZipFile:
        with open(archive, "rb") as f:
            head = f.read(16)
        raise DataError(f"{url}: not a valid zip archive (starts with {head!r}; truncated or an error page?)") from None
    names = [i.filename for i in zf.infolist() if not i.is_dir()]
    if member is None:
        if len(names) != 1:
            raise DataError(f"{url}: expected exactly one file in the archive (set data.member), found {names}")
        member = names[0]
    if member not in names:
        raise DataError(f"{url}: the archive has no member {member!r}; it holds {names}")
    info = zf.getinfo(member)
    if info.flag_bits & 0x1:
        raise DataError(f"{url}: the archive's member {member!r} is encrypted; chargpt reads unencrypted archives")
    if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA):
        raise DataError(
            f"{url}: the archive's member {member!r} uses zip compression method {info.compress_type}, which Python's "
            f"zipfile cannot unpack (stored, deflate, bzip2 and lzma can)"
        )
    return zf.open(member)


def _verify(what: str, url: str, observed: dict[str, Any], expected: dict[str, Any]) -> list[str]:
    checked = []
    for key, want in expected.items():
        if want is None:
            continue
        if observed[key] != want:
            raise DataError(f"{url}: {what} {key} mismatch: expected {want}, got {observed[key]}")
        checked.append(f"{what}_{key}" if what == "archive" else key)
    return checked


def limit(what: str, known: int | None, cfg: DataConfig, deadline: float | None = None) -> Bounds:
    """The bounds of the download or the unpack: the size the checksums give, else data.max_bytes."""
    if known is not None:
        return Bounds(what, known, "the size data.checksums gives", deadline, cfg.deadline_s)
    return Bounds(what, cfg.max_bytes, "data.max_bytes", deadline, cfg.deadline_s)


def download_corpus(cfg: DataConfig, corpus_path: str | Path, info_path: str | Path, backoff_s: float = 1.0) -> dict:
    """Fetch cfg.url, verify and unpack it to `corpus_path` (raw bytes); record what was observed in
    `info_path`. Nothing is written unless every check passes."""
    corpus_path, fmt = Path(corpus_path), resolve_format(cfg)
    sums = cfg.checksums or Checksums()
    corpus_path.parent.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + cfg.deadline_s
    with tempfile.TemporaryDirectory(dir=corpus_path.parent, prefix=".download-") as tmp:
        archive = Path(tmp) / "archive"
        with open(archive, "wb") as f:
            archive_size, archive_digests = fetch(
                cfg.url, f, cfg.timeout_s, cfg.retries, backoff_s, fmt == "zip",
                limit("download", sums.archive_size if fmt != "raw" else sums.size, cfg, deadline),
            )  # fmt: skip
        observed_archive = {"size": archive_size, "sha256": archive_digests["sha256"]}
        verified = _verify(
            "archive", cfg.url, observed_archive, {"size": sums.archive_size, "sha256": sums.archive_sha256}
        )

        opener = {
            "zip": lambda: _open_member(archive, cfg.url, cfg.member),
            "bz2": lambda: bz2.open(archive),
            "gz": lambda: gzip.open(archive),
            "raw": lambda: open(archive, "rb"),
        }[fmt]
        with atomic_open(corpus_path) as dst:
            try:
                with opener() as src, _progress(None, f"unpack {fmt}") as bar:
                    size, digests = _copy_hashing(src, dst, bar, limit("unpacked corpus", sums.size, cfg), cfg.url)
            except (OSError, EOFError, zipfile.BadZipFile, zipfile.LargeZipFile, NotImplementedError) as e:
                raise DataError(f"{cfg.url}: cannot unpack as {fmt}: {type(e).__name__}: {e}") from None
            observed = {"size": size, **digests}
            verified += _verify(
                "corpus", cfg.url, observed, {"size": sums.size, "md5": sums.md5, "sha256": sums.sha256}
            )
            if size == 0:
                raise DataError(f"{cfg.url}: the corpus is empty")
    info = {"url": cfg.url, "format": fmt, "archive": observed_archive, "corpus": observed, "verified": verified}
    write_json(info_path, info)
    log.info("corpus: %d bytes, sha256 %s (verified: %s)", size, digests["sha256"], ", ".join(verified) or "nothing")
    return info


def split_sizes(n: int, fractions: tuple[float, float, float]) -> tuple[int, int, int]:
    # round() first: 0.9 * 1e8 is 90000000.00000001 in floating point, and floor must not see noise.
    n_train = math.floor(round(n * fractions[0], 6))
    n_val = math.floor(round(n * fractions[1], 6))
    return n_train, n_val, n - n_train - n_val


def _copy_range(src: IO[bytes], dst: IO[bytes], offset: int, part: memoryview) -> None:
    """Copy `part`, the bytes of `src` from `offset`, to `dst`: in the kernel (copy_file_range) where it can, so
    the bytes never pass through Python; else from `part` itself."""
    copy_in_kernel = getattr(os, "copy_file_range", None)
    done = 0
    while copy_in_kernel is not None and done < len(part):
        try:
            copied = copy_in_kernel(src.fileno(), dst.fileno(), len(part) - done, offset + done)
        except OSError:  # not supported between these files (another filesystem, an old kernel)
            break
        if copied == 0:
            break
        done += copied
    dst.write(part[done:])


def split_corpus(corpus_path: str | Path, out_dir: str | Path, fractions: tuple[float, float, float]) -> dict:
    """Split the corpus by byte offset into <out_dir>/{train,val,test}.bin; returns the metadata."""
    corpus_path = Path(corpus_path)
    n = corpus_path.stat().st_size
    sizes = split_sizes(n, fractions)
    if min(sizes) < 2:
        raise DataError(
            f"{corpus_path}: {n} bytes split {list(fractions)} gives {dict(zip(SPLITS, sizes))}; "
            f"each split needs at least 2 bytes"
        )
    offsets = [0, sizes[0], sizes[0] + sizes[1]]
    sha256 = lambda buffer: hashlib.sha256(buffer).hexdigest()  # noqa: E731
    with open(corpus_path, "rb") as src, mmap.mmap(src.fileno(), 0, access=mmap.ACCESS_READ) as corpus:
        view = memoryview(corpus)
        parts = [view[offset : offset + size] for offset, size in zip(offsets, sizes)]
        try:
            # hashlib and copy_file_range release the GIL: hash the source, hash the splits and copy, at once.
            with ThreadPoolExecutor(2) as pool:
                source_digest = pool.submit(sha256, view)
                split_digests = pool.submit(lambda: [sha256(part) for part in parts])
                for name, offset, part in zip(SPLITS, offsets, parts):
                    with atomic_open(Path(out_dir) / f"{name}.bin") as dst:
                        _copy_range(src, dst, offset, part)
                meta = {
                    "source_sha256": source_digest.result(),
                    "splits": {
                        name: {"offset": offset, "bytes": size, "sha256": digest}
                        for name, offset, size, digest in zip(SPLITS, offsets, sizes, split_digests.result())
                    },
                }
        finally:
            for part in parts:
                part.release()
            view.release()
    return meta
