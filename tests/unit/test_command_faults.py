"""Every `chargpt` command x degenerate, damaged or impossible input: one line naming the file, exit 1, nothing
partial left behind, no traceback (CHARGPT_DEBUG=1 asks for one)."""

import errno
import os

import pytest
import torch

from chargpt import cli
from chargpt.model.config import ModelConfig
from chargpt.model.gpt import GPT
from chargpt.train.checkpoint import save_checkpoint

CONFIG = ModelConfig(n_layer=1, d_model=16, n_head=2, d_ff=32, context=16, dropout=0.0)


@pytest.fixture
def project(tmp_path, monkeypatch):
    """A checkpoint, an input of each degenerate kind, and a compressed file, in the current directory."""
    monkeypatch.chdir(tmp_path)
    torch.manual_seed(0)
    save_checkpoint(tmp_path / "model.pt", GPT(CONFIG), {"model": CONFIG.model_dump()}, step=1)
    (tmp_path / "empty").write_bytes(b"")
    (tmp_path / "one").write_bytes(b"x")
    (tmp_path / "text").write_bytes(b"the byte model " * 20)
    (tmp_path / "folder").mkdir()
    (tmp_path / "a_file").write_bytes(b"not a folder")
    cli.main(["compress", "text", "text.cgz", "--checkpoint", "model.pt"])
    return tmp_path


def run(*args: str) -> str:
    """The command's one-line failure (it must fail)."""
    with pytest.raises(SystemExit) as exit_:
        cli.main(list(args))
    message = exit_.value.code
    assert isinstance(message, str) and message.startswith(f"chargpt {args[0]}: ") and "\n" not in message, message
    assert "Traceback" not in message
    return message


def outputs(root) -> set[str]:
    return {p.name for p in root.iterdir()}


# command -> its arguments around an input file (IN) and an output file (OUT)
COMMANDS = {
    "score": ["IN"],
    "compress": ["IN", "OUT"],
    "decompress": ["IN", "OUT"],
    "sample": ["--prompt-file", "IN", "--output", "OUT", "--bytes", "5"],
}


def arguments(command: str, source: str, target: str = "out.bin", checkpoint: str = "model.pt") -> list[str]:
    swap = {"IN": source, "OUT": target}
    return [command, *(swap.get(a, a) for a in COMMANDS[command]), "--checkpoint", checkpoint]


@pytest.mark.parametrize("command", list(COMMANDS))
@pytest.mark.parametrize("source, expected", [
    ("missing", "missing: cannot read it: not found"),
    ("folder", "folder: cannot read it: a directory, not a regular file"),
    ("fifo", "fifo: cannot read it: a FIFO (named pipe), not a regular file"),  # reading it would wait forever
    ("/dev/zero", "/dev/zero: cannot read it: a character device, not a regular file"),  # and never end
    ("dangling", "dangling: cannot read it: a link to a missing file"),
])  # fmt: skip
def test_an_input_that_cannot_be_read_is_named_as_what_it_is(project, command, source, expected):
    os.mkfifo(project / "fifo")
    os.symlink(project / "gone", project / "dangling")
    before = outputs(project)
    assert expected in run(*arguments(command, source))
    assert outputs(project) == before


@pytest.mark.parametrize("command", list(COMMANDS))
@pytest.mark.parametrize("source", ["empty", "one"])
def test_an_empty_or_one_byte_input_is_done_or_refused_in_one_line(project, command, source):
    """Compressing any length round-trips; what cannot be done with 0 or 1 byte says so, naming the file."""
    before = outputs(project)
    if command == "compress":
        cli.main(arguments("compress", source, "small.cgz"))
        cli.main(arguments("decompress", "small.cgz", "back"))
        assert (project / "back").read_bytes() == (project / source).read_bytes()
        return
    if command == "sample" and source == "one":  # one byte is a prompt
        cli.main(arguments("sample", source, "drawn"))
        assert len((project / "drawn").read_bytes()) == 5
        return
    message = run(*arguments(command, source))
    assert source in message and outputs(project) == before


@pytest.mark.parametrize("command", list(COMMANDS))
@pytest.mark.parametrize("checkpoint, expected", [
    ("missing.pt", "missing.pt: checkpoint not found"),
    ("empty", "empty: not a readable checkpoint"),
    ("folder", "folder: a directory, not a regular file"),
    ("/dev/null", "/dev/null: a character device, not a regular file"),
])  # fmt: skip
def test_a_checkpoint_that_is_missing_or_not_one(project, command, checkpoint, expected):
    assert expected in run(*arguments(command, "text", checkpoint=checkpoint))


def test_no_read_permission(project, monkeypatch):
    """Root reads any file, so the refusal is injected where the commands read."""
    from pathlib import Path

    def denied(self):
        raise PermissionError(errno.EACCES, "Permission denied", str(self))

    monkeypatch.setattr(Path, "read_bytes", denied)
    for command in ("score", "compress", "decompress", "sample"):
        assert "text: cannot read it (Permission denied)" in run(*arguments(command, "text"))


@pytest.mark.parametrize("command", ["compress", "decompress", "sample"])
def test_an_output_that_cannot_be_written(project, command, monkeypatch):
    source = "text.cgz" if command == "decompress" else "text"
    # a folder that is a file: its parent cannot hold the output
    assert "a_file" in run(*arguments(command, source, target="a_file/out.bin"))
    # a full disk, where the write is made durable: the error names the output, and no temporary file is left
    before = outputs(project)

    def full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", full)
    assert "cannot write out.bin: No space left on device" in run(*arguments(command, source))
    assert outputs(project) == before


def test_a_damaged_compressed_file_and_a_stranger(project):
    blob = (project / "text.cgz").read_bytes()
    (project / "cut.cgz").write_bytes(blob[: len(blob) // 2])
    assert "cut.cgz: truncated" in run(*arguments("decompress", "cut.cgz"))
    assert "text: not a chargpt-compressed file" in run(*arguments("decompress", "text"))


def test_the_debug_variable_shows_the_traceback(project, monkeypatch):
    monkeypatch.setenv("CHARGPT_DEBUG", "1")
    with pytest.raises(Exception, match="cannot read it"):
        cli.main(arguments("score", "missing"))


# command -> its arguments with the output named OUT: existing outputs are refused before any work
WRITERS = {
    "compress": ["compress", "text", "OUT"],
    "decompress": ["decompress", "text.cgz", "OUT"],
    "sample": ["sample", "--prompt-file", "text", "--output", "OUT", "--bytes", "5"],
}


def writer(command: str, target: str, *extra: str) -> list[str]:
    return [*(target if a == "OUT" else a for a in WRITERS[command]), "--checkpoint", "model.pt", *extra]


def forbid_loading(monkeypatch):
    """Fails a command that loads its model: a refusal must come before any work."""
    from chargpt.use import commands

    def loaded(path):
        raise AssertionError(f"the model {path} was loaded before the refusal")

    monkeypatch.setattr(commands, "load_trained", loaded)


@pytest.fixture
def no_work(monkeypatch):
    forbid_loading(monkeypatch)


@pytest.mark.parametrize("command", list(WRITERS))
def test_an_existing_output_is_refused_unless_forced_and_then_replaced_whole(project, command, monkeypatch):
    (project / "notes.txt").write_bytes(b"my notes")
    with monkeypatch.context() as m:
        forbid_loading(m)
        assert run(*writer(command, "notes.txt")) == f"chargpt {command}: notes.txt: exists; --force replaces it"
    assert (project / "notes.txt").read_bytes() == b"my notes"
    cli.main(writer(command, "notes.txt", "--force"))
    replaced = (project / "notes.txt").read_bytes()
    if command == "sample":
        assert len(replaced) == 5
    else:
        assert replaced == (project / ("text.cgz" if command == "compress" else "text")).read_bytes()
    # a link to a file is an existing output too, and the link, not its target, is what --force replaces
    os.symlink(project / "notes.txt", project / "link")
    assert "link: exists; --force replaces it" in run(*writer(command, "link"))


@pytest.mark.parametrize("command", list(WRITERS))
@pytest.mark.parametrize("force", [[], ["--force"]])
def test_an_output_that_is_an_input_is_refused_even_with_force(project, command, force, no_work):
    source = "text.cgz" if command == "decompress" else "text"
    os.symlink(project / source, project / "alias")
    before = {p.name: p.read_bytes() for p in project.iterdir() if p.is_file()}
    for target in (source, "alias", f"folder/../{source}", "model.pt"):
        message = run(*writer(command, target, *force))
        assert message.startswith(f"chargpt {command}: {target}: this is the input "), message
    assert {p.name: p.read_bytes() for p in project.iterdir() if p.is_file()} == before


def test_a_directory_as_the_output_is_named_as_one(project, no_work):
    assert run(*writer("compress", "folder", "--force")) == (
        "chargpt compress: folder: a directory; the output must be a file path"
    )
