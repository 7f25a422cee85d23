"""The `chargpt` command. The pipeline itself runs through `dvc repro`; these work around it."""

from __future__ import annotations

import difflib
import importlib
import os
import sys

from chargpt.errors import STAGE_ERRORS

# subcommand -> (module, its parser function, its main(argv) function, what it does)
COMMANDS = {
    "compare": (
        "chargpt.tracking.compare",
        "build_parser",
        "main",
        "one row per named run from MLflow: recipe, iterations, val/test BPC and accuracy",
    ),
    "ui": (
        "chargpt.tracking.ui",
        "ui_parser",
        "ui_main",
        "MLflow's UI, opened on the named runs by test BPC and their charts",
    ),
    "sample": (
        "chargpt.use.commands",
        "sample_parser",
        "sample_main",
        "bytes drawn from a trained model after a prompt",
    ),
    "score": (
        "chargpt.use.commands",
        "score_parser",
        "score_main",
        "a trained model's bits per byte and accuracy on any file (static or dynamic evaluation)",
    ),
    "compress": (
        "chargpt.use.commands",
        "compress_parser",
        "compress_main",
        "lossless compression driven by a trained model",
    ),
    "decompress": (
        "chargpt.use.commands",
        "decompress_parser",
        "decompress_main",
        "restore what `chargpt compress` wrote",
    ),
    "runs": (
        "chargpt.pipeline.dvc_status",
        "build_parser",
        "main",
        "which named runs are trained, up to date or stale, and why (DVC's status, one line a run)",
    ),
    "check": (
        "chargpt.pipeline.config",
        "check_parser",
        "check_main",
        "validate every named run of params.yaml (each stage does it first)",
    ),
    "sync-dvc": (
        "chargpt.pipeline.dvc_sync",
        "build_parser",
        "main",
        "write dvc.yaml's code deps, pipeline_runs.yaml and plots from the code",
    ),
}


def _function(name: str, index: int):
    return getattr(importlib.import_module(COMMANDS[name][0]), COMMANDS[name][index])


def usage() -> str:
    lines = ["usage: chargpt <command> [options]   (run the pipeline with `dvc repro`; see README.md)", "", "commands:"]
    width = max(map(len, COMMANDS))
    lines += [f"  {name:<{width}}  {summary}" for name, (*_, summary) in COMMANDS.items()]
    for name in COMMANDS:
        lines += ["", f"chargpt {name}:", _function(name, 1)().format_usage().rstrip()]
    lines += ["", "`chargpt <command> --help` describes each option."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return
    if argv[0] not in COMMANDS:
        close = difflib.get_close_matches(argv[0], COMMANDS, n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        sys.exit(
            f"chargpt: unknown command {argv[0]!r}; {hint}commands: {', '.join(COMMANDS)} (`chargpt` alone "
            f"describes each)"
        )
    try:
        _function(argv[0], 2)(argv[1:])
    except Exception as e:  # the one boundary: every failure of a command ends in one line and exit 1
        sys.exit(one_line(argv[0], e))


DEBUG = "CHARGPT_DEBUG"


def one_line(command: str, error: Exception) -> str:
    """What a failed command prints: the error in one line, naming the file where there is one. CHARGPT_DEBUG=1
    re-raises it instead, with its traceback."""
    if os.environ.get(DEBUG):
        raise error
    if isinstance(error, STAGE_ERRORS):  # bad input, already said in full
        return f"chargpt {command}: {error}"
    if isinstance(error, OSError):
        where = f"{error.filename}: " if error.filename else ""
        return f"chargpt {command}: {where}{error.strerror or error}"
    return f"chargpt {command}: {type(error).__name__}: {error} ({DEBUG}=1 shows where)"


if __name__ == "__main__":
    main()
