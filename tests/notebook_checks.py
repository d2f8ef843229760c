"""Checks that a committed chapter notebook follows the book's conventions.

Each ``check_*`` function takes a notebook (an ``nbformat.NotebookNode``) and
returns a list of problems as human-readable strings; an empty list means the
notebook passes. :func:`check_notebook` runs them all and also accepts a path.

The conventions are written down in CONTRIBUTING.md:

* executed top to bottom in a fresh kernel (execution counts 1, 2, ..., n);
* no error outputs;
* a run card (printed by ``cookbook.budget.RunCard``) whose ``budget:`` line is
  ``cpu`` or ``gpu``, printed again at the end with its ``wall time:``;
* no absolute local paths or user names anywhere in outputs or metadata;
* no widget state (plain-text progress only);
* exactly one cell tagged ``parameters`` that assigns ``BUDGET``.

This is test code, not package code: the chapters never import it.
"""

from __future__ import annotations

import ast
import getpass
import os
import re
from pathlib import Path
from typing import Callable, Iterable, Union

import nbformat

PUBLISHABLE_BUDGETS = ("cpu", "gpu")
ALL_BUDGETS = ("smoke", "cpu", "gpu", "auto")
RUN_CARD_FIELDS = ("budget", "device", "dataset", "backbone", "epochs", "versions")

WIDGET_MIMETYPES = (
    "application/vnd.jupyter.widget-view+json",
    "application/vnd.jupyter.widget-state+json",
)

#: Fragments of absolute local paths that must not be committed.
LOCAL_PATH_PATTERNS = (
    r"/home/",
    r"/root/",
    r"/Users/",
    r"/work/",
    r"/tmp/",
    r"/var/folders/",
    r"/private/var/",
    r"/content/drive/",
    r"[A-Za-z]:\\\\Users\\\\",  # JSON-escaped Windows path, C:\\Users\\
    r"[A-Za-z]:\\Users\\",
)
LOCAL_PATH = re.compile("|".join(LOCAL_PATH_PATTERNS), re.IGNORECASE)

_BUDGET_LINE = re.compile(r"^\s*budget:\s*(\S*)", re.MULTILINE | re.IGNORECASE)
_WALL_TIME_LINE = re.compile(r"^\s*wall time:\s*\S", re.MULTILINE | re.IGNORECASE)

Problems = list[str]
NotebookLike = Union[nbformat.NotebookNode, str, os.PathLike]


# --------------------------------------------------------------------------- helpers
def _code_cells(nb) -> Iterable[tuple[int, dict]]:
    for index, cell in enumerate(nb.cells):
        if cell.get("cell_type") == "code":
            yield index, cell


def _text(value) -> str:
    return "".join(value) if isinstance(value, list) else str(value)


def _output_texts(output) -> list[str]:
    """All text an output carries: stream text, every text-like MIME type, tracebacks."""
    texts = []
    if output.get("output_type") == "stream":
        texts.append(_text(output.get("text", "")))
    for mime, data in (output.get("data") or {}).items():
        if mime.startswith("text/") or mime.endswith("json") or mime.endswith("+xml"):
            texts.append(data if isinstance(data, str) else _text(data) if isinstance(data, list) else repr(data))
    if output.get("output_type") == "error":
        texts.append(f"{output.get('ename', '')}: {output.get('evalue', '')}")
        texts.extend(_text(line) for line in output.get("traceback", []))
    return texts


def _printed_blocks(cell) -> list[str]:
    """Printed text of a cell: stdout streams joined (prints can be split across outputs),
    plus each plain-text result."""
    stdout = "".join(
        _text(o.get("text", ""))
        for o in cell.get("outputs", [])
        if o.get("output_type") == "stream" and o.get("name") == "stdout"
    )
    blocks = [stdout] if stdout else []
    for o in cell.get("outputs", []):
        plain = (o.get("data") or {}).get("text/plain")
        if plain is not None:
            blocks.append(_text(plain))
    return blocks


def _tags(cell) -> list[str]:
    return list((cell.get("metadata") or {}).get("tags", []) or [])


# --------------------------------------------------------------------------- checks
def check_execution_order(nb) -> Problems:
    """Code cells were executed once each, top to bottom, in a fresh kernel:
    execution counts are exactly 1, 2, ..., n. Empty code cells are skipped by
    Jupyter and papermill, so they are ignored here."""
    problems = []
    expected = 1
    for index, cell in _code_cells(nb):
        if not _text(cell.get("source", "")).strip():
            continue
        count = cell.get("execution_count")
        if count is None:
            problems.append(f"cell {index}: not executed (execution_count is None)")
            continue
        if count != expected:
            problems.append(
                f"cell {index}: execution_count {count}, expected {expected} "
                "(run the whole notebook top to bottom in a fresh kernel)"
            )
        expected = count + 1
    return problems


def check_no_errors(nb) -> Problems:
    """No cell has an error output."""
    problems = []
    for index, cell in _code_cells(nb):
        for output in cell.get("outputs", []):
            if output.get("output_type") == "error":
                problems.append(f"cell {index}: error output {output.get('ename', '?')}: {output.get('evalue', '')}")
    return problems


def check_run_card(nb) -> Problems:
    """A complete run card is printed; every ``budget:`` line says cpu or gpu; the
    final card (with ``wall time:``) is there, so the run reached the end."""
    problems = []
    cards = []
    for index, cell in _code_cells(nb):
        for block in _printed_blocks(cell):
            if _BUDGET_LINE.search(block):
                cards.append((index, block))
    if not cards:
        return ["no run card in the outputs (print cookbook.budget.RunCard(...).start() near the top)"]
    for index, block in cards:
        for budget in _BUDGET_LINE.findall(block):
            if budget.lower() not in PUBLISHABLE_BUDGETS:
                problems.append(
                    f"cell {index}: run card says 'budget: {budget}'; committed outputs must come from "
                    "a cpu or gpu run (papermill -p BUDGET cpu, without COOKBOOK_SMOKE)"
                )
        for field in RUN_CARD_FIELDS:
            if not re.search(rf"^\s*{field}:", block, re.MULTILINE | re.IGNORECASE):
                problems.append(f"cell {index}: run card has no '{field}:' line")
    if not any(_WALL_TIME_LINE.search(block) for _, block in cards):
        problems.append("no final run card with a 'wall time:' line (call card.finish() in the last cell)")
    return problems


def _private_names() -> list[str]:
    names = []
    try:
        names.append(getpass.getuser())
    except Exception:
        pass
    home = os.path.expanduser("~")
    if home and home not in ("/", "~"):
        names.append(home)
    return [n for n in names if n]


def _scan_local_paths(where: str, text: str, private: list[str]) -> Problems:
    problems = []
    match = LOCAL_PATH.search(text)
    if match:
        start = max(match.start() - 30, 0)
        snippet = text[start : match.end() + 30].replace("\n", " ")
        problems.append(f"{where}: absolute local path {match.group(0)!r} in ...{snippet}...")
    for name in private:
        # a user name counts only as a path component (/alice/, \alice\), not as a word
        if name.startswith(("/", "~")) or re.match(r"^[A-Za-z]:\\", name):
            found = name in text
        else:
            found = re.search(rf"[/\\]{re.escape(name)}(?:[/\\]|$)", text) is not None
        if found:
            problems.append(f"{where}: contains the local user's name or home directory ({name!r})")
    return problems


def check_no_local_paths(nb, private_names: Iterable[str] | None = None) -> Problems:
    """No absolute local paths or user names in outputs or metadata.

    ``private_names`` defaults to the current user's name and home directory."""
    private = list(_private_names() if private_names is None else private_names)
    problems = []
    problems += _scan_local_paths("notebook metadata", repr(dict(nb.get("metadata", {}))), private)
    for index, cell in enumerate(nb.cells):
        metadata = dict(cell.get("metadata") or {})
        if metadata:
            problems += _scan_local_paths(f"cell {index} metadata", repr(metadata), private)
        for output in cell.get("outputs", []) if cell.get("cell_type") == "code" else []:
            for text in _output_texts(output):
                problems += _scan_local_paths(f"cell {index} output", text, private)
    return problems


def check_no_widget_state(nb) -> Problems:
    """No saved widget state and no widget outputs (progress must be plain text)."""
    problems = []
    if "widgets" in (nb.get("metadata") or {}):
        problems.append("notebook metadata has 'widgets' state (clear it; use plain-text progress)")
    for index, cell in _code_cells(nb):
        for output in cell.get("outputs", []):
            for mime in WIDGET_MIMETYPES:
                if mime in (output.get("data") or {}):
                    problems.append(f"cell {index}: widget output {mime} (use plain-text progress, e.g. tqdm.auto -> tqdm.std)")
    return problems


def _assigns_budget(source: str) -> tuple[bool, object]:
    """(whether ``source`` assigns BUDGET, the literal value or None)."""
    try:
        tree = ast.parse(source)
    except SyntaxError:
        found = re.search(r"^BUDGET\s*(?::[^=]+)?=\s*(.+)$", source, re.MULTILINE)
        return (found is not None, None)
    for node in tree.body:
        targets = []
        if isinstance(node, ast.Assign):
            targets = node.targets
        elif isinstance(node, ast.AnnAssign) and node.value is not None:
            targets = [node.target]
        if any(isinstance(t, ast.Name) and t.id == "BUDGET" for t in targets):
            try:
                return True, ast.literal_eval(node.value)
            except ValueError:
                return True, None
    return False, None


def check_parameters_cell(nb) -> Problems:
    """Exactly one code cell is tagged ``parameters`` (papermill), and it assigns BUDGET
    (a literal one of smoke, cpu, gpu, auto)."""
    tagged = [(i, c) for i, c in enumerate(nb.cells) if "parameters" in _tags(c)]
    if not tagged:
        return ["no cell tagged 'parameters' (papermill needs one, holding every knob including BUDGET)"]
    if len(tagged) > 1:
        return [f"{len(tagged)} cells tagged 'parameters' (cells {[i for i, _ in tagged]}); keep exactly one"]
    index, cell = tagged[0]
    if cell.get("cell_type") != "code":
        return [f"cell {index}: the 'parameters' cell is a {cell.get('cell_type')} cell, not code"]
    assigned, value = _assigns_budget(_text(cell.get("source", "")))
    if not assigned:
        return [f"cell {index}: the 'parameters' cell does not assign BUDGET"]
    if isinstance(value, str) and value.strip().lower() not in ALL_BUDGETS:
        return [f"cell {index}: BUDGET = {value!r} is not one of {ALL_BUDGETS}"]
    return []


CHECKS: tuple[Callable[..., Problems], ...] = (
    check_execution_order,
    check_no_errors,
    check_run_card,
    check_no_local_paths,
    check_no_widget_state,
    check_parameters_cell,
)


def load(notebook: NotebookLike) -> nbformat.NotebookNode:
    if isinstance(notebook, nbformat.NotebookNode):
        return notebook
    return nbformat.read(Path(notebook), as_version=4)


def check_notebook(notebook: NotebookLike) -> Problems:
    """Every problem found by every check (an empty list: the notebook can be committed)."""
    nb = load(notebook)
    problems = []
    try:
        nbformat.validate(nb)
    except nbformat.ValidationError as error:
        problems.append(f"not a valid notebook: {str(error).splitlines()[0]}")
    for check in CHECKS:
        problems += check(nb)
    return problems


if __name__ == "__main__":  # python tests/notebook_checks.py notebooks/*.ipynb
    import sys

    failed = False
    for path in sys.argv[1:]:
        found = check_notebook(path)
        failed = failed or bool(found)
        print(f"{path}: {'ok' if not found else f'{len(found)} problem(s)'}")
        for problem in found:
            print(f"  - {problem}")
    sys.exit(1 if failed else 0)
