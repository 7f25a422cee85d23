"""How every stage script runs and ends: logging, one line for bad input, the time limit a run keeps on this machine,
and the one table of how a run that stops early ends (MLflow status, exit code, log line). The data stages
import this module and no more of the pipeline, so that a change to the runs' code leaves them up to date."""

from __future__ import annotations

import contextlib
import logging
import math
import os
import shutil
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from chargpt.errors import STAGE_ERRORS, ConfigError, DivergedError, Interrupted, RunTooLong

MAX_HOURS = "CHARGPT_MAX_HOURS"


def setup_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def run_stage(main: Callable[[], None]) -> None:
    """Run a stage's main(); a known bad-input error ends it with one clear line and exit status 1, a run that
    stopped early (ending_runs logged it) with RUN_ENDINGS' exit code."""
    setup_logging()
    try:
        main()
    except (*STAGE_ERRORS, OSError) as e:  # OSError: disk full, …
        logging.getLogger("chargpt").error("%s", e)
        sys.exit(1)
    except tuple(RUN_ENDINGS) as e:
        sys.exit(RUN_ENDINGS[type(e)].exit_code(e))


def sweep_temporaries(*folders: str | Path) -> list[Path]:
    """Remove what a killed stage left in its output folders: atomic_open's temporaries (`.<name>.<random>.tmp`)
    and the download's scratch folders (`.download-*`). A stage calls it on its own folders before it writes."""
    stale = []
    for folder in map(Path, folders):
        if folder.is_dir():
            stale += sorted(folder.glob(".*.tmp")) + sorted(folder.glob(".download-*"))
    for path in stale:
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
    if stale:
        logging.getLogger("chargpt").info("removed %d temporary file(s) a killed stage left: %s", len(stale),
                                          ", ".join(map(str, stale)))  # fmt: skip
    return stale


def time_limit_seconds() -> float | None:
    """How long a stage may train or range-test on this machine: CHARGPT_MAX_HOURS (default 1; 0: no limit)."""
    text = os.environ.get(MAX_HOURS, "1")
    try:
        hours = float(text)
    except ValueError:
        hours = math.nan
    if not (math.isfinite(hours) and hours >= 0):  # nan, inf and -1 would each lift the limit without a word
        raise ConfigError(f"{MAX_HOURS}={text!r}: expected a number of hours, 0 or more (0: no limit)")
    return hours * 3600 if hours > 0 else None


def too_long(stage: str, error: Exception, where: str) -> str:
    """What a user reads when a run would take too long on `where` (the device's name), and how to go on."""
    hours = max(1, math.ceil(error.estimate / 3600 * 1.2))
    return (
        f"{stage} on {where}: {error}; stopped before it. Run it on a GPU, run `dvc repro evaluate@quickstart` "
        f"(the CPU-sized run), or allow it: {MAX_HOURS}={hours} dvc repro ... ({MAX_HOURS}=0: no limit)"
    )


class EndableRun(Protocol):
    """What a run's tracker must offer to record how it ended (chargpt.tracking.record.RecordedRun)."""

    def end(self, status: str, tags: dict | None = None) -> None: ...


@dataclass(frozen=True)
class RunEnding:
    """How a stage ends when its run stops early: the MLflow run status, the exit code, the tags, the log line."""

    status: str
    exit_code: Callable[[Any], int]
    tags: Callable[[Any], dict]
    message: Callable[[Any, str, str], str]  # (error, stage, device name) -> what the user reads


# Every way a started run stops early. Interrupted: a signal's conventional 128 + signum, so a scheduler sees it.
RUN_ENDINGS: dict[type[Exception], RunEnding] = {
    Interrupted: RunEnding("KILLED", lambda e: 128 + e.signum, lambda e: {}, lambda e, stage, where: str(e)),
    RunTooLong: RunEnding("KILLED", lambda e: 1, lambda e: {"failure": str(e)}, lambda e, s, w: too_long(s, e, w)),
    DivergedError: RunEnding(
        "FAILED", lambda e: 1, lambda e: {"failure": str(e), "diverged_at_step": e.step}, lambda e, s, w: str(e)
    ),
}


@contextlib.contextmanager
def ending_runs(stage: str, where: str, recorded: EndableRun | None = None, report: bool = True) -> Iterator[None]:
    """When the run stops early, as RUN_ENDINGS says: record how in `recorded`, log one line (unless `report` is
    false: the ranks but the first of a distributed run), and let the error on (run_stage turns it into the exit
    code; research/recipe_sweep.py keeps it)."""
    try:
        yield
    except tuple(RUN_ENDINGS) as e:
        ending = RUN_ENDINGS[type(e)]
        if recorded is not None:
            recorded.end(ending.status, ending.tags(e))
        if report:
            level = logging.WARNING if isinstance(e, Interrupted) else logging.ERROR
            logging.getLogger("chargpt").log(level, "%s", ending.message(e, stage, where))
        raise
