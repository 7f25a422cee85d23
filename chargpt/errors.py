"""Every error type of the project. Those of STAGE_ERRORS mean bad input: each ends a stage or a command with one
line that names the problem (chargpt.pipeline.harness.run_stage, chargpt.cli)."""

import signal


class ConfigError(ValueError):
    """A params.yaml problem, with the key path that caused it."""


class DataError(RuntimeError):
    """A corpus that cannot be fetched, unpacked or verified; the message names the source."""


class CheckpointError(RuntimeError):
    """A checkpoint or training state that is missing, unreadable or from another run; the message names the file."""


class TrackingError(RuntimeError):
    """An MLflow store that cannot be reached or read; the message names it and what to do."""


class RangeTestError(RuntimeError):
    """An LR range test whose curve suggests no LR (it diverged at once, or the accuracy never rose); says why."""


class CompressionError(CheckpointError):
    """A compressed file that cannot be decoded here: not ours, truncated, or made with another model or setup."""


# How a run stops (chargpt.train.loop raises them; a stage maps each to an MLflow status and an exit code).


class DivergedError(RuntimeError):
    def __init__(self, step: int, what: str):
        super().__init__(
            f"training diverged at step {step}: {what} (LR too high?); no model is saved, the last good state is kept"
        )
        self.step, self.what = step, what

    def __reduce__(self):  # picklable (raised in worker processes, e.g. research/recipe_sweep.py)
        return type(self), (self.step, self.what)


class RunTooLong(Exception):
    """The run would take longer than it is allowed to on this device (estimated from its first steps)."""

    def __init__(self, step: int, seconds_per_step: float, steps_left: int, limit_seconds: float):
        self.estimate = seconds_per_step * steps_left
        super().__init__(
            f"estimated {self.estimate / 3600:.1f} hours ({seconds_per_step:.3g} s a step x {steps_left} "
            f"steps left, timed after step {step}), over the limit of {limit_seconds / 3600:.3g} hours"
        )
        self.step, self.seconds_per_step, self.steps_left, self.limit_seconds = (
            step,
            seconds_per_step,
            steps_left,
            limit_seconds,
        )

    def __reduce__(self):
        return type(self), (self.step, self.seconds_per_step, self.steps_left, self.limit_seconds)


class Interrupted(Exception):
    def __init__(self, signum: int, step: int):
        super().__init__(f"stopped by {signal.Signals(signum).name} after step {step}; rerun to resume")
        self.signum, self.step = signum, step

    def __reduce__(self):
        return type(self), (self.signum, self.step)


STAGE_ERRORS = (ConfigError, DataError, CheckpointError, TrackingError, RangeTestError)
