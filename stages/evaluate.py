"""Stage evaluate@<run>: BPC and next-byte accuracy of the trained model on the whole val and test splits (or a
stated prefix), and with dynamic evaluation where the run sets eval.dynamic.

Each split is scored under the run's own protocol (`<split>_bpc`: eval.stride, the run's precision) and under the
reference protocol every run shares (`<split>_bpc_ref`: consecutive windows of the run's context, the protocol of the
seed's runs), so that runs compare like with like. Where the run's own protocol is the reference, it is one figure,
scored once and reported under both names."""

import logging

from chargpt.data.batches import load_split
from chargpt.device import precision_name, resolve_amp_dtype
from chargpt.evaluation.config import REFERENCE, protocol_label
from chargpt.evaluation.scoring import Score, scores_in_one_walk
from chargpt.io import write_json
from chargpt.pipeline.config import RunConfig, load_run_config
from chargpt.pipeline.harness import run_stage, sweep_temporaries
from chargpt.pipeline.stage import DATA_DIR, model_path, report_dir, run_stage_parser, split_meta
from chargpt.tracking import record, view
from chargpt.tracking.connection import connect
from chargpt.tracking.tags import PROTOCOL_TAG
from chargpt.train.checkpoint import load_model, needed_rms
from chargpt.train.setup import prepare

log = logging.getLogger("stages.evaluate")


def main() -> None:
    args = run_stage_parser(__doc__).parse_args()
    evaluate(load_run_config(args.run, args.params))


def evaluate(cfg: RunConfig) -> None:
    """The stage's work, in the working directory's layout."""
    connection = connect(cfg.train.on_tracking_unreachable)  # fails fast on an unreachable tracking server
    device = prepare(cfg.train)
    sweep_temporaries(report_dir(cfg.name))
    model, state = load_model(model_path(cfg.name), expected=cfg.model)
    model.to(device)
    rms = needed_rms(model_path(cfg.name), state.get("dynamic_rms"), cfg.eval.dynamic and cfg.eval.dynamic.optimizer)
    stride, amp_dtype = cfg.eval.stride or cfg.model.context, resolve_amp_dtype(cfg.train.precision, device)
    metrics: dict = {"iterations": state["step"]}
    for split in ("val", "test"):
        data = load_split(DATA_DIR / f"{split}.bin")
        # A prefix is reported under its own name, never as the whole-split figure.
        name = f"{split}_prefix" if cfg.eval.max_bytes and len(data) > cfg.eval.max_bytes else split
        data = data[: cfg.eval.max_bytes] if name != split else data
        adaptive = split in cfg.eval.adaptive_splits
        mixture = cfg.eval.mixture if adaptive else None
        dynamic = cfg.eval.dynamic if adaptive else None  # beside the static figure, never in its place
        (static, seconds), *adapted = scores_in_one_walk(
            model, data, cfg.model.context, cfg.eval.batch_size, stride, device, amp_dtype, dynamic, mixture, rms, True
        )
        metrics |= static_metrics(name, static, seconds, stride)
        metrics |= reference_metrics(name, model, data, cfg, stride, device, amp_dtype, metrics)
        if adapted:
            metrics |= dynamic_metrics(name, *adapted[0])
    metrics["protocol"] = {
        "context": cfg.model.context,
        "stride": stride,
        "precision": precision_name(amp_dtype),
        "scored": "every byte after the first of each split (or prefix), exactly once",
        "reference": REFERENCE,
        **({"dynamic": cfg.eval.dynamic.model_dump()} if cfg.eval.dynamic else {}),
        **({"mixture": cfg.eval.mixture.model_dump()} if cfg.eval.mixture else {}),
        **({"adaptive_splits": cfg.eval.adaptive_splits} if cfg.eval.dynamic or cfg.eval.mixture else {}),
    }
    write_json(report_dir(cfg.name) / "eval.json", metrics)

    run_id = state.get("mlflow_run_id")  # the training run, continued where this store holds it
    with record.start_run(connection, cfg.name, f"evaluate@{cfg.name}", device, run_id, split_meta()) as recorded:
        # BPC and accuracy on the run and on its model (MLflow's model view)
        recorded.log_metrics({k: float(v) for k, v in metrics.items() if isinstance(v, int | float)}, state["step"])
        recorded.log_params({"eval.resolved_stride": stride, "eval.resolved_precision": precision_name(amp_dtype)})
        recorded.set_tags({PROTOCOL_TAG: protocol_label(stride, cfg.model.context, precision_name(amp_dtype))})
        recorded.log_artifact(report_dir(cfg.name) / "eval.json")
    view.refresh_view(connection, log)


def static_metrics(
    name: str, score: Score, seconds: float, stride: int, how: str = "in the run's own protocol"
) -> dict:
    """BPC and accuracy of split (or prefix) `name` under the window protocol of `stride`, and the seconds they took;
    the mixture's too, where it scored."""
    log.info(
        "%s: %.5f BPC, accuracy %.2f%%, over %d bytes, %s (stride %d, %.0f s)",
        name,
        score.bpc,
        100 * score.accuracy,
        score.bytes_scored,
        how,
        stride,
        seconds,
    )
    return {
        f"{name}_bpc": round(score.bpc, 5),
        f"{name}_accuracy": round(score.accuracy, 5),
        f"{name}_bytes_scored": score.bytes_scored,
        f"{name}_seconds": round(seconds, 1),
    } | mixed_metrics(f"{name}_bpc_mixed", f"{name}_accuracy_mixed", score, "")


def mixed_metrics(bpc: str, accuracy: str, score, how: str) -> dict:
    """The mixture's figures under these names, where it scored."""
    if score.mixed is None:
        return {}
    log.info(
        "  mixed with the context model%s: %.5f BPC, accuracy %.2f%%", how, score.mixed.bpc, 100 * score.mixed.accuracy
    )
    return {bpc: round(score.mixed.bpc, 5), accuracy: round(score.mixed.accuracy, 5)}


def reference_metrics(name: str, model, data, cfg: RunConfig, stride: int, device, amp_dtype, own: dict) -> dict:
    """`name`'s BPC and accuracy under the reference protocol (REFERENCE): the run's own figures where its stride is
    the context (one figure, not scored twice), else scored again in consecutive windows."""
    if stride == cfg.model.context:
        return {f"{name}_bpc_ref": own[f"{name}_bpc"], f"{name}_accuracy_ref": own[f"{name}_accuracy"]}
    [(score, seconds)] = scores_in_one_walk(
        model, data, cfg.model.context, cfg.eval.batch_size, cfg.model.context, device, amp_dtype, progress=True
    )
    scored = static_metrics(name, score, seconds, cfg.model.context, "in consecutive windows")
    return {f"{name}_bpc_ref": scored[f"{name}_bpc"], f"{name}_accuracy_ref": scored[f"{name}_accuracy"],
            f"{name}_ref_seconds": scored[f"{name}_seconds"]}  # fmt: skip


def dynamic_metrics(name: str, dynamic: Score, seconds: float) -> dict:
    """The same with dynamic evaluation (eval.dynamic), and its speed (its own steps: the context model's counts,
    which it shares with the static walk's mixture, are paid by whichever reaches them first); mixed too, where
    eval.mixture is set."""
    log.info(
        "%s: %.5f BPC, accuracy %.2f%%, with dynamic evaluation (%.0f s, %.0f bytes/s)",
        name,
        dynamic.bpc,
        100 * dynamic.accuracy,
        seconds,
        dynamic.bytes_scored / seconds,
    )
    return {
        f"{name}_bpc_dynamic": round(dynamic.bpc, 5),
        f"{name}_accuracy_dynamic": round(dynamic.accuracy, 5),
        f"{name}_dynamic_seconds": round(seconds, 1),
        f"{name}_dynamic_bytes_per_second": round(dynamic.bytes_scored / seconds, 1),
    } | mixed_metrics(f"{name}_bpc_dynamic_mixed", f"{name}_accuracy_dynamic_mixed", dynamic, ", dynamic")


if __name__ == "__main__":
    run_stage(main)
