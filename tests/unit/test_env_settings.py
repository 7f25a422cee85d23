"""Settings read from the environment are checked like params.yaml: a value that would silently change what a stage
does (lift the time limit, make it a rank that writes nothing) is refused in one line naming the variable."""

import pytest

from chargpt.errors import ConfigError
from chargpt.pipeline.harness import time_limit_seconds
from chargpt.train.distributed import Ranks, from_env


@pytest.mark.parametrize("text, seconds", [("0", None), ("2", 7200.0), ("0.5", 1800.0), (None, 3600.0)])
def test_the_time_limit_in_hours(monkeypatch, text, seconds):
    if text is None:
        monkeypatch.delenv("CHARGPT_MAX_HOURS", raising=False)
    else:
        monkeypatch.setenv("CHARGPT_MAX_HOURS", text)
    assert time_limit_seconds() == seconds


@pytest.mark.parametrize("text", ["-1", "nan", "inf", "-inf", "two", ""])
def test_a_time_limit_that_would_lift_the_limit_or_is_no_number_is_refused(monkeypatch, text):
    monkeypatch.setenv("CHARGPT_MAX_HOURS", text)
    with pytest.raises(ConfigError, match=rf"^CHARGPT_MAX_HOURS='{text}': expected a number of hours, 0 or more"):
        time_limit_seconds()


def set_ranks(monkeypatch, **values):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    for name, value in values.items():
        monkeypatch.setenv(name, value)


def test_no_ranks_is_one_process_and_torchruns_are_read(monkeypatch):
    set_ranks(monkeypatch)
    assert from_env() == Ranks(0, 1, 0)
    set_ranks(monkeypatch, RANK="1", WORLD_SIZE="2", LOCAL_RANK="1")
    assert from_env() == Ranks(1, 2, 1) and not from_env().is_main


@pytest.mark.parametrize(
    "values, message",
    [
        ({"RANK": "1"}, "RANK=1 without WORLD_SIZE, LOCAL_RANK: torchrun sets all three; unset RANK"),
        ({"WORLD_SIZE": "4", "LOCAL_RANK": "0"}, "without RANK"),
        ({"RANK": "x", "WORLD_SIZE": "2", "LOCAL_RANK": "0"}, "must be integers"),
        ({"RANK": "2", "WORLD_SIZE": "2", "LOCAL_RANK": "0"}, "expected 0 <= RANK < WORLD_SIZE"),
        ({"RANK": "0", "WORLD_SIZE": "0", "LOCAL_RANK": "0"}, "expected 0 <= RANK < WORLD_SIZE"),
        ({"RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "-1"}, "0 <= LOCAL_RANK < WORLD_SIZE"),
    ],
)
def test_partial_or_invalid_ranks_are_refused(monkeypatch, values, message):
    set_ranks(monkeypatch, **values)
    with pytest.raises(ConfigError, match="^environment: ") as e:
        from_env()
    assert message in str(e.value) and "\n" not in str(e.value)
