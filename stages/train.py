"""Stage train@<run>: one 1cycle training run; final checkpoint, training curve and metrics, in MLflow too."""

import argparse
import logging

import mlflow

from chargpt import tracking
from chargpt.checkpoint import save_checkpoint
from chargpt.config import ConfigError, load_run_config
from chargpt.data import BatchSampler, load_split
from chargpt.evaluation import split_bpc
from chargpt.io import read_json, write_json, write_table
from chargpt.model import GPT
from chargpt.plots import plot_training_curve
from chargpt.runtime import autocast_dtype, check_fits, DATA_DIR, model_path, prepare, report_dir, run_stage, split_meta
from chargpt.schedule import build_onecycle, build_optimizer
from chargpt.trainer import LoopConfig, train_loop

log = logging.getLogger("stages.train")
CURVE_COLUMNS = ["step", "lr", "momentum", "train_loss", "val_probe_bpc"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--run", required=True)
    parser.add_argument("--params", default="params.yaml")
    args = parser.parse_args()

    cfg = load_run_config(args.run, args.params)
    check_fits(cfg, split_meta())
    reports, lr_test = report_dir(args.run), read_json(report_dir(args.run) / "lr_range_test.json")
    lr_max = lr_test["suggested_lr"] if cfg.schedule.lr_max == "auto" else cfg.schedule.lr_max
    if lr_max <= cfg.schedule.lr_min:
        raise ConfigError(f"run {args.run!r}: schedule.lr_max resolved to {lr_max:.3g} (auto: LR range test), "
                          f"not above schedule.lr_min {cfg.schedule.lr_min}")
    device = prepare(cfg.train)
    autocast = autocast_dtype(cfg.train, device)
    model = GPT(cfg.model).to(device)
    optimizer = build_optimizer(model, cfg.optimizer, lr=cfg.schedule.lr_min, momentum=cfg.schedule.momentum_max)
    scheduler = build_onecycle(optimizer, cfg.schedule, lr_max, cfg.train.iterations)
    sampler = BatchSampler(load_split(DATA_DIR / "train.bin"), cfg.model.context, cfg.train.batch_size, cfg.train.seed, device)
    val = load_split(DATA_DIR / "val.bin")
    val_probe = val[: cfg.train.eval_batches * cfg.train.batch_size * cfg.model.context + 1]

    def probe() -> dict[str, float]:  # a fixed val prefix, so that points of the curve are comparable
        bpc, _ = split_bpc(model, val_probe, cfg.model.context, cfg.eval.batch_size, device=device, autocast_dtype=autocast)
        return {"val_probe_bpc": bpc}

    curve: list[dict] = []

    def record(step: int, metrics: dict[str, float]) -> None:
        curve.append({"step": step, **metrics})
        mlflow.log_metrics(metrics, step=step)

    tracking.setup()
    with mlflow.start_run(run_name=args.run, tags=tracking.run_tags(args.run, f"train@{args.run}", device)) as run:
        mlflow.log_params(tracking.flatten(cfg.model_dump(mode="json", exclude={"name"})) | {
            "resolved.lr_max": lr_max, "resolved.precision": str(autocast or "fp32"), "model.n_params": model.num_params(), "train.val_probe_bytes": len(val_probe)})
        tracking.log_range_test(*(reports / f"lr_range_test.{ext}" for ext in ("csv", "json", "png")), run_name=args.run)
        loop = LoopConfig(cfg.train.iterations, cfg.train.log_interval, cfg.train.eval_interval,
                          cfg.optimizer.grad_clip, autocast)
        result = train_loop(model, optimizer, scheduler, sampler.next, loop, probe, record)

        save_checkpoint(model_path(args.run), model, cfg.model_dump(mode="json"), step=result.steps,
                        mlflow_run_id=run.info.run_id, lr_max=lr_max)
        write_table(reports / "train_curve.tsv", CURVE_COLUMNS,
                    [[row.get(c, "") for c in CURVE_COLUMNS] for row in curve], delimiter="\t")
        metrics = {"val_probe_bpc": curve[-1]["val_probe_bpc"], "iterations": result.steps, "tokens": result.tokens,
                   "train_seconds": round(result.seconds, 2), "tokens_per_second": round(result.tokens / result.seconds, 1),
                   "lr_max": lr_max}
        write_json(reports / "train_metrics.json", metrics)
        mlflow.log_metrics({k: float(v) for k, v in metrics.items() if k != "val_probe_bpc"}, step=result.steps)
        plot_training_curve(curve, reports / "train_curve.png", f"training: {args.run}")
        for name in ("train_curve.tsv", "train_curve.png", "lr_range_test.png"):
            mlflow.log_artifact(str(reports / name), artifact_path="plots" if name.endswith(".png") else None)
    log.info("trained %d steps in %.0fs; val probe BPC %.4f", result.steps, result.seconds, metrics["val_probe_bpc"])


if __name__ == "__main__":
    run_stage(main)
