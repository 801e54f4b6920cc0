"""Every Python example a user can copy, in the README and in the documentation pages
(docs/**/*.md), runs as written.

Every ```python block runs. A sketch that is not meant to run (an interface outline, say) is
either written as ```text, or preceded on the line before its fence by
``<!-- not run: REASON -->``; such blocks are reported as skipped with the reason."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
PAGES = [page for page in PAGES if "_build" not in page.parts]
FENCE = re.compile(r"^```python\n(.*?)^```", re.S | re.M)
NOT_RUN = re.compile(r"<!-- not run: (.+?) -->\n\Z")


def _blocks() -> list[tuple[str, str, str | None]]:
    """(page:index, code, reason it is not run or None) for every ```python block."""
    blocks = []
    for page in PAGES:
        name = page.relative_to(ROOT).as_posix()
        text = page.read_text(encoding="utf-8")
        for i, match in enumerate(FENCE.finditer(text)):
            marker = NOT_RUN.search(text, 0, match.start())
            blocks.append((f"{name}:{i}", match.group(1), marker and marker.group(1)))
    return blocks


BLOCKS = _blocks()


@pytest.mark.parametrize(("name", "code", "not_run"), BLOCKS, ids=[b[0] for b in BLOCKS])
def test_example_runs(name, code, not_run):
    if not_run:
        pytest.skip(f"marked not run: {not_run}")
    exec(compile(code, name, "exec"), {"__name__": "docs_example"})


def test_readme_has_an_example():
    assert any(name.startswith("README.md:") and not_run is None for name, _, not_run in BLOCKS)


def test_every_page_with_python_is_found():
    """The fence pattern misses nothing: every page that mentions a python fence yields a block."""
    for page in PAGES:
        text = page.read_text(encoding="utf-8")
        assert len(FENCE.findall(text)) == text.count("```python\n"), page
        for other in ("```py\n", "```pycon", "```python3", "```ipython"):
            assert other not in text, f"{page}: use ```python fences (they are run)"


def test_no_interactive_examples():
    """Examples are plain scripts (run above), not `>>>` sessions that nothing would run."""
    for page in PAGES:
        for code in FENCE.findall(page.read_text(encoding="utf-8")):
            assert ">>>" not in code, page


def test_api_reference_covers_every_public_name():
    """docs/api.md documents every name in focalloss.__all__ (autodoc directives)."""
    import focalloss

    text = (ROOT / "docs" / "api.md").read_text(encoding="utf-8")
    documented = set(
        re.findall(r"^\.\. auto(?:function|class|data):: focalloss\.(\w+)", text, re.M)
    )
    missing = sorted(set(focalloss.__all__) - documented)
    assert not missing, f"add to docs/api.md: {missing}"
