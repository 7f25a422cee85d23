"""Every measured figure in the README and docs/*.md is tied to its own source: a value recorded under a key in a
file that its section names (docs/runs/..., docs/sweeps/..., a folder or a glob; in the text, a command, or a
`<!-- figures: path ... -->` comment). A section's sources are its own and its parent sections'. In a table,
every figure of a column comes from the same key, so a column cannot borrow a value recorded for something else.
A figure no file records may be the difference of two figures of its own section (e.g. "-0.046 on test"). A doc
may set apart figures measured before their outputs were kept, between <!-- archived: when, where, what measured
them --> and <!-- /archived -->: the marker says so to the reader, and the check leaves them out."""

from __future__ import annotations

import bisect
import functools
import json
import re
import sys
from dataclasses import dataclass, field
from itertools import combinations
from pathlib import Path
from typing import NamedTuple

import pytest
from conftest import REPO

# Measurement-like figures: 3+ decimals, thousands separators, or percentages with a decimal.
FIGURE = re.compile(r"(?<![\w.])(\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+\.\d{3,}|\d+\.\d+%)(?![\w.]*\d)")
ARCHIVED = re.compile(r"<!-- archived: (.*?) -->(.*?)<!-- /archived -->", flags=re.S)
SOURCE = re.compile(r"docs/(?:runs|sweeps)/[\w.\-/*]*[\w/*]")
KEY_WORD = re.compile(r"[._ -]+")
SPLITS = {"train", "val", "test"}  # words of a key that name a split, not a quantity
HEADING = re.compile(r"(?m)^(#{1,4}) .*$")
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


def prose_and_output(text: str) -> str:
    """A doc without its command blocks (```bash, ```yaml), inline code, comments and archived sections: what a
    reader takes as measured now, an output block's lines included."""
    text = ARCHIVED.sub("", text)
    text = re.sub(r"```(?:bash|yaml)\n.*?```", "", text, flags=re.S)
    text = re.sub(r"(?m)^```\w*$", "", text)  # the fences of an output block: what it shows was measured
    text = re.sub(r"<!--.*?-->", "", text, flags=re.S)
    return re.sub(r"`[^`\n]*`", "", text)


def value_of(figure: str) -> tuple[float, int]:
    """The figure as a number (a percentage as a fraction's hundredfold) and its decimals."""
    text = figure.rstrip("%").replace(",", "")
    return float(text), len(text.split(".")[1]) if "." in text else 0


def rounds_to(number: float, figure: str) -> bool:
    """Whether a recorded number, printed at the figure's precision, is the figure. FIGURE takes no sign, so a
    difference recorded as -0.06656 is "0.067"; a percentage may be recorded as a fraction (0.5869 is 58.69%)."""
    value, decimals = value_of(figure)
    scales = (100, 1) if figure.endswith("%") else (1,)
    return any(abs(abs(number) * scale - value) <= 0.5 * 10**-decimals + 1e-12 for scale in scales)


class Number(NamedTuple):
    key: str  # the path of object keys to it: "val_bpc", "bpc.xz -9e"
    value: float
    record: str  # what it describes: its record's "name", else its file and line


def matching(numbers: list[Number], magnitudes: list[float], figure: str) -> list[Number]:
    """The numbers that round to the figure (rounds_to), found by bisection in numbers sorted by magnitude."""
    value, decimals = value_of(figure)
    found = []
    for scale in (100, 1) if figure.endswith("%") else (1,):
        low, high = (value - 0.5 * 10**-decimals - 1e-12) / scale, (value + 0.5 * 10**-decimals + 1e-12) / scale
        found += numbers[bisect.bisect_left(magnitudes, low) : bisect.bisect_right(magnitudes, high)]
    return [n for n in found if rounds_to(n.value, figure)]


@functools.cache
def records(path: Path) -> list[Number]:
    """Every number of a .json file, or of each line (a record) of a .jsonl file. A list of objects is a curve (a
    value per step): docs quote its last point (a run's final val probe) and no other, whose thousands of values
    would let almost any figure match."""
    out = []

    def walk(node, key: str, record: str) -> None:
        if isinstance(node, bool):
            return
        if isinstance(node, (int, float)):
            out.append(Number(key, float(node), record))
        elif isinstance(node, dict):
            for k, v in node.items():
                walk(v, f"{key}.{k}" if key else str(k), record)
        elif isinstance(node, list):
            for v in node[-1:] if any(isinstance(v, dict) for v in node) else node:
                walk(v, key, record)

    lines = path.read_text().splitlines() if path.suffix == ".jsonl" else [path.read_text()]
    for i, line in enumerate(lines):
        if line.strip():
            node = json.loads(line)
            name = node.get("name") if isinstance(node, dict) else None
            walk(node, "", str(name) if isinstance(name, str) else f"{path.name}:{i + 1}")
    return out


def source_files(cited: str) -> list[Path]:
    """The files a cited path stands for; a path that names nothing fails the check (a stale citation)."""
    path = cited.rstrip(".")
    if "*" in path:
        files = sorted(REPO.glob(path))
    elif (REPO / path).is_dir():
        files = sorted((REPO / path).rglob("*.json"))
    else:
        files = [REPO / path] if (REPO / path).is_file() else []
    assert files, f"cited {cited!r} names no file"
    return [f for f in files if f.suffix in (".json", ".jsonl")]


@dataclass
class Section:
    doc: str
    heading: str
    text: str
    sources: set[str] = field(default_factory=set)

    def numbers(self) -> list[Number]:
        """Every number its sources record."""
        return [number for cited in sorted(self.sources) for f in source_files(cited) for number in records(f)]


def sections(doc: Path, text: str | None = None) -> list[Section]:
    """The doc cut at its headings (archived parts removed), each with the sources it and its parents cite."""
    text = ARCHIVED.sub("", doc.read_text() if text is None else text)
    cuts = [0, *(m.start() for m in HEADING.finditer(text)), len(text)]
    out, stack = [], []  # stack: (level, sources) of the open headings
    for start, end in zip(cuts, cuts[1:]):
        body = text[start:end]
        if not body:
            continue
        heading = body.splitlines()[0] if body.startswith("#") else "(top)"
        level = len(heading.split()[0]) if body.startswith("#") else 0
        stack = [(lvl, src) for lvl, src in stack if lvl < level]
        stack.append((level, set(SOURCE.findall(body))))
        out.append(Section(doc.name, heading, body, set().union(*(src for _, src in stack))))
    return out


def tables(text: str) -> list[list[list[list[str]]]]:
    """Each markdown table of the text as rows of cells, each cell the figures in it."""
    out, rows = [], []
    for line in [*prose_and_output(text).splitlines(), ""]:
        if line.startswith("|"):
            rows.append([FIGURE.findall(cell) for cell in line.strip().strip("|").split("|")])
        elif rows:
            out.append(rows)
            rows = []
    return out


def untied(section: Section) -> list[str]:
    """The section's figures that no source of its own records, nor a difference of two recorded figures of its
    own; and its tables' rows and columns that mix what they describe. A table's row describes one thing (its
    figures come from one record: one run), unless a `<!-- rows: ... -->` comment says the section's rows compare
    records (then each cell's figures come from one); a column is one quantity (its figures' keys share a word
    other than a split's: val_bpc and val_bpc_dynamic, bpc.xz -9e and bpc_compressed, not val_bpc and
    val_accuracy)."""
    numbers = sorted(section.numbers(), key=lambda n: abs(n.value))
    magnitudes = [abs(n.value) for n in numbers]
    figures = FIGURE.findall(prose_and_output(section.text))
    matched = {f: matching(numbers, magnitudes, f) for f in set(figures)}
    recorded = {f for f, found in matched.items() if found}
    values = {n.value for f in recorded for n in matched[f]}  # the recorded numbers behind the section's figures
    derived = {f for f in set(figures) - recorded if any(rounds_to(a - b, f) for a, b in combinations(values, 2))}
    missing = [f for f in figures if f not in recorded | derived]
    rows_compare = "<!-- rows:" in section.text

    def shared(figs: list[str], of) -> set:
        found = [{x for n in matched[f] for x in of(n)} for f in figs if f in recorded]
        return set.intersection(*found) - {""} if found else {"(none)"}

    for table in tables(section.text):
        for row in table:
            for figs in row if rows_compare else [[f for cell in row for f in cell]]:  # a cell, or the whole row
                if len(figs) > 1 and not shared(figs, lambda n: [n.record]):
                    missing.append(f"row {figs}: no one record holds them all")
        for col in range(max(len(row) for row in table)):
            for nth in range(max(len(row[col]) if col < len(row) else 0 for row in table)):
                figs = [row[col][nth] for row in table if col < len(row) and nth < len(row[col])]
                if len(figs) > 1 and not shared(figs, lambda n: set(KEY_WORD.split(n.key)) - SPLITS):
                    missing.append(f"column {figs}: their keys share no word")
    return missing


@pytest.mark.parametrize("doc", DOCS, ids=lambda d: d.name)
def test_every_figure_is_recorded_in_a_file_its_section_names(doc):
    text = doc.read_text()
    assert text.count("<!-- archived:") == text.count("<!-- /archived -->") == len(ARCHIVED.findall(text)), doc
    for provenance, _ in ARCHIVED.findall(text):
        assert re.search(r"\d{4}-\d{2}", provenance) and len(provenance) > 40, f"{doc.name}: {provenance!r}"
    problems = {s.heading: m for s in sections(doc) if (m := untied(s))}
    assert not problems, f"{doc.name}: figures not tied to a file and key their section names: {problems}"


def test_the_readme_has_figures_to_check():
    assert len(FIGURE.findall(prose_and_output((REPO / "README.md").read_text()))) >= 10


def mutated_last_digit(figure: str) -> str:
    digits = [i for i, c in enumerate(figure) if c.isdigit()]
    i = digits[-1]
    return figure[:i] + str((int(figure[i]) + 3) % 10) + figure[i + 1 :]


def test_a_figure_changed_in_its_last_digit_is_caught():
    """Every figure of the README and docs, each changed once in its last digit: the check must catch nearly all.
    What passes is a figure whose changed value another record of its section also holds under a key of the
    same word (a difference quoted in prose, among a sweep's many)."""
    total = caught = 0
    for doc in DOCS:
        for section in sections(doc):
            for figure in FIGURE.findall(prose_and_output(section.text)):
                text = section.text.replace(figure, mutated_last_digit(figure))
                caught += bool(untied(Section(section.doc, section.heading, text, section.sources)))
                total += 1
    assert total > 400 and caught >= 0.85 * total, f"{caught} of {total} changed figures caught"


def test_the_check_ties_a_figure_to_its_own_file_key_and_record(tmp_path, monkeypatch):
    files = {
        "docs/sweeps/a.jsonl": '{"name": "x", "val_bpc": 2.12285, "val_accuracy": 0.5869}\n'
        '{"name": "y", "val_bpc": 2.3, "val_accuracy": 0.5}\n',
        "docs/sweeps/b.jsonl": '{"tokens_per_s": 890865.4, "curve": [{"lr": 0.1234}, {"lr": 0.5678}]}\n',
    }
    for rel, text in files.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    monkeypatch.setattr(sys.modules[__name__], "REPO", tmp_path)
    records.cache_clear()
    doc = tmp_path / "doc.md"

    def problems(text: str) -> list[list[str]]:
        return [untied(s) for s in sections(doc, text)]

    ok = "# A\ndocs/sweeps/a.jsonl: x 2.1228 at 58.69%, 0.177 better than y's 2.3000; 890,865 (docs/sweeps/b.jsonl)"
    assert problems(ok) == [[]]  # a recorded figure, a fraction as a percentage, a difference of two shown
    assert problems("# A\nfrom docs/sweeps/a.jsonl: 2.1222") == [["2.1222"]]  # a stale figure
    assert problems("# A\ndocs/sweeps/a.jsonl: 0.178") == [["0.178"]]  # a difference of nothing it shows
    assert problems("# A\n890,865 tokens/s (docs/sweeps/a.jsonl)") == [["890,865"]]  # a file it does not name
    assert problems("# A\ndocs/sweeps/b.jsonl\n## B\n890,865 tokens/s") == [[], []]  # a parent's source serves
    assert problems("# A\n890,865\n# B\ndocs/sweeps/b.jsonl") == [["890,865"], []]  # a sibling's does not
    assert problems("# A\ndocs/sweeps/b.jsonl 0.5678, not 0.1234") == [["0.1234"]]  # a curve's last point only
    table = "# A\n<!-- figures: docs/sweeps/a.jsonl -->\n| run | BPC | accuracy |\n|---|---|---|\n"
    assert problems(table + "| x | 2.12285 | 58.69% |\n| y | 2.300 | 50.00% |\n") == [[]]
    assert problems(table + "| x | 2.12285 | 50.00% |\n| y | 2.300 | 58.69% |\n")[0][0].startswith("row")  # swapped
    column = problems(table + "| x | 2.12285 | 58.69% |\n| y | 50.00% | 2.300 |\n")[0]
    assert any(p.startswith("column") for p in column)  # a column of two quantities
    compared = table.replace("|\n|---", "|\n<!-- rows: x against y -->\n|---")
    assert problems(compared + "| x vs y | 2.12285 / 58.69% | 2.300 / 50.00% |\n") == [[]]  # a cell, one record
    assert problems(compared + "| x vs y | 2.12285 / 50.00% | 2.300 / 58.69% |\n")[0][0].startswith("row")
    assert FIGURE.findall("test 2.1228 BPC, 890,865 tokens/s at 32.2% of the peak, torch 2.13.0") == [
        "2.1228",
        "890,865",
        "32.2%",
    ]
    with pytest.raises(AssertionError, match="names no file"):
        problems("# A\ndocs/sweeps/gone.jsonl 2.1228")
    text = "now 2.1111; <!-- archived: 2026-11, a run whose outputs were not kept --> then 2.2222 <!-- /archived -->"
    assert FIGURE.findall(prose_and_output(text)) == ["2.1111"]
    shown = "```bash\nrun --lr 0.0123\n```\nit printed:\n```\nval 2.3456 BPC\n```\nat `lr=0.0456`"
    assert FIGURE.findall(prose_and_output(shown)) == ["2.3456"]  # an output block is checked, a command not
