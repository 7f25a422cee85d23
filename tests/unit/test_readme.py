"""The README is short, its two commands are the ones CI runs, and every figure in it and in docs/*.md comes from a
file that a command wrote (docs/runs/, docs/sweeps/): a stale or invented figure fails here. A doc may set apart
figures measured before their outputs were kept, between <!-- archived: when, where, what measured them --> and
<!-- /archived -->: the marker says so to the reader, and the check leaves them out."""

import re

from conftest import REPO

README = (REPO / "README.md").read_text()
# Measurement-like figures: 3+ decimals, thousands separators, or percentages with a decimal.
FIGURE = re.compile(r"(?<![\w.])(\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+\.\d{3,}|\d+\.\d+%)(?![\w.]*\d)")


ARCHIVED = re.compile(r"<!-- archived: (.*?) -->(.*?)<!-- /archived -->", flags=re.S)


def prose_and_output(text: str) -> str:
    """A doc without its command blocks (```bash), inline code and archived sections: what a reader takes as
    measured now."""
    text = ARCHIVED.sub("", text)
    text = re.sub(r"```(?:bash|yaml)\n.*?```", "", text, flags=re.S)
    return re.sub(r"`[^`]*`", "", text)


def recorded_numbers() -> list[float]:
    numbers = []
    for path in [*(REPO / "docs/runs").rglob("*.json"), *(REPO / "docs/sweeps").glob("*.jsonl")]:
        for line in path.read_text().splitlines() if path.suffix == ".jsonl" else [path.read_text()]:
            if line.strip():
                numbers += [float(x) for x in re.findall(r"-?\d+\.?\d*(?:[eE][-+]?\d+)?", line)]
    return numbers


def matches(figure: str, numbers: list[float]) -> bool:
    percent = figure.endswith("%")
    text = figure.rstrip("%").replace(",", "")
    decimals = len(text.split(".")[1]) if "." in text else 0
    value = float(text)  # the figure as printed: any recorded number that rounds to it (records may be rounded too)
    # FIGURE takes no sign ("-0.067 val" is read as 0.067), so a difference recorded as -0.06656 matches it
    return any(abs(abs(x) * (100 if percent else 1) - value) <= 0.5 * 10**-decimals + 1e-12 for x in numbers)


def test_every_figure_in_the_readme_is_in_a_file_a_command_wrote():
    numbers = recorded_numbers()
    figures = FIGURE.findall(prose_and_output(README))
    assert len(figures) >= 10  # the check has something to check
    missing = [f for f in figures if not matches(f, numbers)]
    assert not missing, f"README figures found in no file of docs/runs or docs/sweeps: {missing}"


def test_every_figure_in_the_docs_is_in_a_file_a_command_wrote():
    numbers = recorded_numbers()
    for doc in sorted((REPO / "docs").glob("*.md")):
        text = doc.read_text()
        assert text.count("<!-- archived:") == text.count("<!-- /archived -->") == len(ARCHIVED.findall(text)), doc
        for provenance, _ in ARCHIVED.findall(text):
            assert re.search(r"\d{4}-\d{2}", provenance) and len(provenance) > 40, f"{doc.name}: {provenance!r}"
        missing = [f for f in FIGURE.findall(prose_and_output(text)) if not matches(f, numbers)]
        assert not missing, f"{doc.name}: figures found in no file of docs/runs or docs/sweeps: {missing}"


def test_the_readme_is_short_and_its_commands_are_the_ones_ci_runs():
    assert len(README.splitlines()) <= 200
    setup = "python3.11 -m venv .venv && .venv/bin/pip install -r requirements/runtime.lock && .venv/bin/pip " \
        "install -e . && . .venv/bin/activate && dvc repro evaluate@quickstart"  # fmt: skip
    tests = "python3.11 -m venv .venv && .venv/bin/pip install -q -r requirements/dev.lock && .venv/bin/pip " \
        "install -q -e '.[dev]' && .venv/bin/pytest"  # fmt: skip
    assert setup in README and tests in README
    assert (REPO / ".ci/run").read_text().strip().splitlines()[-1] == tests
    assert "bits per byte" in README.split("```")[0]  # BPC is defined on the first screen


def test_the_figure_check_catches_a_stale_figure():
    numbers = [2.12285, 0.322, 890865.4]
    assert matches("2.1228", numbers) and matches("32.2%", numbers) and matches("890,865", numbers)
    assert not matches("2.1222", numbers) and not matches("33.4%", numbers)
    # only an archived section, which says so, is left out
    text = "now 2.1111; <!-- archived: 2026-11, a run whose outputs were not kept --> then 2.2222 <!-- /archived -->"
    assert FIGURE.findall(prose_and_output(text)) == ["2.1111"]
    assert FIGURE.findall("test 2.1228 BPC, 890,865 tokens/s at 32.2% of the peak, torch 2.13.0") == [
        "2.1228",
        "890,865",
        "32.2%",
    ]


def test_every_test_the_fault_catalogue_names_exists():
    text = (REPO / "docs/faults.md").read_text()
    named = re.findall(r"tests/((?:unit|e2e)/test_\w+\.py)(?:::(\w+))?", text)
    assert len(named) >= 24
    for file, test in named:
        path = REPO / "tests" / file
        assert path.is_file(), file
        assert not test or re.search(rf"def {test}\b", path.read_text()), f"{file}::{test}"
