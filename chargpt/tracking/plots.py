"""PNG plots for MLflow and the README (dvc plots renders the same CSV/TSV data as interactive charts)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: stages run on servers and in CI
import matplotlib.pyplot as plt

from chargpt.io import atomic_open
from chargpt.train.lr_range import RangeTestResult


def _save(fig, path: str | Path) -> None:
    fig.tight_layout()
    with atomic_open(path, "wb") as f:
        fig.savefig(f, format="png", dpi=110)
    plt.close(fig)


def plot_range_test(
    result: RangeTestResult,
    path: str | Path,
    title: str,
    lr_min: float | None = None,
    lr_max: float | str | None = None,
) -> None:
    """The smoothed loss against a log LR axis; for linear_accuracy, the val accuracy against a linear one, with the
    suggested range and the schedule's bounds (lr_min, lr_max; "auto" takes the suggestion)."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    if result.accuracies:
        ax.plot(
            [result.lrs[s] for s in result.accuracy_steps],
            result.accuracies,
            "o-",
            color="C0",
            ms=3,
            label="val accuracy",
        )
        ax.axvline(
            result.suggested_lr_min, color="C2", ls="--", label=f"suggested lr_min {result.suggested_lr_min:.3g}"
        )
        ax.axvline(result.suggested_lr, color="C3", ls="--", label=f"suggested lr_max {result.suggested_lr:.3g}")
        for bound, name in ((lr_min, "lr_min"), (lr_max, "lr_max")):
            if isinstance(bound, float):
                ax.axvline(bound, color="0.4", ls=":", label=f"schedule's {name} {bound:.3g}")
        ax.set_xlabel("learning rate (linear)")
        ax.set_ylabel("val next-byte accuracy")
    else:
        ax.plot(result.lrs, result.losses, color="0.75", lw=0.8, label="loss")
        ax.plot(result.lrs, result.smoothed, color="C0", label="smoothed loss")
        ax.axvline(result.suggested_lr, color="C3", ls="--", label=f"suggested max LR {result.suggested_lr:.3g}")
        ax.axvline(result.lr_at_min_loss, color="C1", ls=":", label=f"min smoothed loss at {result.lr_at_min_loss:.3g}")
        ax.set_xscale("log")
        ax.set_xlabel("learning rate (log scale)")
        ax.set_ylabel("training loss (nats/byte)")
    ax.set_title(title)
    ax.legend()
    _save(fig, path)


def plot_training_curve(curve: list[dict], path: str | Path, title: str) -> None:
    """Train loss (as bits/byte) and the val probe BPC against the step, with the LR on a second axis."""
    import math

    steps = [row["step"] for row in curve]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.plot(steps, [row["train_loss"] / math.log(2) for row in curve], color="C0", label="train (bits/byte)")
    probe = [(row["step"], row["val_probe_bpc"]) for row in curve if "val_probe_bpc" in row]
    ax.plot(*zip(*probe), "o-", color="C3", label="val probe BPC")
    if accuracy := [(row["step"], row["val_probe_accuracy"]) for row in curve if "val_probe_accuracy" in row]:
        final_step, final_accuracy = accuracy[-1]
        ax.annotate(
            f"val probe accuracy {100 * final_accuracy:.2f}%",
            (final_step, probe[-1][1]),
            textcoords="offset points",
            xytext=(-10, 12),
            ha="right",
            fontsize=8,
            color="C3",
        )
    ax.set_xlabel("step")
    ax.set_ylabel("bits per byte")
    lr_ax = ax.twinx()
    lr_ax.plot(steps, [row["lr"] for row in curve], color="0.6", ls=":", label="lr")
    lr_ax.set_ylabel("learning rate")
    ax.legend(loc="upper right")
    ax.set_title(title)
    _save(fig, path)


def plot_curves(
    curves: dict[str, list[tuple[float, float]]], path: str | Path, title: str, x_label: str, y_label: str
) -> None:
    """One line per named curve of (x, y) points."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, points in curves.items():
        ax.plot(*zip(*points), "o-", ms=3, label=name)
    ax.set_xlabel(x_label)
    ax.set_ylabel(y_label)
    ax.set_title(title)
    ax.legend(fontsize=8)
    _save(fig, path)
