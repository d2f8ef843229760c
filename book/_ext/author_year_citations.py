"""Author-year citations whose text matches the reference list.

sphinxcontrib-bibtex's ``author_year`` referencing style writes "Chen et al.,
2020" in the text, but its bibliography styles label the list [1], [2], ...
This Sphinx extension registers

- a pybtex label style, ``author_year``: each entry is labelled like its
  citation, "Chen et al., 2020", "Roy and Vetterli, 2007"; entries that would
  share a label get a letter after the year ("Chen et al., 2020a" and
  "Chen et al., 2020b"), in the order of the list;
- a pybtex formatting style, ``cookbook``: ``plain`` (sorted by author, year,
  title) with those labels;
- a referencing style, ``cookbook``: ``{cite:p}`` prints the label, "[Chen et
  al., 2020a]"; ``{cite:t}`` prints the authors and the year of the label,
  "Chen et al. [2020a]". The text and the list therefore always agree.

Used by ``_config.yml``: ``bibtex_default_style: cookbook`` and
``bibtex_reference_style: cookbook``.
"""

from __future__ import annotations

import string
from collections import Counter
from dataclasses import dataclass, field
from typing import Iterable

import pybtex.plugin
from pybtex.richtext import Text
from pybtex.style.formatting.plain import Style as PlainStyle
from pybtex.style.labels import BaseLabelStyle
from pybtex.style.template import join, node
from sphinxcontrib.bibtex.plugin import register_plugin
from sphinxcontrib.bibtex.style.referencing import BaseReferenceStyle, BracketStyle, GroupReferenceStyle, PersonStyle
from sphinxcontrib.bibtex.style.referencing.extra_author import ExtraAuthorReferenceStyle
from sphinxcontrib.bibtex.style.referencing.extra_empty import ExtraEmptyReferenceStyle
from sphinxcontrib.bibtex.style.referencing.extra_label import ExtraLabelReferenceStyle
from sphinxcontrib.bibtex.style.referencing.extra_year import ExtraYearReferenceStyle
from sphinxcontrib.bibtex.style.template import entry_label, join2, post_text, pre_text, reference


def _surnames(entry) -> str:
    """"Surname", "A and B" or "A et al.", as sphinxcontrib-bibtex's PersonStyle writes them."""
    persons = entry.persons.get("author") or entry.persons.get("editor") or []
    if not persons:
        return Text.from_latex(entry.fields.get("title", entry.key)).render_as("text")
    names = pybtex.plugin.find_plugin("pybtex.style.names", "last")()
    last = [names.format(person, True).format().render_as("text") for person in persons]
    if len(last) == 1:
        return last[0]
    if len(last) == 2:
        return f"{last[0]} and {last[1]}"
    return f"{last[0]} et al."


class AuthorYearLabelStyle(BaseLabelStyle):
    """Labels "Surname, year", with a, b, ... after the year where two entries collide."""

    def format_labels(self, sorted_entries):
        entries = list(sorted_entries)
        plain = [f"{_surnames(e)}, {e.fields.get('year', 'n.d.')}" for e in entries]
        counts = Counter(plain)
        seen: Counter = Counter()
        for label in plain:
            if counts[label] > 1:
                yield label + string.ascii_lowercase[seen[label]]
                seen[label] += 1
            else:
                yield label


class CookbookStyle(PlainStyle):
    """pybtex's plain style (sorted by author, year, title) with author-year labels."""

    default_label_style = "author_year"


@node
def label_year(children, data) -> Text:
    """The year part of the entry's label ("2020a" of "Chen et al., 2020a")."""
    assert not children
    return Text(data["formatted_entry"].label.rsplit(", ", 1)[-1])


def _semicolons() -> BracketStyle:
    """Labels hold a comma ("Chen et al., 2020"), so several citations are split by semicolons."""
    return BracketStyle(sep="; ", sep2="; ", last_sep="; ")


@dataclass
class _Parenthetical(BaseReferenceStyle):
    bracket: BracketStyle = field(default_factory=_semicolons)

    def role_names(self) -> Iterable[str]:
        return [f"{alt}p{full}" for alt in ["", "al"] for full in ["", "s"]]

    def outer(self, role_name, children):
        return self.bracket.outer(children, brackets="al" not in role_name, capfirst=False)

    def inner(self, role_name):
        return join2(sep1=" ", sep2=", ")[pre_text, reference[entry_label], post_text]


@dataclass
class _Textual(BaseReferenceStyle):
    bracket: BracketStyle = field(default_factory=BracketStyle)
    person: PersonStyle = field(default_factory=PersonStyle)

    def role_names(self) -> Iterable[str]:
        return [f"{cap}t{full}" for cap in ["", "c"] for full in ["", "s"]]

    def outer(self, role_name, children):
        return self.bracket.outer(children, brackets=False, capfirst="c" in role_name)

    def inner(self, role_name):
        return join(sep=" ")[
            self.person.author_or_editor_or_title(full="s" in role_name),
            join[self.bracket.left, join2(sep1=" ", sep2=", ")[pre_text, reference[label_year], post_text],
                 self.bracket.right],
        ]


@dataclass
class CookbookReferenceStyle(GroupReferenceStyle):
    """[label] for {cite:p}; Authors [year of the label] for {cite:t}."""

    #: How names are written (read by sphinxcontrib-bibtex's templates through the group);
    #: "et al." in plain text, as in the labels.
    person: PersonStyle = field(default_factory=lambda: PersonStyle(other=" et al."))

    def __post_init__(self):
        self.styles.extend([
            _Parenthetical(), _Textual(person=self.person), ExtraAuthorReferenceStyle(person=self.person),
            ExtraLabelReferenceStyle(),
            ExtraYearReferenceStyle(), ExtraEmptyReferenceStyle(),
        ])
        super().__post_init__()


def setup(app):
    pybtex.plugin.register_plugin("pybtex.style.labels", "author_year", AuthorYearLabelStyle)
    pybtex.plugin.register_plugin("pybtex.style.formatting", "cookbook", CookbookStyle)
    register_plugin("sphinxcontrib.bibtex.style.referencing", "cookbook", CookbookReferenceStyle)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
