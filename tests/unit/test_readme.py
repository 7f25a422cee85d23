"""The README is short, its two commands are the ones CI runs, and the fault catalogue names tests that exist.
Its figures, and those of docs/*.md, are checked in test_docs_figures.py."""

import re

from conftest import REPO

README = (REPO / "README.md").read_text()


def test_the_readme_is_short_and_its_commands_are_the_ones_ci_runs():
    assert len(README.splitlines()) <= 200
    setup = "python3.11 -m venv .venv && .venv/bin/pip install -r requirements/runtime.lock && .venv/bin/pip " \
        "install -e . && . .venv/bin/activate && dvc repro evaluate@quickstart"  # fmt: skip
    tests = "python3.11 -m venv .venv && .venv/bin/pip install -q -r requirements/dev.lock && .venv/bin/pip " \
        "install -q -e '.[dev]' && .venv/bin/pytest"  # fmt: skip
    assert setup in README and tests in README
    assert (REPO / ".ci/run").read_text().strip().splitlines()[-1] == tests
    assert "bits per byte" in README.split("```")[0]  # BPC is defined on the first screen


def test_every_test_the_fault_catalogue_names_exists():
    text = (REPO / "docs/faults.md").read_text()
    named = re.findall(r"tests/((?:unit|e2e)/test_\w+\.py)(?:::(\w+))?", text)
    assert len(named) >= 24
    for file, test in named:
        path = REPO / "tests" / file
        assert path.is_file(), file
        assert not test or re.search(rf"def {test}\b", path.read_text()), f"{file}::{test}"
