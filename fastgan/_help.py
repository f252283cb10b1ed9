"""Command-line help from module docstrings: the reStructuredText markup they use for Sphinx, as plain text."""
from __future__ import annotations

import re

_ROLE = re.compile(r":(?:class|func|data|meth|attr|mod|obj):`~?([^`]+)`")
_LITERAL = re.compile(r"``([^`]+)``")
_TABLE_RULE = re.compile(r"^=+( +=+)*$", re.MULTILINE)


def plain_help(doc: str, *, stop_at: str | None = None) -> str:
    """``doc`` for ``argparse``: roles (:class:`X`) and literals (``x``) as their text, table rules dropped;
    with ``stop_at``, only what comes before the first line starting with it (the library-API part of a
    module docstring, which ``--help`` readers do not need)."""
    if stop_at is not None:
        lines = doc.splitlines()
        cut = next((i for i, line in enumerate(lines) if line.startswith(stop_at)), len(lines))
        doc = "\n".join(lines[:cut])
    doc = _ROLE.sub(r"\1", doc)
    # a literal that starts a table cell keeps the cell's width (its four backticks as spaces)
    doc = re.sub(r"``([^`]+)``( {2,})", lambda m: m.group(1) + " " * (4 + len(m.group(2))), doc)
    doc = _LITERAL.sub(r"\1", doc)
    doc = _TABLE_RULE.sub("", doc)
    return re.sub(r"\n{3,}", "\n\n", doc).strip() + "\n"
