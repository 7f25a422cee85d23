"""The errors that mean bad input, each ending a stage with one line that names the problem (runtime.run_stage)."""


class ConfigError(ValueError):
    """A params.yaml problem, with the key path that caused it."""


class DataError(RuntimeError):
    """A corpus that cannot be fetched, unpacked or verified; the message names the source."""


class CheckpointError(RuntimeError):
    """A checkpoint or training state that is missing, unreadable or from another run; the message names the file."""


class TrackingError(RuntimeError):
    """An MLflow store that cannot be reached or read; the message names it and what to do."""


class GraphCaptureError(RuntimeError):
    """A training step that cannot be captured in a CUDA graph here; the message says what to set instead."""


class RangeTestError(RuntimeError):
    """An LR range test whose curve suggests no LR (it diverged at once, or the accuracy never rose); says why."""


STAGE_ERRORS = (ConfigError, DataError, CheckpointError, TrackingError, GraphCaptureError, RangeTestError)
