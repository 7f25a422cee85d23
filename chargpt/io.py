"""Atomic file output: write to a temporary file beside the target, fsync, rename.

A crash or an exception mid-write leaves either the old file or none, never a half-written one that DVC
would cache.
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import stat
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO, Any

from chargpt.errors import ConfigError, DataError

# What a path that exists but is no regular file holds, by its stat mode's type.
KINDS = {
    stat.S_IFDIR: "a directory",
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
    stat.S_IFIFO: "a FIFO (named pipe)",
    stat.S_IFSOCK: "a socket",
}


def file_problem(path: str | Path) -> str | None:
    """Why `path` cannot be read as a regular file, in a few words, or None when it can: a missing path, a link to
    nothing and a directory or device are three problems, and a message names the one it is."""
    path = Path(path)
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        return "a link to a missing file" if path.is_symlink() else "not found"
    except NotADirectoryError:
        return "not found (a folder on its path is a file)"
    except PermissionError:
        return "not reachable (permission denied on a folder on its path)"
    except OSError as e:  # a loop of links, a name too long
        return e.strerror or str(e)
    if stat.S_ISREG(mode):
        return None
    return f"{KINDS.get(stat.S_IFMT(mode), 'not a regular file')}, not a regular file"


def check_output(path: str | Path, force: bool, inputs: Sequence[str | Path | None] = ()) -> None:
    """Refuse, before any work, an output that would replace what a user has: an existing file unless `force`
    (atomic_open then replaces it only once the new one is complete), and an input (the same file, through a link
    too) even with `force`: gzip, xz and zstd do the same."""
    path = Path(path)
    for source in inputs:
        if source is not None and _same_file(path, Path(source)):
            raise ConfigError(f"{path}: this is the input {source}; write the output to another file")
    if path.is_dir():
        raise ConfigError(f"{path}: a directory; the output must be a file path")
    if os.path.lexists(path) and not force:
        raise ConfigError(f"{path}: exists; --force replaces it")


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:  # either is missing: they cannot be one file
        return False


@contextlib.contextmanager
def atomic_open(path: str | Path, mode: str = "wb") -> Iterator[IO]:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes it 0600; a file written with open() would follow the umask
        with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8", "newline": ""})) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        # Name the file the write was for (the temporary name means nothing to a user); keep the errno.
        raise OSError(e.errno, f"cannot write {path}: {e.strerror or e}") from e
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _umask() -> int:
    try:  # Linux says it without changing it
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)  # elsewhere, reading it means setting it: put it straight back
    os.umask(mask)
    return mask


def write_json(path: str | Path, obj: Any) -> None:
    with atomic_open(path, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=False)
        f.write("\n")


def write_table(path: str | Path, header: Sequence[str], rows: Sequence[Sequence[Any]], delimiter: str = ",") -> None:
    with atomic_open(path, "w") as f:
        writer = csv.writer(f, delimiter=delimiter, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)


def read_json(path: str | Path, *required: str) -> Any:
    """A JSON file another stage wrote, with the keys of `required` (dotted paths, e.g. "splits.train.bytes"):
    DataError names the file and what is wrong where it is missing, damaged, or written by an older version."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: not found (has the stage that writes it run?)") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: not valid JSON ({e}); rerun the stage that writes it") from None
    for key in required:
        node = data
        for part in key.split("."):
            if not isinstance(node, dict) or part not in node:
                raise DataError(
                    f"{path}: no {key} (written by an older version, or damaged); rerun the stage that writes it"
                )
            node = node[part]
    return data
