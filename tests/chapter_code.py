"""Runs one function of a chapter notebook, as the chapter defines it, for the
chapter's tests (``tests/test_chapterNN.py``): the tests check the very cells
readers see, not copies of them."""

from pathlib import Path

import nbformat
import torch
import torch.nn.functional as F

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"


def defined(notebook: str, name: str):
    """The function ``name`` as the one code cell of ``notebooks/<notebook>`` that
    defines it defines it (with ``torch`` and ``F`` in scope, as in the chapter)."""
    path = NOTEBOOKS / notebook
    cells = [c for c in nbformat.read(path, as_version=4).cells
             if c.cell_type == "code" and f"def {name}(" in c.source]
    assert len(cells) == 1, f"{notebook} should define {name} in exactly one code cell"
    namespace = {"torch": torch, "F": F}
    exec(compile(cells[0].source, f"{path.name}:{name}", "exec"), namespace)
    return namespace[name]
