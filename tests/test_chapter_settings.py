"""Every chapter's budget settings, checked without training anything.

The ``gpu`` settings have never run (no GPU is lent to CI), so this is what
keeps them from rotting: each chapter's ``SETTINGS`` dictionary (read from the
notebook's source, not executed) has the same keys at every budget, names a
dataset the package can load, and has sizes that fit together.
"""

import ast
from pathlib import Path

import nbformat
import pytest

from cookbook import data

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))


def settings(path):
    """The literal ``SETTINGS = {budget: dict(...)}[budget]`` of a chapter, as a dict."""
    for cell in nbformat.read(path, as_version=4).cells:
        if cell.cell_type != "code" or "SETTINGS = {" not in cell.source:
            continue
        for node in ast.walk(ast.parse(cell.source)):
            if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "SETTINGS" for t in node.targets):
                table = node.value.value if isinstance(node.value, ast.Subscript) else node.value
                return {ast.literal_eval(k): {kw.arg: ast.literal_eval(kw.value) for kw in v.keywords}
                        for k, v in zip(table.keys, table.values)}
    raise AssertionError(f"{path.name} has no SETTINGS = {{...}} cell")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_every_budget_has_the_same_keys_a_loadable_dataset_and_sizes_that_fit(path):
    budgets = settings(path)
    assert set(budgets) == {"smoke", "cpu", "gpu"}
    keys = set(budgets["cpu"])
    for name, s in budgets.items():
        assert set(s) == keys, f"{name} has keys {sorted(set(s) ^ keys)} that cpu has not, or lacks"
        dataset = s["dataset"]
        assert dataset in data.DATASETS or dataset.startswith("folder:"), f"{name}: dataset {dataset!r}"
        for size in ("train_size", "test_size", "steps", "batch_size"):
            if size in s:
                assert isinstance(s[size], int) and s[size] > 0, f"{name}: {size} = {s[size]!r}"
        for batch in ("batch_size", "study_batch"):
            if batch in s:
                assert 2 <= s[batch] <= s["train_size"], f"{name}: {batch} {s[batch]} > train_size"
        if "seeds" in s:
            assert len(s["seeds"]) >= 3 or name == "smoke", f"{name}: conclusions need 3 seeds"
    assert budgets["smoke"]["dataset"] == "shapes", "the smoke budget never reads ../shared or downloads"
    assert budgets["gpu"]["train_size"] >= budgets["cpu"]["train_size"]
