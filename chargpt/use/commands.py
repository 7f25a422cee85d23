"""The commands that use a trained model (models/<run>/model.pt, or any checkpoint file):

    chargpt sample   --run NAME [--prompt TEXT | --prompt-file F] [--bytes N] [--temperature T] [--top-k K]
                     [--seed S] [--output F [--force]]
    chargpt score    FILE --run NAME [--stride S] [--dynamic] [--mix]      (BPC and next-byte accuracy, as JSON)
    chargpt compress   IN OUT --run NAME [--stride S] [--dynamic] [--mix] [--force]
    chargpt decompress IN OUT --run NAME [--force]

--checkpoint PATH stands for --run NAME everywhere. A clone that did not train the run fetches its model with
`dvc pull train@NAME`. --dynamic uses the run's eval.dynamic settings from params.yaml (or the defaults), --mix its
eval.mixture (the model mixed with a context model of the bytes before). An output
that exists is refused unless --force is given (then it is replaced once the new one is complete); an output that is
one of the inputs is refused even with --force.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import torch

from chargpt.errors import ConfigError
from chargpt.evaluation.config import DynamicEvalConfig, MixtureConfig
from chargpt.evaluation.scoring import check_stride, dynamic_score, split_score
from chargpt.io import check_output, file_problem
from chargpt.pipeline.config import load_run_config, run_name_argument
from chargpt.train.checkpoint import needed_rms
from chargpt.use.compression import DEFAULT_MAX_LENGTH, compress, decompress, write
from chargpt.use.inference import checkpoint_path, file_sha256, load_adaptable, load_trained, sample


def _model_arguments(parser: argparse.ArgumentParser) -> None:
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--run", type=run_name_argument, help="a run of params.yaml: its models/<run>/model.pt")
    which.add_argument("--checkpoint", type=Path, help="a model checkpoint file instead")
    parser.add_argument("--params", default="params.yaml", help="with --run and --dynamic: where its settings are")


def _parser(name: str, doc: str) -> argparse.ArgumentParser:
    return argparse.ArgumentParser(prog=f"chargpt {name}", description=doc)


def _dynamic_settings(args: argparse.Namespace) -> DynamicEvalConfig:
    if args.run is None:
        return DynamicEvalConfig()
    return load_run_config(args.run, args.params).eval.dynamic or DynamicEvalConfig()


def _mixture_settings(args: argparse.Namespace) -> MixtureConfig | None:
    if not args.mix:
        return None
    if args.run is None:
        return MixtureConfig()
    return load_run_config(args.run, args.params).eval.mixture or MixtureConfig()


def _mix_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--mix",
        action="store_true",
        help="mix the model with a context model of the bytes before (the run's eval.mixture, or its defaults)",
    )


def _force_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--force", action="store_true", help="replace an existing output (never an input), once the new one is complete"
    )


def _read(path: str) -> bytes:
    if (problem := file_problem(path)) is not None:
        raise ConfigError(f"{path}: cannot read it: {problem}")
    try:
        return Path(path).read_bytes()
    except OSError as e:
        raise ConfigError(f"{path}: cannot read it ({e.strerror})") from None


def sample_parser() -> argparse.ArgumentParser:
    parser = _parser("sample", "Bytes drawn from the model after a prompt, written raw (invalid UTF-8 included).")
    _model_arguments(parser)
    prompt = parser.add_mutually_exclusive_group()
    prompt.add_argument("--prompt", default="\n", help="text to continue (UTF-8; default: a newline)")
    prompt.add_argument("--prompt-file", type=Path, help="bytes to continue")
    parser.add_argument("--bytes", type=int, default=500, help="how many bytes to draw (default 500)")
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--top-k", type=int, help="draw among the k likeliest bytes only")
    parser.add_argument("--seed", type=int, default=0, help="the same seed gives the same bytes (on the CPU)")
    parser.add_argument("--output", type=Path, help="write to this file (default: standard output)")
    _force_argument(parser)
    return parser


def sample_main(argv: list[str] | None = None) -> None:
    args = sample_parser().parse_args(argv)
    path = checkpoint_path(args.run, args.checkpoint)
    if args.output:
        check_output(args.output, args.force, [args.prompt_file, path])
    model = load_trained(path)
    prompt = _read(args.prompt_file) if args.prompt_file else args.prompt.encode()
    if not prompt:
        raise ConfigError(f"{args.prompt_file or '--prompt'}: empty: the prompt needs at least one byte to continue")
    if args.bytes < 0 or (args.top_k is not None and args.top_k < 1) or args.temperature <= 0:
        raise ConfigError(
            f"--bytes must be >= 0, --top-k >= 1, --temperature > 0; got {args.bytes}, {args.top_k}, {args.temperature}"
        )
    text = sample(model, prompt, args.bytes, args.temperature, args.top_k, args.seed)
    if args.output:
        write(args.output, text)
    else:
        sys.stdout.buffer.write(text)
        sys.stdout.buffer.flush()


def score_parser() -> argparse.ArgumentParser:
    parser = _parser(
        "score",
        "The model's bits per byte and next-byte accuracy on a file. With --run, scored as that run's evaluate stage "
        "scores (its eval.stride; --dynamic: its eval.dynamic), so that `score data/processed/test.bin --run R` "
        "gives R's test_bpc (up to the run's precision: evaluate may score in bf16, score does in fp32).",
    )
    parser.add_argument("file")
    _model_arguments(parser)
    parser.add_argument(
        "--stride",
        type=int,
        help="sliding windows: score each window's last STRIDE bytes (default: the run's eval.stride; with "
        "--checkpoint, or where the run sets none, consecutive windows of the context)",
    )
    parser.add_argument("--dynamic", action="store_true", help="dynamic evaluation (the run's eval.dynamic)")
    _mix_argument(parser)
    parser.add_argument("--batch-size", type=int, default=64)
    return parser


def score_main(argv: list[str] | None = None) -> None:
    args = score_parser().parse_args(argv)
    path = checkpoint_path(args.run, args.checkpoint)
    model, stored_rms = load_adaptable(path)
    raw = _read(args.file)
    if len(raw) < 2:
        raise ConfigError(
            f"{args.file}: {len(raw)} byte(s): nothing to score (each byte is predicted from earlier ones)"
        )
    data = torch.frombuffer(bytearray(raw), dtype=torch.uint8)
    context = model.cfg.context
    run_stride = load_run_config(args.run, args.params).eval.stride if args.run and not args.dynamic else None
    stride, source = (args.stride, "--stride") if args.stride else (run_stride, f"runs.{args.run}.eval.stride")
    check_stride(stride, context)
    mixture = _mixture_settings(args)
    start = time.perf_counter()
    if args.dynamic:
        settings = _dynamic_settings(args)
        if args.stride:
            settings = settings.model_copy(update={"stride": args.stride})
        stride, source = settings.stride, ("--stride" if args.stride else f"runs.{args.run}.eval.dynamic.stride")
        rms = needed_rms(path, stored_rms, settings.optimizer)
        score = dynamic_score(model, data, context, settings, progress=True, mixture=mixture, rms=rms)
    else:
        settings = None
        score = split_score(model, data, context, args.batch_size, stride, progress=True, mixture=mixture)
    seconds = time.perf_counter() - start
    suffix = "_dynamic" if args.dynamic else ""
    print(
        json.dumps(
            {
                "file": args.file,
                f"bpc{suffix}": round(score.bpc, 5),
                f"accuracy{suffix}": round(score.accuracy, 5),
                **(
                    {
                        f"bpc{suffix}_mixed": round(score.mixed.bpc, 5),
                        f"accuracy{suffix}_mixed": round(score.mixed.accuracy, 5),
                    }
                    if score.mixed
                    else {}
                ),
                "bytes_scored": score.bytes_scored,
                "context": context,
                "stride": stride or context,
                "protocol": f"sliding windows ({source})" if stride and stride != context else "consecutive windows",
                "precision": "fp32",
                **({"dynamic": settings.model_dump()} if settings else {}),
                **({"mixture": mixture.model_dump()} if mixture else {}),
                "seconds": round(seconds, 2),
                "bytes_per_second": round(score.bytes_scored / seconds, 1),
            }
        )
    )


def compress_parser() -> argparse.ArgumentParser:
    parser = _parser("compress", "Lossless compression with the model's next-byte distribution (range coding).")
    parser.add_argument("input")
    parser.add_argument("output")
    _model_arguments(parser)
    parser.add_argument("--dynamic", action="store_true", help="adapt the model as it codes (the run's eval.dynamic)")
    _mix_argument(parser)
    parser.add_argument(
        "--stride",
        type=int,
        help="sliding windows, as `score --stride` (coded one window at a time, so several times slower). Default: "
        "consecutive windows, not the run's eval.stride: those are coded 32 lanes side by side",
    )
    _force_argument(parser)
    return parser


def _coding_protocol(args: argparse.Namespace) -> str:
    if args.dynamic:
        windows = "dynamic evaluation (eval.dynamic's stride)"
    else:
        windows = f"sliding windows, stride {args.stride}" if args.stride else "consecutive windows"
    return windows + (", mixed with a context model" if args.mix else "")


def compress_main(argv: list[str] | None = None) -> None:
    args = compress_parser().parse_args(argv)
    path = checkpoint_path(args.run, args.checkpoint)
    check_output(args.output, args.force, [args.input, path])
    data = _read(args.input)
    model, stored_rms = load_adaptable(path)
    dynamic = _dynamic_settings(args) if args.dynamic else None
    blob, stats = compress(
        model,
        file_sha256(path),
        data,
        dynamic,
        stride=args.stride,
        mixture=_mixture_settings(args),
        rms=needed_rms(path, stored_rms, dynamic and dynamic.optimizer),
    )
    write(args.output, blob)
    print(
        json.dumps(
            {
                "input_bytes": stats.n_bytes,
                "output_bytes": stats.compressed_bytes,
                "header_bytes": stats.header_bytes,
                "bits_per_byte": round(stats.bits_per_byte, 5),
                "protocol": _coding_protocol(args),
                "seconds": round(stats.seconds, 2),
                "bytes_per_second": round(stats.n_bytes / stats.seconds, 1),
            }
        )
    )


def decompress_parser() -> argparse.ArgumentParser:
    parser = _parser("decompress", "Restore a file made by `chargpt compress`, with the same model and setup.")
    parser.add_argument("input")
    parser.add_argument("output")
    _model_arguments(parser)
    parser.add_argument(
        "--max-length",
        type=int,
        default=DEFAULT_MAX_LENGTH,
        help=f"refuse a file whose header declares more bytes than this (default {DEFAULT_MAX_LENGTH:,})",
    )
    _force_argument(parser)
    return parser


def decompress_main(argv: list[str] | None = None) -> None:
    args = decompress_parser().parse_args(argv)
    path = checkpoint_path(args.run, args.checkpoint)
    check_output(args.output, args.force, [args.input, path])
    where = Path(args.output).resolve().parent
    while not where.exists():  # the folder the output goes to may not be there yet
        where = where.parent
    free = shutil.disk_usage(where).free
    limit, why = (args.max_length, "--max-length") if args.max_length <= free else (free, "the free disk space")
    blob = _read(args.input)
    model, rms = load_adaptable(path)
    data, stats = decompress(model, file_sha256(path), blob, args.input, str(path), limit, why, rms=rms)
    write(args.output, data)
    print(
        json.dumps(
            {
                "output_bytes": stats.n_bytes,
                "seconds": round(stats.seconds, 2),
                "bytes_per_second": round(stats.n_bytes / max(stats.seconds, 1e-9), 1),
            }
        )
    )
