"""A real full disk: a tiny tmpfs (needs root to mount; skipped elsewhere)."""

import errno
import subprocess

import pytest

from chargpt.data.corpus import split_corpus
from chargpt.model.config import ModelConfig
from chargpt.model.gpt import GPT
from chargpt.pipeline.config import RunConfig
from chargpt.train.checkpoint import load_model, save_checkpoint


@pytest.fixture
def small_disk(tmp_path):
    disk = tmp_path / "disk"
    disk.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(disk)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here (not root?)")
    yield disk
    subprocess.run(["umount", str(disk)], check=True)


def test_disk_full_during_a_checkpoint_keeps_the_previous_one(small_disk):
    small = ModelConfig(n_layer=1, d_model=16, n_head=2, d_ff=32, context=8, dropout=0.0)
    path = small_disk / "model.pt"
    save_checkpoint(path, GPT(small), RunConfig(name="t", model=small).model_dump(mode="json"), step=1)
    before = path.read_bytes()
    big = small.model_copy(update={"d_model": 128, "d_ff": 512})  # ~0.5 MB: more than the disk holds
    with pytest.raises(OSError, match=f"cannot write {path}") as err:
        save_checkpoint(path, GPT(big), RunConfig(name="t", model=big).model_dump(mode="json"), step=2)
    assert err.value.errno == errno.ENOSPC
    assert path.read_bytes() == before and load_model(path)[1]["step"] == 1
    assert [p.name for p in small_disk.iterdir()] == ["model.pt"]  # no temp file left behind


def test_disk_full_during_the_split_leaves_no_split(small_disk, tmp_path):
    corpus = tmp_path / "corpus.bin"
    corpus.write_bytes(bytes(range(256)) * 2000)  # 512 KB
    with pytest.raises(OSError, match="cannot write .*train.bin") as err:
        split_corpus(corpus, small_disk / "processed", (0.9, 0.05, 0.05))
    assert err.value.errno == errno.ENOSPC
    assert list((small_disk / "processed").iterdir()) == []


def test_disk_full_during_the_download_is_said_as_such_and_not_retried(small_disk, http_dir, caplog):
    from chargpt.data.config import DataConfig
    from chargpt.data.corpus import download_corpus
    from chargpt.errors import DataError

    root, base = http_dir
    (root / "corpus.txt").write_bytes(bytes(range(256)) * 2000)  # 512 KB: more than the disk holds
    with pytest.raises(DataError, match=r"the disk is full \(\d[\d,]* bytes free\)"):
        download_corpus(DataConfig(url=f"{base}/corpus.txt", checksums=None, retries=3), small_disk / "c.bin",
                        small_disk / "c.json", backoff_s=0.01)  # fmt: skip
    assert "retrying" not in caplog.text  # a full disk is no lost connection
    assert list(small_disk.iterdir()) == []
