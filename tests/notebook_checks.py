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

and the book's presentation standard (:data:`PRESENTATION_CHECKS`, CONTRIBUTING.md,
"Presentation standard"):

* code lines of at most :data:`MAX_LINE` characters;
* set-up cells (everything before the first ``##`` section) hidden by a tag;
* every figure numbered and captioned through ``mystnb`` figure metadata, and
  referred to from the prose;
* long printed output (training logs) collapsed by a tag;
* tables with short headers and no empty index-name row;
* no percentage typed into the prose: numbers come from ``glue``.

This is test code, not package code: the chapters never import it.
"""

from __future__ import annotations

import ast
import getpass
import os
import re
from html.parser import HTMLParser
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

#: Longest code line a chapter may have (characters), so code fits the book's column.
MAX_LINE = 88
#: Tags that hide a cell's code in the book (the cell still runs on Colab and in papermill).
HIDING_TAGS = ("remove-cell", "remove-input", "hide-cell", "hide-input")
#: Tags that collapse or remove a cell's output in the book.
OUTPUT_HIDING_TAGS = ("remove-cell", "remove-output", "hide-cell", "hide-output")
#: Most printed lines a cell may show before its output must be collapsed.
MAX_VISIBLE_OUTPUT_LINES = 15
#: Longest table header, in characters (longer ones wrap to several lines).
MAX_HEADER_CHARS = 24

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


# --------------------------------------------------------------------------- presentation
def check_code_line_length(nb, limit: int = MAX_LINE) -> Problems:
    """No code line is longer than ``limit`` characters (it would not fit the column)."""
    problems = []
    for index, cell in _code_cells(nb):
        for number, line in enumerate(_text(cell.get("source", "")).splitlines(), 1):
            if len(line) > limit:
                problems.append(f"cell {index}, line {number}: {len(line)} characters (at most {limit}): "
                                f"{line[:40].strip()}...")
    return problems


def _is_section_start(cell) -> bool:
    return cell.get("cell_type") == "markdown" and re.search(
        r"^##\s", _text(cell.get("source", "")), re.MULTILINE) is not None


def check_setup_cells_hidden(nb) -> Problems:
    """Every code cell before the first ``##`` section (Colab install, imports,
    parameters, papermill's injected parameters, settings, run card) carries a
    tag that hides its code in the book: the page starts with content."""
    problems = []
    for index, cell in enumerate(nb.cells):
        if _is_section_start(cell):
            break
        if cell.get("cell_type") != "code" or not _text(cell.get("source", "")).strip():
            continue
        if not set(_tags(cell)) & set(HIDING_TAGS):
            first = _text(cell.get("source", "")).strip().splitlines()[0][:50]
            problems.append(f"cell {index} ({first!r}) comes before the first section and shows its code: "
                            f"tag it one of {', '.join(HIDING_TAGS)} (papermill's injected-parameters "
                            "cell too: add remove-cell after the run)")
    return problems


def _has_image(cell) -> bool:
    return any(mime.startswith("image/") for o in cell.get("outputs", []) for mime in (o.get("data") or {}))


def check_figures_captioned(nb) -> Problems:
    """Every cell that shows a figure has ``mystnb: {figure: {name, caption}}``
    metadata (the book numbers and captions it) and the prose refers to the
    figure by its name (``{numref}`fig-name``` prints "Figure N")."""
    problems = []
    prose = "\n".join(_text(c.get("source", "")) for c in nb.cells if c.get("cell_type") == "markdown")
    for index, cell in _code_cells(nb):
        if not _has_image(cell) or set(_tags(cell)) & {"remove-cell", "remove-output"}:
            continue
        figure = ((cell.get("metadata") or {}).get("mystnb") or {}).get("figure") or {}
        name, caption = figure.get("name"), figure.get("caption")
        if not name or not caption:
            problems.append(f"cell {index}: a figure without a number or caption: add cell metadata "
                            '{"mystnb": {"figure": {"name": "fig-...", "caption": "What it shows."}}}')
        elif not re.search(rf"[`(#]{re.escape(name)}[`)>]", prose):
            problems.append(f"cell {index}: figure {name!r} is never referred to: "
                            f"write {{numref}}`{name}` in the text")
    return problems


def check_long_outputs_collapsed(nb, limit: int = MAX_VISIBLE_OUTPUT_LINES) -> Problems:
    """A cell that prints more than ``limit`` lines (a training log) is tagged to
    collapse its output (hide-output), or prints one line per run instead."""
    problems = []
    for index, cell in _code_cells(nb):
        lines = sum(_text(o.get("text", "")).count("\n") for o in cell.get("outputs", [])
                    if o.get("output_type") == "stream")
        if lines > limit and not set(_tags(cell)) & set(OUTPUT_HIDING_TAGS):
            problems.append(f"cell {index}: prints {lines} lines; tag it hide-output (collapsed in the "
                            f"book) or print at most {limit} lines (one per run)")
    return problems


class _TableHeaders(HTMLParser):
    """Rows of <th> texts in each <thead> of an HTML output."""

    def __init__(self):
        super().__init__()
        self.rows, self._in_head, self._cell = [], False, None

    def handle_starttag(self, tag, attrs):
        if tag == "thead":
            self._in_head = True
        elif tag == "tr" and self._in_head:
            self.rows.append([])
        elif tag in ("th", "td") and self._in_head and self.rows:
            self._cell = ""

    def handle_endtag(self, tag):
        if tag == "thead":
            self._in_head = False
        elif tag in ("th", "td") and self._cell is not None:
            self.rows[-1].append(self._cell.strip())
            self._cell = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell += data


def check_tables(nb, max_header: int = MAX_HEADER_CHARS) -> Problems:
    """Tables (HTML outputs) have headers of at most ``max_header`` characters and
    no header row that holds only the index's name (pandas prints one when the
    index is named: put the name in the corner with
    ``df.rename_axis(index=None, columns=NAME)``)."""
    problems = []
    for index, cell in _code_cells(nb):
        for output in cell.get("outputs", []):
            html = (output.get("data") or {}).get("text/html")
            if html is None or "<table" not in _text(html):
                continue
            parser = _TableHeaders()
            parser.feed(_text(html))
            for row in parser.rows:
                if len(row) > 1 and row[0] and not any(row[1:]):
                    problems.append(f"cell {index}: a table header row holds only the index name "
                                    f"{row[0]!r}: use df.rename_axis(index=None, columns={row[0]!r})")
                for header in row:
                    if len(header) > max_header:
                        problems.append(f"cell {index}: table header {header!r} has {len(header)} "
                                        f"characters (at most {max_header}); shorten it and explain "
                                        "it in the text")
    return problems


_INLINE_CODE_OR_MATH = re.compile(r"```.*?```|`[^`]*`|\$\$.*?\$\$|\$[^$]*\$", re.DOTALL)
_TYPED_PERCENT = re.compile(r"\b\d+(?:\.\d+)?\s?(?:%|percent\b|percentage points?\b)")


def check_prose_numbers_glued(nb) -> Problems:
    """The prose types no measured percentage ("reaches 43.2 %"): such numbers come
    from the run through ``glue`` (``{glue:text}`name:.1f` %``), so that they
    change when the notebook is run again. Code, math and roles are ignored."""
    problems = []
    for index, cell in enumerate(nb.cells):
        if cell.get("cell_type") != "markdown":
            continue
        prose = _INLINE_CODE_OR_MATH.sub(" ", _text(cell.get("source", "")))
        for match in _TYPED_PERCENT.finditer(prose):
            problems.append(f"cell {index}: {match.group(0)!r} is typed into the prose; glue it from "
                            "the cell that measured it (myst_nb.glue, then {glue:text}`name`)")
    return problems


CHECKS: tuple[Callable[..., Problems], ...] = (
    check_execution_order,
    check_no_errors,
    check_run_card,
    check_no_local_paths,
    check_no_widget_state,
    check_parameters_cell,
)

#: The presentation standard; CONTRIBUTING.md, "Presentation standard".
PRESENTATION_CHECKS: tuple[Callable[..., Problems], ...] = (
    check_code_line_length,
    check_setup_cells_hidden,
    check_figures_captioned,
    check_long_outputs_collapsed,
    check_tables,
    check_prose_numbers_glued,
)


def load(notebook: NotebookLike) -> nbformat.NotebookNode:
    if isinstance(notebook, nbformat.NotebookNode):
        return notebook
    return nbformat.read(Path(notebook), as_version=4)


def check_notebook(notebook: NotebookLike, presentation: bool = True) -> Problems:
    """Every problem found by every check (an empty list: the notebook can be committed).
    ``presentation=False`` leaves out :data:`PRESENTATION_CHECKS`."""
    nb = load(notebook)
    problems = []
    try:
        nbformat.validate(nb)
    except nbformat.ValidationError as error:
        problems.append(f"not a valid notebook: {str(error).splitlines()[0]}")
    for check in CHECKS + (PRESENTATION_CHECKS if presentation else ()):
        problems += check(nb)
    return problems


def hide_injected_parameters(path: str | os.PathLike) -> int:
    """Tag papermill's ``injected-parameters`` cells of the notebook at ``path``
    ``remove-cell`` (the book then leaves them out; they still ran) and save it.
    Returns how many cells were tagged."""
    nb = load(path)
    tagged = 0
    for cell in nb.cells:
        tags = (cell.get("metadata") or {}).get("tags", [])
        if "injected-parameters" in tags and "remove-cell" not in tags:
            cell.metadata["tags"] = [*tags, "remove-cell"]
            tagged += 1
    if tagged:
        nbformat.write(nb, Path(path))
    return tagged


if __name__ == "__main__":  # python tests/notebook_checks.py [--hide-injected] notebooks/*.ipynb
    import sys

    args = sys.argv[1:]
    if "--hide-injected" in args:
        args.remove("--hide-injected")
        for path in args:
            print(f"{path}: tagged {hide_injected_parameters(path)} injected-parameters cell(s) remove-cell")
    failed = False
    for path in args:
        found = check_notebook(path)
        failed = failed or bool(found)
        print(f"{path}: {'ok' if not found else f'{len(found)} problem(s)'}")
        for problem in found:
            print(f"  - {problem}")
    sys.exit(1 if failed else 0)
