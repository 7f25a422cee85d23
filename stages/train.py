"""Stage train@<run>: one training run, resumable; final checkpoint, curve and metrics, in MLflow too.

With train.nproc > 1 it relaunches itself under torchrun (DistributedDataParallel); rank 0 alone writes.
"""

import contextlib
import logging
import shutil

from chargpt.device import describe, resolve_amp_dtype
from chargpt.evaluation.scoring import gradient_rms
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
from chargpt.tracking import record
from chargpt.tracking.plots import plot_training_curve
from chargpt.train import distributed
from chargpt.train.checkpoint import (
    remove_stale_temporaries,
    restore_training_state,
    save_checkpoint,
    saved_run_id,
)
from chargpt.train.loop import LoopState, stop_on_signals, train_loop
from chargpt.train.run import build_training_run, loop_hooks, write_outputs
from chargpt.train.setup import prepare

log = logging.getLogger("stages.train")


def main() -> None:
    parser = run_stage_parser(__doc__)
    parser.add_argument("--fresh", action="store_true", help="discard an interrupted run's state and start over")
    args = parser.parse_args()
    train(load_run_config(args.run, args.params), fresh=args.fresh)


def train(cfg: RunConfig, fresh: bool = False) -> None:
    """The stage's work, in the working directory's layout: config, tracking, data, model and optimizer, the loop,
    outputs."""
    meta, name, reports = split_meta(), cfg.name, report_dir(cfg.name)
    check_fits(name, cfg.model.context, meta)
    lr_max = resolve_lr_max(name, cfg.schedule.lr_min, cfg.schedule.lr_max)
    ranks, state_path = distributed.from_env(), checkpoint_dir(name) / "last.pt"
    if cfg.train.nproc > 1 and not ranks.enabled:
        distributed.relaunch_under_torchrun(cfg.train.nproc)
    device = prepare(cfg.train, ranks.local_rank)
    amp_dtype = resolve_amp_dtype(cfg.train.precision, device)
    resuming = ranks.is_main and not fresh and state_path.exists()
    with contextlib.ExitStack() as stack:
        stop_requested = stack.enter_context(stop_on_signals())
        # Rank 0 records (the other ranks: a NullRun); an unreachable server fails here, before any data is read.
        on_unreachable = cfg.train.on_tracking_unreachable if ranks.is_main else None
        saved_id = saved_run_id(state_path) if resuming else None
        recorded = stack.enter_context(record.training_run(on_unreachable, name, device, meta, saved_id, log))
        distributed.init(ranks, device)
        if ranks.is_main:
            clear_leftovers(name, state_path, fresh)
        distributed.barrier()  # every rank sees the same saved state, or none
        run = build_training_run(
            **cfg.training_sections(),
            lr_max=lr_max,
            data_dir=DATA_DIR,
            device=device,
            amp_dtype=amp_dtype,
            ranks=ranks,
            max_seconds=time_limit_seconds(),
        )
        saved = restore_training_state(state_path, **run.state_parts) if state_path.exists() else None
        params = run.params()  # the config by section, and what it resolved to here
        recorded.start_training(params, reports)
        curve = saved["curve"] if saved else []  # the val probe's rows; a resumed run continues its own
        hooks = loop_hooks(
            run,
            recording=ranks.is_main,
            curve=curve,
            log_step=recorded.step_logger(),
            state_path=state_path if ranks.is_main else None,
            tracking_id=recorded.run_id,
            stop_requested=stop_requested,
        )
        with ending_runs(f"train@{name}", describe(device), recorded, report=ranks.is_main):
            loop_state = LoopState(**saved["loop"]) if saved else LoopState()
            result = train_loop(run.parts, run.loop, hooks, loop_state)
        if ranks.is_main:
            save_checkpoint(
                model_path(name),
                run.model,
                run.config,
                step=result.step,
                mlflow_run_id=recorded.run_id,
                lr_max=run.lr_max,
                # for dynamic evaluation's rms update, wherever the model goes
                dynamic_rms=gradient_rms(run.model, run.sampler.data, device),
            )
            metrics = write_outputs(run, curve, result, reports)
            plot_training_curve(curve, reports / "train_curve.png", f"training: {name}")
            recorded.log_training_outputs(metrics, reports, result.step, params, model_path(name))
            shutil.rmtree(state_path.parent, ignore_errors=True)  # complete: models/<run>/model.pt holds the run
    distributed.shutdown()
    if ranks.is_main:
        log.info(
            "trained %d steps in %.0fs; val probe BPC %.4f, accuracy %.2f%%",
            result.step,
            result.seconds,
            metrics["val_probe_bpc"],
            100 * metrics["val_probe_accuracy"],
        )


def clear_leftovers(name: str, state_path, fresh: bool) -> None:
    """An interrupted run's state where --fresh discards it, and what killed writes left half-written."""
    if fresh:
        shutil.rmtree(state_path.parent, ignore_errors=True)
    if stale := remove_stale_temporaries(state_path):
        log.info("removed %d half-written state file(s) of killed saves in %s", len(stale), state_path.parent)
    sweep_temporaries(model_path(name).parent, report_dir(name))


if __name__ == "__main__":
    run_stage(main)
