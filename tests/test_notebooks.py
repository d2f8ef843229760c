"""Committed chapter notebooks follow the book's conventions (see CONTRIBUTING.md).

(a) Unit tests of every check in ``tests/notebook_checks.py`` on small synthetic
    notebooks: a good one passes, each kind of bad one is caught.
(b) Every committed ``notebooks/*.ipynb`` passes every check. With no notebook
    committed yet, (b) has nothing to run. A notebook named in
    :data:`PRESENTATION_EXEMPT` skips the presentation checks until the change
    that rebuilds it removes its name.
"""

from __future__ import annotations

import sys
from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook, new_output

sys.path.insert(0, str(Path(__file__).resolve().parent))  # notebook_checks, under any import mode
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # cookbook, when not installed

import notebook_checks as checks  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))

#: Chapters not yet held to the presentation standard (checks.PRESENTATION_CHECKS), by name.
#: None: chapter 01, rebuilt on the testbed, is held to it like every later chapter.
PRESENTATION_EXEMPT: set[str] = set()

CARD = """=== run card: 99_example ===
budget: {budget}
device: cpu (2 threads)
dataset: shapes (train 10,000 / test 2,000)
backbone: ResNet-18 width 16
epochs: 20
versions: python 3.11.7, torch 2.14.1, torchvision 0.29.1, lightly 1.6.0, cookbook 0.1.0
started: 2026-11-22 10:31 UTC
"""
FINAL = CARD + "finished: 2026-11-22 10:43 UTC\nwall time: 12 min 31 s\n"


def stdout(text: str):
    return new_output("stream", name="stdout", text=text)


def good_notebook(budget: str = "cpu") -> nbformat.NotebookNode:
    """A minimal chapter that follows every convention and the presentation standard."""
    setup = new_code_cell("import importlib.util", execution_count=1)
    setup.metadata["tags"] = ["remove-cell"]
    params = new_code_cell('BUDGET = "auto"  # "smoke", "cpu", "gpu" or "auto"\nSEED = 0', execution_count=2)
    params.metadata["tags"] = ["parameters", "hide-cell"]
    card = new_code_cell("card = RunCard(...).start()", execution_count=3,
                         outputs=[stdout(CARD.format(budget=budget))])
    card.metadata["tags"] = ["hide-input"]
    figure = new_code_cell("plots.plot_study(runs)", execution_count=5, outputs=[
        new_output("display_data", data={"image/png": "iVBORw0KGgo=", "text/plain": "<Figure>"})])
    figure.metadata["mystnb"] = {"figure": {"name": "fig-study", "caption": "kNN accuracy and RankMe."}}
    cells = [
        new_markdown_cell("# 99 · Example\n\nCovers nothing. Cost: 0 GPU minutes, 0 CPU minutes."),
        setup,
        params,
        card,
        new_markdown_cell("## 1 · A section\n\nThe table below and {numref}`fig-study`."),
        new_code_cell(
            "df",
            execution_count=4,
            outputs=[
                new_output(
                    "execute_result",
                    data={"text/plain": "   method  knn\n0  simclr  0.5",
                          "text/html": "<table><thead><tr><th>setting</th><th>kNN (%)</th></tr></thead>"
                                       "<tbody><tr><th>0.1</th><td>50.0</td></tr></tbody></table>"},
                    execution_count=4,
                )
            ],
        ),
        figure,
        new_code_cell("card.finish()", execution_count=6, outputs=[stdout(FINAL.format(budget=budget))]),
        new_code_cell("", execution_count=None),  # empty cells are never executed: allowed
        new_markdown_cell("What it means: kNN reaches {glue:text}`knn:.1f` %."),
    ]
    nb = new_notebook(cells=cells)
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    return nb


def only(check, nb, **kwargs):
    problems = check(nb, **kwargs)
    assert problems, f"{check.__name__} missed the problem"
    return " | ".join(problems)


# ------------------------------------------------------------------ (a) the checks themselves
def test_good_notebook_passes():
    nb = good_notebook()
    nbformat.validate(nb)
    assert checks.check_notebook(nb) == []


def test_gpu_run_passes():
    assert checks.check_notebook(good_notebook("gpu")) == []


def test_check_notebook_reads_a_path(tmp_path):
    path = tmp_path / "99_example.ipynb"
    nbformat.write(good_notebook(), path)
    assert checks.check_notebook(path) == []


def test_every_check_is_run():
    names = {c.__name__ for c in checks.CHECKS}
    assert names == {
        "check_execution_order",
        "check_no_errors",
        "check_run_card",
        "check_no_local_paths",
        "check_no_widget_state",
        "check_parameters_cell",
    }
    assert {c.__name__ for c in checks.PRESENTATION_CHECKS} == {
        "check_code_line_length",
        "check_setup_cells_hidden",
        "check_figures_captioned",
        "check_long_outputs_collapsed",
        "check_tables",
        "check_prose_numbers_glued",
    }


def test_presentation_checks_can_be_left_out():
    nb = good_notebook()
    nb.cells[5].source = "x = " + "1 + " * 30 + "1"
    assert checks.check_notebook(nb) and checks.check_notebook(nb, presentation=False) == []


# execution order
def test_unexecuted_cell_is_caught():
    nb = good_notebook()
    nb.cells[5].execution_count = None
    assert "not executed" in only(checks.check_execution_order, nb)


def test_out_of_order_execution_is_caught():
    nb = good_notebook()
    nb.cells[3].execution_count, nb.cells[5].execution_count = 4, 3
    assert "expected 3" in only(checks.check_execution_order, nb)


def test_rerun_cell_is_caught():
    nb = good_notebook()
    nb.cells[7].execution_count = 9  # a gap: something was run twice
    assert "expected 6" in only(checks.check_execution_order, nb)


def test_not_starting_at_one_is_caught():
    nb = good_notebook()
    for cell in nb.cells:
        if cell.cell_type == "code" and cell.execution_count is not None:
            cell.execution_count += 10
    assert "expected 1" in only(checks.check_execution_order, nb)


# errors
def test_error_output_is_caught():
    nb = good_notebook()
    nb.cells[5].outputs.append(
        new_output("error", ename="ZeroDivisionError", evalue="division by zero", traceback=["Traceback ..."])
    )
    assert "ZeroDivisionError" in only(checks.check_no_errors, nb)
    assert checks.check_notebook(nb)


# run card
def test_missing_run_card_is_caught():
    nb = good_notebook()
    nb.cells[3].outputs = []
    nb.cells[7].outputs = []
    assert "no run card" in only(checks.check_run_card, nb)


def test_smoke_run_card_is_caught():
    assert "budget: smoke" in only(checks.check_run_card, good_notebook("smoke"))


def test_auto_run_card_is_caught():
    assert "budget: auto" in only(checks.check_run_card, good_notebook("auto"))


def test_missing_final_card_is_caught():
    nb = good_notebook()
    nb.cells[7].outputs = []
    assert "wall time" in only(checks.check_run_card, nb)


def test_incomplete_run_card_is_caught():
    nb = good_notebook()
    nb.cells[3].outputs = [stdout("budget: cpu\ndevice: cpu\n")]
    text = only(checks.check_run_card, nb)
    assert "'versions:'" in text and "'backbone:'" in text


def test_run_card_split_across_stream_outputs_is_found():
    nb = good_notebook()
    head, tail = FINAL.format(budget="cpu").split("backbone:")
    nb.cells[7].outputs = [stdout(head), stdout("backbone:" + tail)]
    assert checks.check_run_card(nb) == []


def test_card_printed_by_runcard_is_recognised(capsys, monkeypatch):
    from cookbook import budget

    clock = iter([0.0, 751.0])
    monkeypatch.setattr(budget.time, "perf_counter", lambda: next(clock))
    card = budget.RunCard(
        "99_example", budget="cpu", device="cpu", dataset="shapes",
        train_size=10_000, test_size=2_000, backbone="ResNet-18 width 16", epochs=20,
    ).start()
    start = capsys.readouterr().out
    card.finish()
    end = capsys.readouterr().out
    nb = good_notebook()
    nb.cells[3].outputs = [stdout(start)]
    nb.cells[7].outputs = [stdout(end)]
    assert checks.check_run_card(nb) == []
    assert checks.check_no_local_paths(nb) == []


# local paths and user names
@pytest.mark.parametrize(
    "leak",
    [
        "/home/alice/ssl/data",
        "/root/.cache/torch",
        "/Users/alice/ssl",
        "/work/main/runs/demo",
        "/tmp/tmpab12/checkpoint.pt",
        "C:\\Users\\alice\\ssl",
    ],
)
def test_local_path_in_output_is_caught(leak):
    nb = good_notebook()
    nb.cells[5].outputs.append(stdout(f"saved to {leak}\n"))
    assert "absolute local path" in only(checks.check_no_local_paths, nb, private_names=[])


def test_local_path_in_warning_is_caught():
    nb = good_notebook()
    warning = "/home/alice/venv/lib/python3.11/site-packages/torch/x.py:12: UserWarning: ...\n"
    nb.cells[5].outputs.append(new_output("stream", name="stderr", text=warning))
    assert only(checks.check_no_local_paths, nb, private_names=[])


def test_local_path_in_html_result_is_caught():
    nb = good_notebook()
    nb.cells[5].outputs[0].data["text/html"] = "<td>/Users/alice/x.png</td>"
    assert only(checks.check_no_local_paths, nb, private_names=[])


def test_local_path_in_traceback_is_caught():
    nb = good_notebook()
    nb.cells[5].outputs.append(
        new_output("error", ename="OSError", evalue="x", traceback=['File "/home/alice/x.py", line 1'])
    )
    assert only(checks.check_no_local_paths, nb, private_names=[])


def test_local_path_in_papermill_metadata_is_caught():
    nb = good_notebook()
    nb.metadata["papermill"] = {"input_path": "/home/alice/ssl/notebooks/99.ipynb", "output_path": "x.ipynb"}
    assert "notebook metadata" in only(checks.check_no_local_paths, nb, private_names=[])


def test_user_name_as_path_component_is_caught():
    nb = good_notebook()
    nb.cells[5].outputs.append(stdout("cache in /srv/alice/cache\n"))
    assert "user's name" in only(checks.check_no_local_paths, nb, private_names=["alice"])


def test_user_name_as_a_word_is_not_a_path():
    nb = good_notebook()
    nb.cells[5].outputs.append(stdout("alice and bob exchange keys\n"))
    assert checks.check_no_local_paths(nb, private_names=["alice"]) == []


def test_sources_may_mention_paths():
    nb = good_notebook()
    nb.cells[0].source += "\n\nExample: `papermill ... /tmp/out.ipynb`"
    assert checks.check_no_local_paths(nb, private_names=[]) == []


def test_images_are_not_scanned_as_text():
    nb = good_notebook()
    nb.cells[5].outputs.append(new_output("display_data", data={"image/png": "iVBO/tmp/Rw0KGgo=", "text/plain": "<Figure>"}))
    assert checks.check_no_local_paths(nb, private_names=[]) == []


# widget state
def test_widget_metadata_is_caught():
    nb = good_notebook()
    nb.metadata["widgets"] = {"application/vnd.jupyter.widget-state+json": {"state": {}, "version_major": 2}}
    assert "widgets" in only(checks.check_no_widget_state, nb)


def test_widget_output_is_caught():
    nb = good_notebook()
    nb.cells[5].outputs.append(
        new_output(
            "display_data",
            data={
                "application/vnd.jupyter.widget-view+json": {"model_id": "abc", "version_major": 2, "version_minor": 0},
                "text/plain": "  0%|          | 0/10",
            },
        )
    )
    assert "widget output" in only(checks.check_no_widget_state, nb)


# parameters cell
def test_missing_parameters_cell_is_caught():
    nb = good_notebook()
    nb.cells[2].metadata["tags"] = []
    assert "no cell tagged" in only(checks.check_parameters_cell, nb)


def test_two_parameters_cells_are_caught():
    nb = good_notebook()
    nb.cells[1].metadata["tags"] = ["parameters"]
    assert "2 cells tagged" in only(checks.check_parameters_cell, nb)


def test_parameters_cell_without_budget_is_caught():
    nb = good_notebook()
    nb.cells[2].source = "SEED = 0\n# BUDGET is set later"
    assert "does not assign BUDGET" in only(checks.check_parameters_cell, nb)


def test_parameters_cell_with_unknown_budget_is_caught():
    nb = good_notebook()
    nb.cells[2].source = 'BUDGET = "huge"'
    assert "huge" in only(checks.check_parameters_cell, nb)


def test_parameters_markdown_cell_is_caught():
    nb = good_notebook()
    nb.cells[2].metadata["tags"] = []
    nb.cells[0].metadata["tags"] = ["parameters"]
    assert "not code" in only(checks.check_parameters_cell, nb)


def test_papermill_injected_cell_is_not_a_second_parameters_cell():
    nb = good_notebook()
    injected = new_code_cell('# Parameters\nBUDGET = "cpu"\n', execution_count=3)
    injected.metadata["tags"] = ["injected-parameters", "remove-cell"]
    nb.cells.insert(3, injected)
    count = 1
    for cell in nb.cells:
        if cell.cell_type == "code" and cell.source.strip():
            cell.execution_count = count
            count += 1
    assert checks.check_notebook(nb) == []


@pytest.mark.parametrize("source", ['BUDGET: str = "cpu"', "BUDGET = 'GPU'", 'BUDGET = "smoke"\nEPOCHS = 3'])
def test_parameters_cell_forms_accepted(source):
    nb = good_notebook()
    nb.cells[2].source = source
    assert checks.check_parameters_cell(nb) == []


# presentation: code line length
def test_code_line_of_89_characters_is_caught():
    nb = good_notebook()
    nb.cells[5].source = "df\n" + "x = " + "a" * 85
    assert len(nb.cells[5].source.splitlines()[1]) == 89
    text = only(checks.check_code_line_length, nb)
    assert "cell 5, line 2: 89 characters" in text


def test_code_line_of_88_characters_passes():
    nb = good_notebook()
    nb.cells[5].source = "x = " + "a" * 84
    assert checks.check_code_line_length(nb) == []


# presentation: set-up cells hidden
def test_visible_setup_cell_is_caught():
    nb = good_notebook()
    nb.cells[1].metadata["tags"] = []
    assert "cell 1 ('import importlib.util')" in only(checks.check_setup_cells_hidden, nb)


def test_visible_injected_parameters_cell_is_caught():
    nb = good_notebook()
    injected = new_code_cell('# Parameters\nBUDGET = "cpu"\n', execution_count=3)
    injected.metadata["tags"] = ["injected-parameters"]
    nb.cells.insert(3, injected)
    assert "remove-cell" in only(checks.check_setup_cells_hidden, nb)
    injected.metadata["tags"].append("remove-cell")
    assert checks.check_setup_cells_hidden(nb) == []


def test_hide_injected_parameters_tags_the_cell(tmp_path):
    nb = good_notebook()
    injected = new_code_cell('# Parameters\nBUDGET = "cpu"\n', execution_count=None)
    injected.metadata["tags"] = ["injected-parameters"]
    nb.cells.insert(3, injected)
    path = tmp_path / "99_example.ipynb"
    nbformat.write(nb, path)
    assert checks.hide_injected_parameters(path) == 1
    assert checks.hide_injected_parameters(path) == 0  # already tagged
    assert checks.check_setup_cells_hidden(nbformat.read(path, as_version=4)) == []


def test_cells_after_the_first_section_may_show_code():
    nb = good_notebook()
    assert "tags" not in nb.cells[5].metadata
    assert checks.check_setup_cells_hidden(nb) == []


# presentation: figures numbered, captioned, referred to
def test_figure_without_caption_is_caught():
    nb = good_notebook()
    del nb.cells[6].metadata["mystnb"]
    assert "without a number or caption" in only(checks.check_figures_captioned, nb)
    nb.cells[6].metadata["mystnb"] = {"figure": {"name": "fig-study"}}
    assert "without a number or caption" in only(checks.check_figures_captioned, nb)


def test_figure_never_referred_to_is_caught():
    nb = good_notebook()
    nb.cells[4].source = "## 1 · A section\n\nThe figure below."
    assert "{numref}`fig-study`" in only(checks.check_figures_captioned, nb)
    nb.cells[4].source = "## 1 · A section\n\nAs [the figure](#fig-study) shows."
    assert checks.check_figures_captioned(nb) == []


def test_removed_figure_needs_no_caption():
    nb = good_notebook()
    del nb.cells[6].metadata["mystnb"]
    nb.cells[6].metadata["tags"] = ["remove-output"]
    assert checks.check_figures_captioned(nb) == []


# presentation: training logs
def test_long_visible_log_is_caught():
    nb = good_notebook()
    log = "".join(f"epoch {e:3d}  loss 4.2\n" for e in range(1, 21))
    nb.cells[5].outputs.insert(0, stdout(log))
    assert "prints 20 lines" in only(checks.check_long_outputs_collapsed, nb)
    nb.cells[5].metadata["tags"] = ["hide-output"]
    assert checks.check_long_outputs_collapsed(nb) == []


def test_one_line_per_run_passes():
    nb = good_notebook()
    nb.cells[5].outputs.insert(0, stdout("".join(f"run {i}: kNN 0.4\n" for i in range(6))))
    assert checks.check_long_outputs_collapsed(nb) == []


# presentation: tables
def test_empty_index_name_row_is_caught():
    nb = good_notebook()
    nb.cells[5].outputs[0].data["text/html"] = (
        '<table class="dataframe"><thead><tr><th></th><th>kNN (%)</th><th>RankMe</th></tr>'
        "<tr><th>setting</th><th></th><th></th></tr></thead><tbody></tbody></table>")
    assert "rename_axis" in only(checks.check_tables, nb)


def test_long_table_header_is_caught():
    nb = good_notebook()
    nb.cells[5].outputs[0].data["text/html"] = (
        "<table><thead><tr><th>setting</th><th>linear test, projector output (%)</th></tr></thead></table>")
    assert "33 characters" in only(checks.check_tables, nb)


def test_pandas_table_with_index_name_in_the_corner_passes():
    pd = pytest.importorskip("pandas")
    frame = pd.DataFrame({"kNN (%)": [40.1, 42.0]}, index=pd.Index([0.1, 0.5], name="τ"))
    nb = good_notebook()
    nb.cells[5].outputs[0].data["text/html"] = frame.to_html()
    assert "rename_axis" in only(checks.check_tables, nb)
    nb.cells[5].outputs[0].data["text/html"] = frame.rename_axis(index=None, columns="τ").to_html()
    assert checks.check_tables(nb) == []


# presentation: numbers in prose
@pytest.mark.parametrize("typed", ["reaches 43.2 % kNN accuracy", "gains 5 percentage points",
                                   "is 12% better"])
def test_typed_percentage_is_caught(typed):
    nb = good_notebook()
    nb.cells[9].source = f"What it means: SimCLR {typed}."
    assert "glue" in only(checks.check_prose_numbers_glued, nb)


def test_percentages_in_code_math_and_glue_are_allowed():
    nb = good_notebook()
    nb.cells[9].source = ("Use `--set crop=0.5` (`50%` crops) in code, $p = 10\\%$ in math, "
                          "and {glue:text}`knn:.1f` % from the run.")
    assert checks.check_prose_numbers_glued(nb) == []


# ------------------------------------------------------------------ (b) the committed notebooks
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_committed_notebook(path):
    problems = checks.check_notebook(path, presentation=path.name not in PRESENTATION_EXEMPT)
    assert not problems, f"{path.name}:\n  - " + "\n  - ".join(problems)


def test_presentation_exemptions_name_existing_notebooks():
    names = {p.name for p in NOTEBOOKS}
    assert PRESENTATION_EXEMPT <= names, f"exempt but not in notebooks/: {PRESENTATION_EXEMPT - names}"


def test_committed_notebooks_are_named_nn_topic():
    bad = [p.name for p in NOTEBOOKS if not (p.name[:2].isdigit() and p.name[2] == "_")]
    assert not bad, f"chapter notebooks are named NN_topic.ipynb: {bad}"
