"""Every shell block of the README, run as written, in order, on a fresh project whose quickstart is a tiny run: a
recipe that breaks fails here. How the test reads the README, and nothing more:
- the set-up commands (venv, pip install, activate, pytest) are left out: tests/unit/test_readme.py checks that
  they are the two commands CI runs; the rest of their line runs;
- a ```yaml block is a run to add under params.yaml's runs:, as the README says;
- the lines after a comment "# on another clone" run in a fresh `git clone` of the project, the rest in the project.
The project has a bare git remote, HOME is a temporary folder (the default DVC remote lives under it), and MLflow
is off (CHARGPT_TRACKING=off): no recipe here reads it, and tests/e2e/test_pipeline_e2e.py shows it changes no output.
"""

import json
import re
import shutil
import subprocess
import time

import yaml
from conftest import REPO, SAMPLE, TINY_RUN, make_project, run

SETUP = re.compile(r"python3\.11 -m venv|pip install|\. \.venv/bin/activate|\.venv/bin/pytest")
# The quickstart as a tiny run, so that the README's 1000-step recipes take seconds; scored on a prefix of each split
# (the sample's are 300 KB).
QUICKSTART = TINY_RUN | {
    "train": TINY_RUN["train"] | {"iterations": 20, "eval_interval": 20, "log_interval": 10},
    "eval": TINY_RUN["eval"] | {"max_bytes": 20_000},
}


def blocks(text: str) -> list[tuple[str, str]]:
    """The README's (language, body) code blocks in order."""
    return re.findall(r"```(bash|yaml)\n(.*?)```", text, flags=re.S)


def commands(body: str) -> list[tuple[bool, str]]:
    """(on another clone?, command line) for each line of a bash block, set-up steps left out."""
    out, elsewhere = [], False
    for line in body.splitlines():
        if line.lstrip().startswith("#"):
            elsewhere = elsewhere or "on another clone" in line
            continue
        kept = [part for part in line.split(" && ") if not SETUP.search(part)]
        if kept:
            out.append((elsewhere, " && ".join(kept)))
    return out


def shell(command: str, cwd, env) -> None:
    """One line as a user types it (`chargpt sample` writes raw bytes: the output is not decoded strictly)."""
    proc = subprocess.run(["bash", "-c", command], cwd=cwd, env=env, capture_output=True, timeout=600)
    out = lambda b: b.decode(errors="backslashreplace")[-4000:]  # noqa: E731
    assert proc.returncode == 0, (
        f"{command!r} in {cwd} failed ({proc.returncode}):\n{out(proc.stdout)}\n{out(proc.stderr)}"
    )


def test_the_readme_reads_as_the_test_runs_it():
    got = [
        (lang, commands(body) if lang == "bash" else body) for lang, body in blocks((REPO / "README.md").read_text())
    ]
    assert got[0] == ("bash", [])  # PyTorch's CPU build, before the set-up: set-up alone
    assert got[1] == ("bash", [(False, "dvc repro evaluate@quickstart")])  # the set-up line, after its set-up
    assert got[2] == ("bash", [])  # the tests' line: set-up alone
    assert [lang for lang, _ in got].count("yaml") == 1
    assert any(elsewhere for lang, lines in got if lang == "bash" for elsewhere, _ in lines)  # the clone's lines


def test_every_shell_block_of_the_readme_runs_as_written(tmp_path):
    # enwik8's URL is the shipped sample's: the offline recipe's `dvc exp run -S data.url=<the sample>` then finds
    # every stage done (tests/e2e/test_pipeline_e2e.py runs a changed data.url through the five stages)
    root, env = make_project(tmp_path / "project", {"quickstart": QUICKSTART},
                             {"url": "samples/enwiki-sample.xml.bz2", "checksums": None})  # fmt: skip
    shutil.copytree(SAMPLE.parent, root / "samples")
    shutil.copy(REPO / "README.md", root / "README.md")
    run(["git", "add", "-A"], root, env)
    run(["git", "commit", "-qm", "the README and the sample"], root, env)
    env |= {"HOME": str(tmp_path / "home"), "CHARGPT_TRACKING": "off"}  # no recipe here reads MLflow
    run(["git", "init", "-q", "--bare", str(tmp_path / "origin.git")], tmp_path, env)
    run(["git", "remote", "add", "origin", str(tmp_path / "origin.git")], root, env)
    run(["git", "push", "-q", "-u", "origin", "HEAD"], root, env)
    clone = tmp_path / "clone"

    ran = []
    for lang, body in blocks((REPO / "README.md").read_text()):
        if lang == "yaml":  # a run to add under runs:
            params = yaml.safe_load((root / "params.yaml").read_text())
            params["runs"] |= yaml.safe_load(body)
            (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
            continue
        for elsewhere, command in commands(body):
            if elsewhere and not clone.exists():
                run(["git", "clone", "-q", str(tmp_path / "origin.git"), str(clone)], tmp_path, env)
            started = time.perf_counter()
            shell(command, clone if elsewhere else root, env)
            print(f"{time.perf_counter() - started:6.1f}s  {command}")  # pytest -s shows what each recipe costs
            ran.append(command)
    assert len(ran) >= 10, ran
    # What the recipes promise: the clone pulled the model and is up to date; the variant and the exp run trained.
    assert (clone / "models/quickstart/model.pt").exists()
    assert "up to date" in run(["dvc", "status", "evaluate@quickstart"], clone, env).stdout
    # and the pulled model, evaluated again there, scores what it scored where it trained
    before = json.loads((clone / "reports/quickstart/eval.json").read_text())
    run(["dvc", "repro", "--force", "--single-item", "evaluate@quickstart"], clone, env)
    after = json.loads((clone / "reports/quickstart/eval.json").read_text())
    assert (after["val_prefix_bpc"], after["test_prefix_bpc"]) == (before["val_prefix_bpc"], before["test_prefix_bpc"])
    assert (root / "reports/my_variant/eval.json").exists() and (root / "README.out").read_bytes() == (
        root / "README.md"
    ).read_bytes()
