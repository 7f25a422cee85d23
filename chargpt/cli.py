"""The `chargpt` command. The pipeline itself runs through `dvc repro`; these work around it."""

from __future__ import annotations

import importlib
import sys

from chargpt.errors import STAGE_ERRORS

# subcommand -> (module with main(argv) and build_parser(), what it does)
COMMANDS = {
    "compare": ("chargpt.compare", "one row per named run from MLflow: recipe, iterations, val/test BPC"),
    "sync-dvc": ("chargpt.dvc_sync", "write dvc.yaml's code deps, pipeline_runs.yaml and plots from the code"),
}


def usage() -> str:
    lines = ["usage: chargpt <command> [options]   (run the pipeline with `dvc repro`; see README.md)", "", "commands:"]
    width = max(map(len, COMMANDS))
    lines += [f"  {name:<{width}}  {summary}" for name, (_, summary) in COMMANDS.items()]
    for name, (module, _) in COMMANDS.items():
        lines += ["", f"chargpt {name}:", importlib.import_module(module).build_parser().format_usage().rstrip()]
    lines += ["", "`chargpt <command> --help` describes each option."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return
    if argv[0] not in COMMANDS:
        sys.exit(f"chargpt: unknown command {argv[0]!r}\n\n{usage()}")
    module = importlib.import_module(COMMANDS[argv[0]][0])
    try:
        module.main(argv[1:])
    except STAGE_ERRORS as e:  # bad input: one line naming it
        sys.exit(f"chargpt {argv[0]}: {e}")


if __name__ == "__main__":
    main()
