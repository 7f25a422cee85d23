"""The locked environment (requirements/*.lock, written by requirements/lock.py) and what it protects."""

import re
import tomllib
from importlib import metadata
from pathlib import Path

import mlflow
from conftest import REPO
from packaging.requirements import Requirement


def pins(lock: Path) -> dict[str, tuple[str, int]]:
    """{name: (version, number of hashes)} of a lock."""
    out, name = {}, None
    for line in lock.read_text().splitlines():
        if m := re.match(r"^([A-Za-z0-9._-]+)==(\S+)", line):
            name = m[1].lower().replace("_", "-")
            out[name] = (m[2], 0)
        elif name and line.strip().startswith("--hash=sha256:"):
            out[name] = (out[name][0], out[name][1] + 1)
    return out


def test_the_locks_pin_every_dependency_with_hashes_and_agree():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    runtime, dev = pins(REPO / "requirements/runtime.lock"), pins(REPO / "requirements/dev.lock")
    for lock, requirements in ((runtime, project["dependencies"]),
                               (dev, project["dependencies"] + project["optional-dependencies"]["dev"])):  # fmt: skip
        for text in requirements:
            req = Requirement(text)
            name = req.name.lower().replace("_", "-")
            if name == "torch":  # left out on purpose: the machine's own build (requirements/lock.py)
                assert name not in lock
                continue
            assert name in lock, f"{name} is not locked: run `python requirements/lock.py`"
            assert req.specifier.contains(lock[name][0]), f"{name}=={lock[name][0]} does not satisfy {text}"
        assert all(hashes > 0 for _, hashes in lock.values()), "every pin has its hashes"
        assert not [n for n in lock if re.match(r"nvidia-(?!ml-py)|triton|cuda-", n)]  # nor torch's CUDA stack
    shared = set(runtime) & set(dev)
    assert {n: runtime[n][0] for n in shared} == {n: dev[n][0] for n in shared}  # one environment, plus dev tools


def test_the_installed_mlflow_ui_reads_what_the_saved_view_writes():
    """chargpt/tracking/view.py stores a saved view in an experiment tag only MLflow's UI code reads (no API
    documents it): an MLflow without these names would leave `chargpt ui`'s links showing MLflow's defaults."""
    build = Path(mlflow.__file__).parent / "server" / "js" / "build" / "static" / "js"
    bundle = "".join(p.read_text(errors="ignore") for p in build.glob("*.js"))
    version, locked = metadata.version("mlflow"), pins(REPO / "requirements/dev.lock")["mlflow"][0]
    for needed in ("mlflow.sharedViewState.", "viewStateShareKey", "mlflow.experimentKind", "custom_model_development"):
        assert needed in bundle, (
            f"MLflow {version}'s UI no longer reads {needed!r}, which chargpt's saved view (chargpt/tracking/view.py) "
            f"relies on: install the locked MLflow {locked} (pip install -r requirements/dev.lock), or update view.py "
            f"for this MLflow"
        )
