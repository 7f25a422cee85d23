"""Stage lr_range_test@<run>: Smith's LR range test on the run's own model and optimizer."""

import logging

from chargpt.data.batches import load_split
from chargpt.device import describe, resolve_amp_dtype
from chargpt.io import write_json, write_table
from chargpt.pipeline.config import RunConfig, load_run_config
from chargpt.pipeline.harness import ending_runs, run_stage, sweep_temporaries, time_limit_seconds
from chargpt.pipeline.stage import DATA_DIR, check_fits, report_dir, run_stage_parser, split_meta
from chargpt.tracking.plots import plot_range_test
from chargpt.train.lr_range import run_range_test
from chargpt.train.setup import prepare

log = logging.getLogger("stages.lr_range_test")


def main() -> None:
    args = run_stage_parser(__doc__).parse_args()
    range_test(load_run_config(args.run, args.params))


def range_test(cfg: RunConfig) -> None:
    """The stage's work, in the working directory's layout."""
    check_fits(cfg.name, cfg.model.context, split_meta())
    sweep_temporaries(report_dir(cfg.name))
    device = prepare(cfg.train)
    val = load_split(DATA_DIR / "val.bin") if cfg.lr_range_test.method == "linear_accuracy" else None
    train = load_split(DATA_DIR / "train.bin")
    amp_dtype = resolve_amp_dtype(cfg.train.precision, device)
    with ending_runs(f"lr_range_test@{cfg.name}", describe(device)):
        result = run_range_test(
            model=cfg.model,
            optimizer=cfg.optimizer,
            momentum=cfg.schedule.momentum_max,
            range_test=cfg.lr_range_test,
            train=cfg.train,
            device=device,
            train_split=train,
            amp_dtype=amp_dtype,
            max_seconds=time_limit_seconds(),
            val_split=val,
        )

    out = report_dir(cfg.name)
    # The schedule's own bounds beside the suggestion: a run with fixed bounds (the seed's) shows what the test says.
    schedule = {"schedule_lr_min": cfg.schedule.lr_min, "schedule_lr_max": cfg.schedule.lr_max}
    accuracy = dict(zip(result.accuracy_steps, result.accuracies))
    # suggested_lr on every row: the dvc plots template (.dvc/plots/lr_range_log.json) draws it as a rule.
    write_table(
        out / "lr_range_test.csv",
        ["step", "lr", "loss", "smoothed_loss", "val_accuracy", "suggested_lr"],
        [
            (i, lr, loss, s, accuracy.get(i, ""), result.suggested_lr)
            for i, (lr, loss, s) in enumerate(zip(result.lrs, result.losses, result.smoothed))
        ],
    )
    plot_range_test(
        result, out / "lr_range_test.png", f"LR range test: {cfg.name}", cfg.schedule.lr_min, cfg.schedule.lr_max
    )
    summary = {
        "method": cfg.lr_range_test.method,
        "suggested_lr": result.suggested_lr,
        **(
            {"suggested_lr_min": result.suggested_lr_min, "max_val_accuracy": max(result.accuracies)}
            if result.suggested_lr_min is not None
            else {}
        ),
        "rule": result.rule,
        "lr_at_min_loss": result.lr_at_min_loss,
        "min_smoothed_loss": min(result.smoothed),
        "iterations_run": len(result.lrs),
        "stopped_early": result.stopped_early,
        "lr_start": cfg.lr_range_test.lr_start,
        "lr_end": cfg.lr_range_test.lr_end,
        **schedule,
    }
    write_json(out / "lr_range_test.json", summary)
    if result.suggested_lr_min is not None:
        log.info(
            "suggested LR range %.4g -> %.4g (%s); the schedule's: %s -> %s",
            result.suggested_lr_min,
            result.suggested_lr,
            result.rule,
            cfg.schedule.lr_min,
            cfg.schedule.lr_max,
        )
    else:
        log.info("suggested max LR %.4g (%s)", result.suggested_lr, result.rule)


if __name__ == "__main__":
    run_stage(main)
