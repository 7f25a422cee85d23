"""The eval section of params.yaml: the scoring protocol and dynamic evaluation."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from chargpt.settings import PositiveFloat, PositiveInt, Section

# The protocol every run is also scored under (evaluate's <split>_bpc_ref), whatever its eval.stride: so that runs
# compare like with like. Consecutive windows are the original project's runs' protocol and the cheapest one.
REFERENCE = "consecutive windows of the run's context (stride = context), in the run's precision"


def protocol_label(stride: int, context: int, precision: str | None) -> str:
    """A run's own scoring protocol in a few words (MLflow's tag, `chargpt compare`'s column); a run recorded before
    its precision was has none."""
    windows = "consecutive" if stride == context else f"stride {stride} of {context}"
    return f"{windows}, {precision}" if precision else windows


class DynamicEvalConfig(Section):
    """Dynamic evaluation (Krause et al. 2018): the model keeps learning on the text as it scores it. Windows are
    scored in order; after each `windows` of them, one optimizer step on those windows, so every byte is predicted
    by weights that saw only bytes before it. `rms` is Krause et al.'s own update: each weight's step is divided by
    the RMS of its gradient in training, which the train stage stores in the model file (scoring.KrauseRMS)."""

    lr: PositiveFloat = 1e-3
    optimizer: Literal["sgd", "adam", "rms"] = "adam"
    windows: PositiveInt = 1  # windows scored per update
    # Each window advances by `stride` bytes and scores its last `stride` (more context per byte, and an update per
    # `stride` bytes); null: the model's context (consecutive windows).
    stride: PositiveInt | None = None
    # Each update pulls the weights back towards the trained ones by this fraction (0: none); with rms, a weight's
    # fraction is decay x its training RMS / the mean RMS (at most 1).
    decay: Annotated[float, Field(ge=0, lt=1)] = 0.0


class MixtureConfig(Section):
    """The network mixed with a context model of the bytes already scored (chargpt.evaluation.mixture)."""

    order: Annotated[int, Field(ge=0, le=32)] = 12  # the longest context the counts use, in bytes
    lr: PositiveFloat = 0.2  # the mixing weights' learning rate (tuned on val: docs/results.md)
    table_bits: Annotated[int, Field(ge=10, le=26)] = 24  # the counts' table: 2^table_bits slots of 4 bytes (64 MiB)


class EvalConfig(Section):
    batch_size: PositiveInt = 16
    # Sliding-window scoring: each window advances by `stride` bytes and scores only its last `stride`
    # bytes, so each byte sees at least context - stride bytes of history. null: stride = context
    # (consecutive non-overlapping windows).
    stride: PositiveInt | None = None
    # Score only this many leading bytes of each split (a stated prefix, reported under its own metric
    # names); null: the whole split.
    max_bytes: PositiveInt | None = None
    # Also report val_bpc_dynamic / test_bpc_dynamic, scored with dynamic evaluation; null: static only.
    dynamic: DynamicEvalConfig | None = None
    # Also report <split>_bpc_mixed (and _dynamic_mixed): the network mixed with a context model; null: none.
    mixture: MixtureConfig | None = None
    # The splits scored with dynamic evaluation and the mixture, whose settings are tuned on val (research/): a run
    # that reports them on test alone saves val's passes.
    adaptive_splits: list[Literal["val", "test"]] = ["val", "test"]
