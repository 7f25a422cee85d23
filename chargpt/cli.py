"""The `chargpt` command: `chargpt compare ...`, `chargpt sync-plots` (the pipeline itself runs through `dvc repro`)."""

from __future__ import annotations

import sys


def main() -> None:
    commands = {"compare": "chargpt.compare", "sync-plots": "chargpt.dvc_plots"}
    if len(sys.argv) < 2 or sys.argv[1] not in commands:
        sys.exit(f"usage: chargpt {{{','.join(commands)}}} [options]   (run the pipeline with `dvc repro`)")
    import importlib

    importlib.import_module(commands[sys.argv[1]]).main(sys.argv[2:])
