"""Stage train@<run>: one training run, resumable; final checkpoint, curve and metrics, in MLflow too.

With train.nproc > 1 it relaunches itself under torchrun (DistributedDataParallel); rank 0 alone writes.
"""

import contextlib
import logging
import shutil

from chargpt.device import describe, resolve_amp_dtype
from chargpt.pipeline.config import RunConfig, load_run_config
from chargpt.pipeline.harness import ending_runs, run_stage, sweep_temporaries, time_limit_seconds
from chargpt.pipeline.stage import (
    DATA_DIR,
    check_fits,
    checkpoint_dir,
    model_path,
    report_dir,
    resolve_lr_max,
    run_stage_parser,
    split_meta,
)
from chargpt.tracking import record, view
from chargpt.tracking.connection import Connection, connect
from chargpt.tracking.plots import plot_training_curve
from chargpt.train import distributed
from chargpt.train.checkpoint import remove_stale_temporaries, restore_training_state, save_checkpoint
from chargpt.train.loop import LoopState, stop_on_signals, train_loop
from chargpt.train.run import RunHooks, TrainingRun, write_outputs
from chargpt.train.setup import prepare

log = logging.getLogger("stages.train")


def main() -> None:
    parser = run_stage_parser(__doc__)
    parser.add_argument("--fresh", action="store_true", help="discard an interrupted run's state and start over")
    args = parser.parse_args()
    train(load_run_config(args.run, args.params), fresh=args.fresh)


def train(cfg: RunConfig, fresh: bool = False) -> tuple[TrainingRun, dict | None]:
    """The stage's work, in the working directory's layout (bench/recipe_sweep.py runs it too): the run's parts
    and its train_metrics.json as a dict (None on the ranks that do not write)."""
    meta, name = split_meta(), cfg.name
    check_fits(name, cfg.model.context, meta)
    ranks, state_path = distributed.from_env(), checkpoint_dir(name) / "last.pt"
    if cfg.train.nproc > 1 and not ranks.enabled:
        distributed.relaunch_under_torchrun(cfg.train.nproc)
    # fails fast on an unreachable server, before any data is read
    connection = connect(cfg.train.on_tracking_unreachable) if ranks.is_main else None
    device = prepare(cfg.train, ranks.local_rank)
    distributed.init(ranks, device)
    if ranks.is_main:
        if fresh:
            shutil.rmtree(state_path.parent, ignore_errors=True)
        if stale := remove_stale_temporaries(state_path):
            log.info("removed %d half-written state file(s) of killed saves in %s", len(stale), state_path.parent)
        sweep_temporaries(model_path(name).parent, report_dir(name))
    distributed.barrier()  # every rank sees the same saved state, or none
    lr_max = resolve_lr_max(name, cfg.schedule.lr_min, cfg.schedule.lr_max)
    run = TrainingRun.build(cfg, device, resolve_amp_dtype(cfg.train.precision, device), lr_max, DATA_DIR, ranks)
    saved = restore_training_state(state_path, **run.state_parts) if state_path.exists() else None
    metrics = None
    with contextlib.ExitStack() as stack:
        hooks = RunHooks(run, stack.enter_context(stop_on_signals()), recording=ranks.is_main)
        recorded = start_recording(stack, hooks, saved, state_path, meta, connection) if ranks.is_main else None
        with ending_runs(f"train@{name}", describe(device), recorded, report=ranks.is_main):
            loop_state = LoopState(**saved["loop"]) if saved else LoopState()
            result = train_loop(run.parts(), run.loop_config(time_limit_seconds()), hooks, loop_state)
        if ranks.is_main:
            save_checkpoint(
                model_path(name),
                run.final_model,
                run.state_parts["config"],
                step=result.step,
                mlflow_run_id=recorded.run_id,
                lr_max=run.lr_max,
            )
            metrics = write_outputs(run, hooks.curve, result, report_dir(name))
            plot_training_curve(hooks.curve, report_dir(name) / "train_curve.png", f"training: {name}")
            recorded.log_model(run.params(), weights=model_path(name))  # MLflow's model view; DVC keeps the weights
            recorded.log_training_outputs(metrics, report_dir(name), result.step)  # linked to the model too
    distributed.shutdown()
    if ranks.is_main:
        shutil.rmtree(state_path.parent, ignore_errors=True)  # complete: models/<run>/model.pt holds the run now
        view.refresh_view(connection, log)
        log.info(
            "trained %d steps in %.0fs; val probe BPC %.4f, accuracy %.2f%%",
            result.step,
            result.seconds,
            metrics["val_probe_bpc"],
            100 * metrics["val_probe_accuracy"],
        )
    return run, metrics


def start_recording(
    stack, hooks: RunHooks, saved: dict | None, state_path, meta: dict, connection: Connection | None
) -> record.RecordedRun | record.NullRun:
    """The run's MLflow run (continued where the saved state names one the store still holds), and the hooks
    wired to it: the curve so far, its step logger, and checkpoints that name it."""
    run, name = hooks.run, hooks.run.cfg.name
    resume_id = saved["mlflow_run_id"] if saved and record.run_exists(connection, saved["mlflow_run_id"]) else None
    recorded = stack.enter_context(record.start_run(connection, name, f"train@{name}", run.device, resume_id, meta))
    if resume_id is None:
        recorded.log_params(run.params())
        recorded.log_range_test(*(report_dir(name) / f"lr_range_test.{x}" for x in ("csv", "json", "png")), name)
    hooks.curve = saved["curve"] if saved else []
    hooks.log_step, hooks.state_path = recorded.step_logger(resumed=resume_id is not None), state_path
    hooks.tracking_id = recorded.run_id
    return recorded


if __name__ == "__main__":
    run_stage(main)
