"""Stage train@<run>: one training run, resumable; final checkpoint, curve and metrics, in MLflow too.

With train.nproc > 1 it relaunches itself under torchrun (DistributedDataParallel); rank 0 alone writes.
"""

import contextlib
import logging
import shutil
import sys
from dataclasses import asdict

from chargpt.errors import DivergedError, Interrupted, RunTooLong
from chargpt.pipeline.config import load_run_config
from chargpt.pipeline.stage import (
    DATA_DIR,
    check_fits,
    checkpoint_dir,
    model_path,
    report_dir,
    resolve_lr_max,
    run_stage,
    run_stage_parser,
    split_meta,
    time_limit_seconds,
    too_long,
)
from chargpt.tracking import store, view
from chargpt.tracking.plots import plot_training_curve
from chargpt.train import distributed
from chargpt.train.checkpoint import (
    remove_stale_temporaries,
    restore_training_state,
    save_checkpoint,
    save_training_state,
)
from chargpt.train.loop import LoopState, stop_on_signals, train_loop
from chargpt.train.run import TrainingRun, write_outputs
from chargpt.train.setup import autocast_dtype, device_label, prepare

log = logging.getLogger("stages.train")


def main() -> None:
    parser = run_stage_parser(__doc__)
    parser.add_argument("--fresh", action="store_true", help="discard an interrupted run's state and start over")
    args = parser.parse_args()

    cfg = load_run_config(args.run, args.params)
    meta = split_meta()
    check_fits(cfg.name, cfg.model.context, meta)
    ranks, state_path = distributed.from_env(), checkpoint_dir(args.run) / "last.pt"
    if cfg.train.nproc > 1 and not ranks.enabled:
        distributed.relaunch_under_torchrun(cfg.train.nproc)
    if ranks.is_main:
        store.setup(cfg.train.on_tracking_unreachable)  # fails fast on an unreachable server, before any data is read
    device = prepare(cfg.train, ranks.local_rank)
    distributed.init(ranks, device)
    if args.fresh and ranks.is_main:
        shutil.rmtree(state_path.parent, ignore_errors=True)
    if ranks.is_main and (stale := remove_stale_temporaries(state_path)):
        log.info("removed %d half-written state file(s) of killed saves in %s", len(stale), state_path.parent)
    distributed.barrier()  # every rank sees the same saved state, or none
    run = TrainingRun.build(
        cfg,
        device,
        autocast_dtype(cfg.train, device),
        resolve_lr_max(cfg.name, cfg.schedule.lr_min, cfg.schedule.lr_max),
        DATA_DIR,
        ranks,
    )
    saved = restore_training_state(state_path, **run.state_parts) if state_path.exists() else None
    loop_state, curve = (LoopState(**saved["loop"]), saved["curve"]) if saved else (LoopState(), [])
    reports = report_dir(args.run)
    with contextlib.ExitStack() as stack:
        stop = stack.enter_context(stop_on_signals())
        if ranks.is_main:  # rank 0 evaluates, checkpoints and records; the other ranks train their slices
            resume_id = saved["mlflow_run_id"] if saved and store.run_exists(saved["mlflow_run_id"]) else None
            recorded = stack.enter_context(store.start_run(args.run, f"train@{args.run}", device, resume_id, meta))
            if resume_id is None:
                recorded.log_params(run.params())
                recorded.log_range_test(*(reports / f"lr_range_test.{x}" for x in ("csv", "json", "png")), args.run)
            log_step = recorded.step_logger(resumed=resume_id is not None)

            def record(step: int, metrics: dict[str, float]) -> None:
                curve.append({"step": step, **metrics})
                log_step(step, metrics)

            def checkpoint(state: LoopState) -> None:
                save_training_state(
                    state_path, **run.state_parts, loop=asdict(state), curve=curve, mlflow_run_id=recorded.run_id
                )

            hooks = run.hooks(evaluate=run.probe, on_metrics=record, on_checkpoint=checkpoint, stop_requested=stop)
        else:
            hooks = run.hooks(stop_requested=stop)
        try:
            result = train_loop(run.parts(), run.loop_config(time_limit_seconds()), hooks, loop_state)
        except Interrupted as e:
            if ranks.is_main:
                recorded.end("KILLED")
                log.warning("%s (state saved to %s)", e, state_path)
            sys.exit(128 + e.signum)
        except RunTooLong as e:
            if ranks.is_main:
                recorded.end("KILLED", {"failure": str(e)})
                log.error("%s", too_long(f"train@{args.run}", e, device_label(device)))
            sys.exit(1)
        except DivergedError as e:
            if ranks.is_main:
                recorded.end("FAILED", {"failure": str(e), "diverged_at_step": e.step})
                log.error("%s", e)
            sys.exit(1)
        if ranks.is_main:
            save_checkpoint(
                model_path(args.run),
                run.model,
                run.state_parts["config"],
                step=result.step,
                mlflow_run_id=recorded.run_id,
                lr_max=run.lr_max,
            )
            metrics = write_outputs(run, curve, result, reports)
            plot_training_curve(curve, reports / "train_curve.png", f"training: {args.run}")
            recorded.log_training_outputs(metrics, reports, result.step)
    distributed.shutdown()
    if ranks.is_main:
        shutil.rmtree(state_path.parent, ignore_errors=True)  # complete: models/<run>/model.pt holds the run now
        view.refresh_view(log)
        log.info(
            "trained %d steps in %.0fs; val probe BPC %.4f, accuracy %.2f%%",
            result.step,
            result.seconds,
            metrics["val_probe_bpc"],
            100 * metrics["val_probe_accuracy"],
        )


if __name__ == "__main__":
    run_stage(main)
