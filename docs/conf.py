"""Sphinx configuration: Markdown pages (MyST-Parser), the API reference from the docstrings
(autodoc + napoleon, Google style), the docstring examples run by the doctest builder."""

from __future__ import annotations

import os
from contextlib import contextmanager

from docutils import nodes
from sphinx.util.docutils import SphinxDirective

import focalloss

project = "focalloss"
author = "The focalloss authors"
copyright = "2026, The focalloss authors"
release = focalloss.__version__
version = release

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.doctest",
    "sphinx.ext.viewcode",
]
source_suffix = {".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build"]

myst_heading_anchors = 3  # `page.md#section` links, as on GitHub

autodoc_member_order = "bysource"
autodoc_typehints = "signature"
napoleon_google_docstring = True
napoleon_numpy_docstring = False

doctest_global_setup = "import torch"

html_theme = "furo"
html_title = f"focalloss {release}"
html_static_path: list[str] = []


@contextmanager
def _columns(width: int):
    previous = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = str(width)
    try:
        yield
    finally:
        if previous is None:
            del os.environ["COLUMNS"]
        else:
            os.environ["COLUMNS"] = previous


class CommandLineHelp(SphinxDirective):
    """``focalloss-cli``: the help of ``focalloss`` and of each command, taken from the parser
    the installed console script uses, so the page cannot drift from the code."""

    def run(self) -> list[nodes.Node]:
        from focalloss.cli import build_parser

        with _columns(90):
            parser = build_parser()
            texts = [("focalloss", parser.format_help())]
            for action in parser._subparsers._group_actions:  # the sub-command table
                for name, sub in action.choices.items():
                    texts.append((f"focalloss {name}", sub.format_help()))
        result: list[nodes.Node] = []
        for title, text in texts:
            section = nodes.rubric(text=title)
            block = nodes.literal_block(text, text)
            block["language"] = "text"
            result += [section, block]
        return result


def setup(app):
    app.add_directive("focalloss-cli", CommandLineHelp)
    return {"parallel_read_safe": True}
