import pytest

from chargpt.io import atomic_open, write_json


def test_a_failed_write_leaves_the_previous_file_intact_and_no_temp_file(tmp_path):
    target = tmp_path / "last.pt"
    write_json(target, {"step": 1})
    before = target.read_bytes()
    with pytest.raises(OSError, match="disk full"):
        with atomic_open(target, "wb") as f:
            f.write(b"half a checkpoint")
            raise OSError(28, "disk full")
    assert target.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def test_atomic_write_replaces_the_file(tmp_path):
    target = tmp_path / "sub" / "metrics.json"
    write_json(target, {"a": 1})
    write_json(target, {"a": 2})
    assert target.read_text() == '{\n  "a": 2\n}\n'


@pytest.mark.parametrize("umask", [0o022, 0o002, 0o077])
def test_outputs_keep_the_mode_the_umask_gives(tmp_path, umask):
    """A team sharing a results folder reads what the stages write, as with any file written by open()."""
    import os

    previous = os.umask(umask)
    try:
        write_json(tmp_path / "metrics.json", {"a": 1})
        with open(tmp_path / "plain.txt", "w") as f:
            f.write("x")
    finally:
        os.umask(previous)
    assert (tmp_path / "metrics.json").stat().st_mode & 0o777 == 0o666 & ~umask
    assert (tmp_path / "metrics.json").stat().st_mode & 0o777 == (tmp_path / "plain.txt").stat().st_mode & 0o777
