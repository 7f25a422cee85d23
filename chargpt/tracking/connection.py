"""Where MLflow records: the store's URI, its checks, and the project's experiment.

Default store: the SQLite file `mlflow.db` at the project root, addressed by an absolute URI so that runs
launched from DVC's temporary experiment copies (.dvc/tmp/exps/...) land in the same store.
`MLFLOW_TRACKING_URI` overrides it (a team's tracking server). `connect` checks the store and returns the
Connection that recording and reading take as an argument: nothing hands the URI on through the environment.
"""

from __future__ import annotations

import base64
import contextlib
import logging
import os
import re
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from filelock import FileLock

from chargpt.errors import TrackingError
from chargpt.tracking import lazy_import

mlflow, sqlalchemy = lazy_import("mlflow"), lazy_import("sqlalchemy")

log = logging.getLogger(__name__)

EXPERIMENT = "chargpt"
# MLflow 3's UI opens an experiment of this kind on its runs (the model-training view), not on GenAI traces.
EXPERIMENT_TAGS = {
    "mlflow.experimentKind": "custom_model_development",
    "mlflow.note.content": "One MLflow run per named run of params.yaml: compare test_bpc_ref, every run scored in "
    "consecutive windows of its context; test_bpc is each run's own protocol (the chargpt.protocol tag).",
}


def project_root(cwd: Path | None = None) -> Path:
    """The repository the stages belong to, also when DVC runs them in a temporary copy inside it."""
    cwd = (cwd or Path.cwd()).resolve()
    parts = cwd.parts
    for i in range(len(parts) - 2):
        if parts[i : i + 3] == (".dvc", "tmp", "exps"):
            return Path(*parts[:i])
    return cwd


def tracking_uri(root: Path | None = None) -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or local_uri(root)


SECRET_QUERY_KEYS = ("token", "password", "passwd", "secret", "key", "auth", "signature", "credential")


def redact(uri: str) -> str:
    """The URI as it may be shown, logged or stored: a `user:password@` becomes `***@`, and the value of a query
    parameter that names a secret (token, password, key, ...) becomes `***`."""
    parts = urllib.parse.urlsplit(uri)
    pairs = urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
    secret = [any(word in k.lower() for word in SECRET_QUERY_KEYS) for k, _ in pairs]
    if "@" not in parts.netloc and not any(secret):
        return uri  # as written (urlunsplit would turn sqlite:////path into sqlite://path)
    netloc = "***@" + parts.netloc.rpartition("@")[2] if "@" in parts.netloc else parts.netloc
    query = urllib.parse.urlencode([(k, "***" if hide else v) for (k, v), hide in zip(pairs, secret)], safe="*/:")
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc, query=query))


def redact_text(text: str) -> str:
    """Any `scheme://user:password@` inside a message (an error from MLflow or urllib may quote the URI)."""
    return re.sub(r"//[^/@\s]+@", "//***@", text)


def check_reachable(uri: str, timeout_s: float = 5.0) -> None:
    """Fail fast on a tracking server that does not answer (MLflow's own retries take minutes). Credentials in the
    URI (`https://user:password@host`) go as HTTP basic auth, as MLflow sends them; urllib would not."""
    if not uri.startswith(("http://", "https://")):
        return
    parts = urllib.parse.urlsplit(uri)
    request = urllib.request.Request(
        urllib.parse.urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2])).rstrip("/") + "/health"
    )
    if parts.username is not None:
        user = urllib.parse.unquote(parts.username) + ":" + urllib.parse.unquote(parts.password or "")
        request.add_header("Authorization", "Basic " + base64.b64encode(user.encode()).decode())
    try:
        with urllib.request.urlopen(request, timeout=timeout_s):
            pass
    except (urllib.error.URLError, TimeoutError, ConnectionError, OSError, ValueError) as e:
        raise TrackingError(
            f"MLflow tracking server {redact(uri)} is unreachable ({redact_text(str(getattr(e, 'reason', e)))}); "
            f"start it, or unset MLFLOW_TRACKING_URI to log to the local SQLite store"
        ) from None


def local_uri(root: Path | None = None) -> str:
    # timeout: how long a writer waits for SQLite's lock (default 5 s). Queued experiments (`dvc queue start -j 2`)
    # write to the one store at once, and on a loaded machine 5 s is not always enough.
    return f"sqlite:///{(root or project_root()) / 'mlflow.db'}?timeout=60"


def sqlite_path(uri: str) -> str | None:
    return uri.removeprefix("sqlite:///").split("?")[0] if uri.startswith("sqlite:///") else None


def store_error(uri: str, error: Exception) -> TrackingError:
    """One line for a store that fails: which file or server, and what to do."""
    reason = redact_text(" ".join(str(getattr(error, "orig", None) or error).split()))[:200]
    if db := sqlite_path(uri):
        return TrackingError(
            f"{db}: not a readable MLflow store ({reason}); move it aside to start a new one "
            f"(mv {db} {db}.broken), or set MLFLOW_TRACKING_URI to another store"
        )
    return TrackingError(f"MLflow store {redact(uri)} failed ({reason})")


def store_errors() -> tuple[type[Exception], ...]:
    """What a failing store raises."""
    return sqlalchemy.exc.SQLAlchemyError, mlflow.exceptions.MlflowException


TRACKING = "CHARGPT_TRACKING"


def enabled() -> bool:
    """CHARGPT_TRACKING: mlflow (the default) records every run; off records nothing, and changes no output."""
    value = os.environ.get(TRACKING, "mlflow")
    if value not in ("mlflow", "off"):
        raise TrackingError(f"{TRACKING}={value!r}: expected mlflow (the default) or off")
    return value == "mlflow"


@contextlib.contextmanager
def fluent_uri(uri: str):
    """While inside, MLflow's fluent functions (those that take no URI) read `uri`; the previous one after."""
    previous = mlflow.get_tracking_uri() if mlflow.is_tracking_uri_set() else None
    mlflow.set_tracking_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(previous)


@dataclass(frozen=True)
class Connection:
    """A checked store and the project's experiment in it."""

    uri: str
    experiment_id: str
    fallback_from: str | None = None  # the server it could not reach, redacted (train.on_tracking_unreachable: local)

    def client(self) -> mlflow.MlflowClient:
        return mlflow.MlflowClient(tracking_uri=self.uri)


def connect(on_unreachable: str = "fail", root: Path | None = None) -> Connection | None:
    """The store (checked: a server that does not answer fails fast, or falls back to the local store where
    `on_unreachable` is local) with the project's experiment in it, created where missing; None where tracking is
    off."""
    if not enabled():
        return None
    uri, fallback_from = tracking_uri(root), None
    try:
        check_reachable(uri)
    except TrackingError as e:
        if on_unreachable != "local":
            raise
        log.warning(
            "%s; logging to the local store %s instead (train.on_tracking_unreachable: local)", e, local_uri(root)
        )
        uri, fallback_from = local_uri(root), redact(uri)
    db = sqlite_path(uri)
    # Stages running at once (dvc queue, -j 2) would both create and migrate a new SQLite store; one would fail.
    lock = FileLock(f"{db}.lock") if db else contextlib.nullcontext()
    try:
        with lock:
            client = mlflow.MlflowClient(tracking_uri=uri)  # opening a new SQLite store creates its tables
            experiment = client.get_experiment_by_name(EXPERIMENT)
            if experiment is None:
                # An absolute artifact location: otherwise a SQLite store puts artifacts under the current
                # directory, which for a DVC temporary copy is deleted after the run.
                artifacts = (project_root(root) / "mlartifacts").as_uri() if uri == local_uri(root) else None
                client.create_experiment(EXPERIMENT, artifact_location=artifacts, tags=EXPERIMENT_TAGS)
                experiment = client.get_experiment_by_name(EXPERIMENT)
            for key, value in EXPERIMENT_TAGS.items():  # a store made by an older version lacks them
                if experiment.tags.get(key) != value:
                    client.set_experiment_tag(experiment.experiment_id, key, value)
            return Connection(uri, experiment.experiment_id, fallback_from)
    except store_errors() as e:
        raise store_error(uri, e) from None
