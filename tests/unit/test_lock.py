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


def test_the_installed_mlflow_ui_keeps_its_state_where_the_chargpt_app_seeds_it():
    """chargpt/tracking/ui_app.py writes localStorage keys that only MLflow's UI code defines: its mode, the
    assistant's first-visit flag, and each experiment's table state. Where one moved, a new browser would get
    MLflow's defaults (GenAI mode, no BPC column) again."""
    build = Path(mlflow.__file__).parent / "server" / "js" / "build" / "static" / "js"
    bundle = "".join(p.read_text(errors="ignore") for p in build.glob("*.js"))
    version, locked = metadata.version("mlflow"), pins(REPO / "requirements/dev.lock")["mlflow"][0]
    needed = {
        "the useLocalStorage key format `${key}_v${version}`": r"`\$\{\w+\}_v\$\{\w+\}`",
        "the mode's key": re.escape('key:"mlflow.workflowType",version:1'),
        "the mode's value": re.escape('"machine_learning"'),
        "the assistant's first-visit key": re.escape('key:"mlflow.assistant.fab.autoOpenedOnFirstLoad",version:1'),
        "LocalStorageUtils' prefix": re.escape('["MLflowLocalStorage",') + r"\w+\.version,",
        "its version": r'\w+\.version="1\.1"',
        "the experiment page's store": re.escape('getStoreForComponent("ExperimentPage",'),
        "the component state key": re.escape('reactComponentStateKey="ReactComponentState"'),
        "the persist key, the sorted ids as JSON": r"JSON\.stringify\(\w+\.sort\(\)\)",
    }
    for what, pattern in needed.items():
        assert re.search(pattern, bundle), (
            f"MLflow {version}'s UI no longer has {what} ({pattern}), where the chargpt MLflow app "
            f"(chargpt/tracking/ui_app.py) seeds a new browser: install the locked MLflow {locked} "
            f"(pip install -r requirements/dev.lock), or update ui_app.py for this MLflow"
        )
