"""Stage lr_range_test@<run>: Smith's LR range test on the run's own model and optimizer."""

import logging

from chargpt.config import load_run_config
from chargpt.data import BatchSampler, load_split
from chargpt.io import write_json, write_table
from chargpt.lr_range_test import range_test
from chargpt.model import GPT
from chargpt.plots import plot_range_test
from chargpt.runtime import autocast_dtype, check_fits, DATA_DIR, prepare, report_dir, run_stage, run_stage_parser, split_meta
from chargpt.schedule import build_optimizer

log = logging.getLogger("stages.lr_range_test")


def main() -> None:
    parser = run_stage_parser(__doc__)
    args = parser.parse_args()

    cfg = load_run_config(args.run, args.params)
    check_fits(cfg, split_meta())
    device = prepare(cfg.train)
    model = GPT(cfg.model).to(device)
    if cfg.train.aux_losses:
        model.set_aux_loss_progress(0.0)  # the objective of the run's first steps, which the range test stands for
    optimizer = build_optimizer(model, cfg.optimizer, lr=cfg.lr_range_test.lr_start, momentum=cfg.schedule.momentum_max)
    sampler = BatchSampler(load_split(DATA_DIR / "train.bin"), cfg.model.context, cfg.train.batch_size, cfg.train.seed, device)
    result = range_test(model, optimizer, sampler.next, cfg.lr_range_test, autocast_dtype(cfg.train, device))

    out = report_dir(args.run)
    # suggested_lr on every row: the dvc plots template (.dvc/plots/lr_range_log.json) draws it as a rule.
    write_table(out / "lr_range_test.csv", ["step", "lr", "loss", "smoothed_loss", "suggested_lr"],
                [(i, lr, loss, s, result.suggested_lr)
                 for i, (lr, loss, s) in enumerate(zip(result.lrs, result.losses, result.smoothed))])
    plot_range_test(result, out / "lr_range_test.png", f"LR range test: {args.run}")
    write_json(out / "lr_range_test.json", {
        "suggested_lr": result.suggested_lr, "rule": result.rule, "lr_at_min_loss": result.lr_at_min_loss,
        "min_smoothed_loss": min(result.smoothed), "iterations_run": len(result.lrs),
        "stopped_early": result.stopped_early, "lr_start": cfg.lr_range_test.lr_start, "lr_end": cfg.lr_range_test.lr_end,
    })
    log.info("suggested max LR %.4g (%s)", result.suggested_lr, result.rule)


if __name__ == "__main__":
    run_stage(main)
