import copy
import http.server
import json
import os
import re
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import yaml

# Tests run two at a time (pytest-xdist) on two cores: one thread each, so no two OpenMP pools spin against
# each other. Subprocesses inherit it.
os.environ.setdefault("OMP_NUM_THREADS", "1")

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "samples" / "enwiki-sample.xml.bz2"  # shipped with the repo (samples/README.md)

# The tests' model: every tiny run, and every test that trains one, states only what it changes from it.
TINY_MODEL = {"n_layer": 2, "d_model": 32, "n_head": 2, "d_ff": 64, "context": 32, "dropout": 0.0}
TINY_RUN = {
    "model": TINY_MODEL,
    "optimizer": {"name": "adamw", "weight_decay": 1.0e-4},
    "schedule": {"lr_min": 1.0e-4, "lr_max": "auto"},
    "lr_range_test": {"lr_start": 1.0e-5, "lr_end": 1.0, "iterations": 20, "skip_start": 2, "smoothing": 0.8},
    # fp32: at this size a step takes half the time of one under bf16 autocast (tests/unit covers precision: auto)
    "train": {
        "iterations": 30,
        "batch_size": 4,
        "eval_interval": 10,
        "eval_batches": 2,
        "log_interval": 5,
        "precision": "fp32",
    },
    "eval": {"batch_size": 16},
}
# An ablation of TINY_RUN (a run named "tiny"): the cosine control, same model and steps.
# Its LR range test is the seed's (linear LR, val accuracy), reported beside the fixed LR it trains at; it is scored
# in sliding windows (tiny in consecutive ones), so that the two compare only on the reference protocol; and on test
# with Krause's dynamic evaluation and the mixture too, as the quickstart is.
TINY_COSINE_RUN = {
    "base": "tiny",
    "schedule": {"name": "cosine", "lr_min": 1.0e-4, "lr_max": 3.0e-3, "warmup_steps": 5},
    "lr_range_test": {"method": "linear_accuracy", "lr_start": 1.0e-4, "lr_end": 0.03, "eval_interval": 4},
    "train": {"target_bpc": [7.0, 6.0, 0.5]},
    "eval": {"stride": 8, "dynamic": {"optimizer": "rms", "lr": 1.0e-3, "decay": 0.01, "stride": 16, "windows": 2},
             "mixture": {"order": 6, "table_bits": 16}, "adaptive_splits": ["test"]},
}  # fmt: skip


# Scheduling hint for pytest-xdist (whole files per worker, in collection order): the longest files start first,
# so the short ones fill in around them instead of one long file running alone at the end.
LONGEST_FIRST = [  # measured with --durations=0 (2026-12-07)
    "test_pipeline_e2e.py",
    "test_readme_recipes.py",
    "test_queue.py",
    "test_distributed.py",
    "test_resume.py",
    "test_mlflow_server.py",
    "test_faults.py",
    "test_recipe_sweep.py",
    "test_notebook.py",
    "test_use.py",
    "test_config_fuzz.py",
    "test_compare.py",
]


def pytest_collection_modifyitems(items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: the rest keep their order


@pytest.fixture
def params() -> dict:
    """The repo's params.yaml, parsed: tests mutate a copy."""
    return copy.deepcopy(yaml.safe_load((REPO / "params.yaml").read_text()))


def tiny_text(n: int = 60_000, seed: int = 0) -> bytes:
    """Generated, learnable bytes: words from a small vocabulary with markup, newlines and non-ASCII."""
    import random

    rng = random.Random(seed)
    words = ["the", "byte", "model", "<page>", "</page>", "café", "1cycle", "[[link]]", "\n", "==", "of", "and"]
    out = bytearray()
    while len(out) < n:
        out += rng.choice(words).encode() + b" "
    return bytes(out[:n])


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture
def http_dir(tmp_path):
    """Serve a directory on 127.0.0.1 (random free port); yields (directory, base URL)."""
    root = tmp_path / "www"
    root.mkdir()
    handler = lambda *a, **kw: _QuietHandler(*a, directory=str(root), **kw)  # noqa: E731
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def run(cmd: list[str], cwd: Path, env: dict, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(f"{cmd} failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
    return proc


def params_with_runs(runs: dict, data: dict | None = None) -> dict:
    """The repo's params.yaml with `runs` as its only runs (its grids, which vary the repo's runs, left out)."""
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["runs"] = runs
    params.pop("grids", None)
    params["data"].update(data or {})
    return params


def make_project(root: Path, runs: dict, data: dict | None = None, *, dvc: bool = True) -> tuple[Path, dict]:
    """A project at `root` whose params define `runs`; returns (root, env). With `dvc`, a committed git + DVC copy of
    the repo; without, params.yaml, the tiny corpus's splits in data/processed and each run's LR range test only, for
    the stage scripts run directly (REPO/stages/<stage>.py, in `root`)."""
    root.mkdir(exist_ok=True)
    params = params_with_runs(runs, data)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "DVC_"))}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"  # `python` in dvc.yaml: this venv
    # MLflow publishes system metrics only after a whole interval (10 s by default): a tiny run lasts about a second
    env["MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL"] = "0.2"
    if not dvc:
        from chargpt.data.corpus import split_corpus
        from chargpt.io import write_json

        (root / "corpus.bin").write_bytes(tiny_text(100_000))
        meta = split_corpus(root / "corpus.bin", root / "data/processed", (0.9, 0.05, 0.05))
        write_json(root / "data/processed/meta.json", meta)
        (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        for name in runs:  # the train stage records its run's range test (set-up: MLflow off, seconds of imports)
            setup_env = env | {"OMP_NUM_THREADS": "1", "CHARGPT_TRACKING": "off"}
            run([sys.executable, str(REPO / "stages/lr_range.py"), "--run", name], root, setup_env)
        return root, env
    for item in ("dvc.yaml", "pipeline_runs.yaml", "stages", "chargpt", ".dvcignore", ".gitignore"):
        src = REPO / item
        (shutil.copytree if src.is_dir() else shutil.copy)(src, root / item)
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    from chargpt.pipeline.dvc_sync import (  # the project's runs in the pipeline, as `chargpt sync-dvc` does
        RUNS_FILE,
        render,
    )

    dvc_yaml, runs_file = render((root / "dvc.yaml").read_text(), params, root)
    (root / "dvc.yaml").write_text(dvc_yaml)
    (root / RUNS_FILE).write_text(runs_file)
    env["DVC_NO_ANALYTICS"] = "1"
    for cmd in (
        ["git", "init", "-q"],
        ["git", "config", "user.email", "t@example.com"],
        ["git", "config", "user.name", "t"],
        ["dvc", "init", "-q"],
    ):
        run(cmd, root, env)
    shutil.copy(REPO / ".dvc/config", root / ".dvc/config")  # the shipped default remote
    shutil.copytree(REPO / ".dvc/plots", root / ".dvc/plots", dirs_exist_ok=True)  # the shipped plot templates
    run(["git", "add", "-A"], root, env)
    run(["git", "commit", "-qm", "init"], root, env)
    return root, env


@pytest.fixture(scope="session")
def project(tmp_path_factory):
    """The tests' one trained project, built once for the session: a git + DVC copy of the repo with a tiny run and
    its cosine ablation (data.url stays enwik8's; a local corpus is given with -S); (root, env, corpus)."""
    root = tmp_path_factory.mktemp("project")
    corpus = root.parent / "corpus.txt"
    corpus.write_bytes(tiny_text(60_000))
    return (*make_project(root, {"tiny": TINY_RUN, "tiny_cosine": TINY_COSINE_RUN}), corpus)


@pytest.fixture(scope="session")
def trained(project):
    """The project after the README's offline recipe ran both runs through all five stages (the tests that read a
    finished pipeline take this, so that each also runs alone); and what `dvc exp run` printed."""
    root, env, corpus = project
    out = run(
        ["dvc", "exp", "run", "-S", f"data.url={corpus.as_uri()}", "-S", "data.checksums=null", "evaluate@tiny",
         "evaluate@tiny_cosine"],
        root,
        env,
    ).stdout  # fmt: skip
    return root, env, out


@pytest.fixture
def chargpt_cli(capsysbinary):
    """`chargpt ARGS` through the CLI's own entry, in this process (a `chargpt` process costs seconds of imports; the
    README's test runs the commands as a user types them): (exit status, stdout bytes, a failure's one-line
    message)."""
    from chargpt import cli

    def call(*args: str) -> tuple[int, bytes, str]:
        status, message = 0, ""
        try:
            cli.main(list(args))
        except SystemExit as e:  # a failed command exits with its message (status 1)
            status, message = (1, e.code) if isinstance(e.code, str) else (e.code or 0, "")
        return status, capsysbinary.readouterr().out, message

    return call


def seeded_views(page: str) -> list[dict]:
    """The experiment views the chargpt MLflow app's UI page seeds (chargpt/tracking/ui_app.py, seed_script)."""
    call = re.search(r"seedMlflowUi\(window\.localStorage, (.*)\);\n</script>", page)
    assert call, "the page carries no seedMlflowUi call"
    _, views = json.loads(f"[{call[1]}]")  # JSON reads the "<\/" escape as "</"
    return views


def tiny_training_run(data_dir: Path, amp_dtype=None, **sections):
    """A TrainingRun of the tiny model (100 steps of batch 2 unless `sections` say otherwise) on a tiny
    corpus split into `data_dir`, built as the train stage builds one (lr_max 1e-3, on the CPU)."""
    import torch

    from chargpt.data.corpus import split_corpus
    from chargpt.pipeline.config import RunConfig
    from chargpt.train.run import build_training_run

    if not (data_dir / "train.bin").exists():
        (data_dir / "corpus").write_bytes(tiny_text(20_000))
        split_corpus(data_dir / "corpus", data_dir, (0.9, 0.05, 0.05))
    sections = {"model": TINY_MODEL, **sections}
    sections["train"] = {"iterations": 100, "batch_size": 2, "eval_batches": 1, **sections.get("train", {})}
    cfg = RunConfig(name="t", **sections)
    return build_training_run(
        **cfg.training_sections(),
        lr_max=1e-3,
        data_dir=data_dir,
        device=torch.device("cpu"),
        amp_dtype=amp_dtype,
    )
