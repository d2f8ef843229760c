"""The book builds with warnings as errors, and its frame is in place.

The build test runs ``jupyter-book build <repo> --path-output <tmp> -W``. It never
executes notebooks (``execute_notebooks: "off"``), so it works with or without
chapter notebooks. It takes tens of seconds: deselect it with ``-m "not slow"``.
"""

from __future__ import annotations

import html
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
REPOSITORY_URL = "https://github.com/ssl-cookbook/ssl-cookbook"
RANKME_TITLE = "RankMe: Assessing the Downstream Performance of Pretrained Self-Supervised Representations by Their Rank"


def _config() -> dict:
    return yaml.safe_load((REPO / "_config.yml").read_text(encoding="utf-8"))


def _toc_files() -> list[str]:
    toc = yaml.safe_load((REPO / "_toc.yml").read_text(encoding="utf-8"))
    files = [toc["root"]]
    for part in toc.get("parts", []):
        files += [chapter["file"] for chapter in part.get("chapters", [])]
    return files


def _jupyter_book() -> str:
    local = Path(sys.executable).with_name("jupyter-book")
    if local.exists():
        return str(local)
    found = shutil.which("jupyter-book")
    if found is None:
        pytest.skip("jupyter-book is not installed (pip install -r requirements.txt)")
    return found


def _text(path: Path) -> str:
    """Visible text of an HTML page, whitespace collapsed."""
    page = path.read_text(encoding="utf-8")
    page = re.sub(r"<(script|style)\b.*?</\1>", " ", page, flags=re.DOTALL)
    return re.sub(r"\s+", " ", html.unescape(re.sub(r"<[^>]+>", " ", page)))


# ------------------------------------------------------------------ quick checks of the configuration
def test_config_renders_committed_outputs_only():
    config = _config()
    assert config["execute"]["execute_notebooks"] == "off"
    assert config["only_build_toc_files"] is True


def test_config_buttons_and_bibliography():
    config = _config()
    assert config["repository"]["url"] == REPOSITORY_URL
    assert config["repository"]["branch"] == "main"
    assert config["launch_buttons"]["colab_url"] == "https://colab.research.google.com"
    assert config["html"]["use_repository_button"] and config["html"]["use_issues_button"]
    assert config["bibtex_bibfiles"] == ["book/references.bib"]
    extensions = set(config["parse"]["myst_enable_extensions"])
    assert {"dollarmath", "amsmath", "colon_fence"} <= extensions
    assert not config["sphinx"]["config"].get("intersphinx_mapping")  # nothing fetched at build time


def test_toc_lists_existing_pages_only():
    for name in _toc_files():
        candidates = [REPO / f"{name}{suffix}" for suffix in (".md", ".ipynb")]
        assert any(p.exists() for p in candidates), f"_toc.yml lists {name}, which does not exist"


def test_every_prose_page_is_in_the_toc():
    listed = set(_toc_files())
    pages = {f"book/{p.stem}" for p in (REPO / "book").glob("*.md")}
    assert pages <= listed, f"pages not in _toc.yml (they would be silently left out): {sorted(pages - listed)}"


def test_math_is_served_from_the_book_not_a_cdn():
    config = _config()
    assert "sphinx-mathjax-offline" in config["sphinx"]["extra_extensions"]
    assert "mathjax_path" not in config["sphinx"]["config"], "sphinx-mathjax-offline sets the path"
    requirements = (REPO / "requirements.txt").read_text(encoding="utf-8")
    assert re.search(r"^sphinx-mathjax-offline\b", requirements, re.MULTILINE)
    vendored = [p for p in REPO.rglob("*.js") if not {"_build", ".venv", ".venv-ci", "venv", ".git"}
                & set(p.relative_to(REPO).parts)]
    assert not vendored, f"no third-party JavaScript in the repository: {vendored}"


def test_citations_and_reference_list_share_one_style():
    sphinx = _config()["sphinx"]
    assert sphinx["config"]["bibtex_reference_style"] == "cookbook"
    assert sphinx["config"]["bibtex_default_style"] == "cookbook"
    assert "author_year_citations" in sphinx["local_extensions"]


def test_navigation_does_not_repeat_a_page_title():
    toc = yaml.safe_load((REPO / "_toc.yml").read_text(encoding="utf-8"))
    for part in toc["parts"]:
        for chapter in part["chapters"]:
            page = REPO / f"{chapter['file']}.md"
            if page.exists():
                title = re.search(r"^# (.+)$", page.read_text(encoding="utf-8"), re.MULTILINE).group(1)
                assert title.strip() != part["caption"], f"part {part['caption']!r} repeats its page's title"


def test_code_blocks_on_prose_pages_fit_the_column():
    long = []
    for page in sorted((REPO / "book").glob("*.md")):
        inside = False
        for number, line in enumerate(page.read_text(encoding="utf-8").splitlines(), 1):
            if line.lstrip().startswith("```"):
                inside = not inside
            elif inside and len(line) > 88:
                long.append(f"{page.name}:{number} ({len(line)} characters)")
    assert not long, f"code lines longer than 88 characters: {long}"


def test_bibliography_is_rendered_once():
    directives = [p.name for p in (REPO / "book").glob("*.md") if "{bibliography}" in p.read_text(encoding="utf-8")]
    assert directives == ["references.md"]


# ------------------------------------------------------------------ the build
@pytest.mark.slow
def test_book_builds_without_warnings(tmp_path):
    command = [_jupyter_book(), "build", str(REPO), "--path-output", str(tmp_path), "-W", "--builder", "html"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=900, cwd=tmp_path)
    log = result.stdout + result.stderr
    assert result.returncode == 0, f"jupyter-book build failed:\n{log[-6000:]}"
    assert "WARNING" not in log, log[-6000:]

    out = tmp_path / "_build" / "html"
    for page in ("index.html", "book/intro.html", "book/setup.html", "book/evaluating_without_labels.html",
                 "book/recipes.html", "book/references.html"):
        assert (out / page).is_file(), f"{page} missing from the built site"

    references = _text(out / "book" / "references.html")
    for title in (
        RANKME_TITLE,
        "Assessing Representation Quality in Self-Supervised Learning by Measuring Eigenspectrum Decay",
        "A Cookbook of Self-Supervised Learning",
        "A Simple Framework for Contrastive Learning of Visual Representations",
    ):
        assert title in references, f"bibliography entry {title!r} not rendered"

    intro = (out / "book" / "intro.html").read_text(encoding="utf-8")
    assert "references.html#" in intro, "citations on the intro page do not link to the bibliography"
    assert REPOSITORY_URL in intro and f"{REPOSITORY_URL}/issues" in intro
    assert "admonition" in intro

    evaluating = (out / "book" / "evaluating_without_labels.html").read_text(encoding="utf-8")
    assert "\\operatorname{RankMe}" in evaluating and "cookbook.metrics.alpha_req" in evaluating

    # Math offline: MathJax is in the site, and no page loads a script from elsewhere.
    assert (out / "_static" / "mathjax" / "tex-chtml.js").is_file()
    assert '_static/mathjax/tex-chtml.js"' in evaluating
    for page in out.rglob("*.html"):
        remote = re.findall(r'<script[^>]+src="(https?:[^"]+)"', page.read_text(encoding="utf-8"))
        assert not remote, f"{page.relative_to(out)} loads scripts from the network: {remote}"

    # Citations and the reference list: the same author-year labels.
    labels = re.findall(r'<span class="label"><span class="fn-bracket">\[</span>(.*?)<',
                        (out / "book" / "references.html").read_text(encoding="utf-8"))
    assert labels and all(re.fullmatch(r".+, \d{4}[a-z]?", label) for label in labels), labels[:5]
    assert {"Chen et al., 2020a", "Chen et al., 2020b", "Roy and Vetterli, 2007"} <= set(labels)
    intro_text = re.sub(r"\[ | (?=[\];])", lambda m: m.group(0).strip(), _text(out / "book" / "intro.html"))
    for cited in ("[Chen et al., 2020a]", "[Chen et al., 2020b; He et al., 2020]", "Balestriero et al. [2023]"):
        assert cited in intro_text, f"{cited!r} not in the introduction"

    for notebook in sorted((REPO / "notebooks").glob("*.ipynb")):
        if f"notebooks/{notebook.stem}" in _toc_files():
            built = (out / "notebooks" / f"{notebook.stem}.html").read_text(encoding="utf-8")
            assert "colab.research.google.com" in built, f"no Colab button on {notebook.name}"
