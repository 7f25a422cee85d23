"""`chargpt ui`: publish the comparison view (tracking/view.py), print its links, and start MLflow's UI on the
project's store as the chargpt MLflow app (tracking/ui_app.py)."""

from __future__ import annotations

import argparse
import logging
import os
import socket
import sys
from importlib.metadata import entry_points
from pathlib import Path

from chargpt.errors import TrackingError
from chargpt.tracking import connection as store
from chargpt.tracking.compare import find_project
from chargpt.tracking.view import models_path, publish_view, view_path

UI_APP = "chargpt"  # `mlflow ui --app-name chargpt` (tracking/ui_app.py)
NO_JOBS = ("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")  # MLflow's server without its GenAI job runner
log = logging.getLogger(__name__)


LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")


def port_number(text: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise argparse.ArgumentTypeError(f"expected a port number from 1 to 65535, got {text!r}")
    return int(text)


def check_can_serve(host: str, port: int) -> None:
    """Fail in one line where the address is taken or not this machine's (MLflow's server would print uvicorn's
    error and still exit 0), and warn where it is reachable from other machines."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
        try:
            probe.bind((host, port))
        except OSError as e:
            raise TrackingError(
                f"cannot serve on {host}:{port} ({e.strerror or e}); pass another --port, or stop what holds it"
            ) from None
    if host not in LOCAL_HOSTS:
        log.warning(
            "serving on %s: MLflow's server has no authentication, so anyone who reaches this machine on port %d "
            "can read, change and delete the runs; --host 127.0.0.1 keeps it to this machine",
            host,
            port,
        )


def ui_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="chargpt ui",
        description="MLflow's UI over the project's store (MLflow's server, as the chargpt MLflow app). In a browser "
        "with no choice of its own yet, MLflow's home opens in model-training mode and the experiment on its named "
        "runs by test BPC, with BPC and accuracy columns. It serves at http://HOST:PORT (default "
        "http://127.0.0.1:5000) and prints three links: that table, its BPC charts, and the trained models.",
    )
    parser.add_argument("--port", type=port_number, default=5000, help="the port it serves on (default 5000)")
    parser.add_argument(
        "--host", default="127.0.0.1", help="the address it serves on (default 127.0.0.1: this machine)"
    )
    parser.add_argument("--repo", type=Path, help="the project (default: the one holding the current directory)")
    return parser


def ui_main(argv: list[str] | None = None) -> None:
    """Publish the comparison view, print its URLs, then run `mlflow ui` on the project's store."""
    args = ui_parser().parse_args(argv)
    root = args.repo.resolve() if args.repo else find_project()
    uri = store.tracking_uri(root)
    store.check_reachable(uri)  # a server that does not answer: one line within seconds, not MLflow's minutes
    experiment_id = publish_view(root, uri)
    if experiment_id is None:
        raise TrackingError(
            f"{root}: no named run recorded yet; `dvc repro evaluate@quickstart` trains and records one"
        )
    server = uri.startswith(("http://", "https://"))  # MLFLOW_TRACKING_URI names a team's tracking server
    base = store.redact(uri).rstrip("/") if server else f"http://{args.host}:{args.port}"
    print(
        f"runs by test BPC:  {base}{view_path(experiment_id)}\n"
        f"their BPC charts:  {base}{view_path(experiment_id, 'CHART')}\n"
        f"trained models:    {base}{models_path(experiment_id)}",
        flush=True,
    )
    if server:  # its own UI serves the runs; a local one cannot open a server's store
        print(f"(the runs are on the tracking server {store.redact(uri)}: its UI serves these links; started as "
              f"`mlflow server --app-name {UI_APP}`, it opens on them without one)", flush=True)  # fmt: skip
        return
    if not any(e.name == UI_APP for e in entry_points(group="mlflow.app")):
        raise TrackingError(
            f"MLflow finds no '{UI_APP}' app (the mlflow.app entry point in pyproject.toml): this environment "
            f"predates it; reinstall the project: pip install -e ."
        )
    check_can_serve(args.host, args.port)
    # the chargpt app: MLflow's server, whose page seeds a new browser with this view (tracking/ui_app.py)
    # one worker: a UI for this machine's user, up in about half the time MLflow's default four take
    command = ["mlflow", "ui", "--app-name", UI_APP, "--backend-store-uri", uri, "--workers", "1", "--host", args.host]
    # no job runner: it runs MLflow's GenAI jobs, which chargpt has none of, in more processes that slow the
    # server's start (bench/mlflow_server_start.sh); a value the user set stays
    os.environ.setdefault(NO_JOBS[0], NO_JOBS[1])
    os.execvp(sys.executable, [sys.executable, "-m", *command, "--port", str(args.port)])
