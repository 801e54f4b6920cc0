"""Release metadata: one source of the version, py.typed shipped, the CLI's --version, and the
clear error of `focalloss demo` / `focalloss plot` when the `demo` extra is missing."""

from __future__ import annotations

import importlib.metadata
import re
import sys
from pathlib import Path

import pytest

import focalloss
from focalloss import cli

# tomllib is in the standard library from Python 3.11; tomli is its backport.
tomllib = pytest.importorskip("tomllib" if sys.version_info >= (3, 11) else "tomli")
ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
PACKAGE = Path(focalloss.__file__).resolve().parent

# PEP 440 public version (release, optional pre/post/dev segments).
PEP440 = re.compile(r"^\d+(\.\d+)*((a|b|rc)\d+)?(\.post\d+)?(\.dev\d+)?$")


def test_version_has_one_source():
    project = PYPROJECT["project"]
    assert "version" not in project, "the version belongs in focalloss.__version__ only"
    assert "version" in project["dynamic"]
    dynamic = PYPROJECT["tool"]["setuptools"]["dynamic"]["version"]
    assert dynamic == {"attr": "focalloss.__version__"}
    assert PEP440.match(focalloss.__version__), focalloss.__version__


def test_version_is_a_literal_setuptools_reads_without_importing():
    """setuptools reads `attr` statically (no torch in the build environment) only when the
    assignment is a plain string literal."""
    source = (PACKAGE / "__init__.py").read_text(encoding="utf-8")
    found = re.findall(r'^__version__ = "([^"]+)"$', source, re.M)
    assert found == [focalloss.__version__]


def test_installed_metadata_matches():
    try:
        installed = importlib.metadata.version("focalloss")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("focalloss is not installed (running from the source tree)")
    assert installed == focalloss.__version__, "reinstall: the metadata predates the version"


def test_changelog_has_the_version():
    changelog = (ROOT / "CHANGELOG.md").read_text(encoding="utf-8")
    assert "## [Unreleased]" in changelog
    assert re.search(
        rf"^## \[{re.escape(focalloss.__version__)}\] - \d{{4}}-\d{{2}}-\d{{2}}$", changelog, re.M
    ), "CHANGELOG.md needs a section for the current version"


def test_cli_version(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip() == f"focalloss {focalloss.__version__}"


def test_py_typed_is_shipped():
    assert (PACKAGE / "py.typed").is_file()
    assert "py.typed" in PYPROJECT["tool"]["setuptools"]["package-data"]["focalloss"]


def test_license_metadata():
    project = PYPROJECT["project"]
    assert project["license"] == "MIT"
    assert project["license-files"] == ["LICENSE"]
    assert "MIT License" in (ROOT / "LICENSE").read_text(encoding="utf-8")
    # An SPDX `license` excludes the deprecated License :: classifiers.
    assert not any(c.startswith("License ::") for c in project["classifiers"])


# Distributions whose import name differs from the distribution name.
IMPORT_NAMES = {"scikit-learn": "sklearn", "pillow": "PIL", "opencv-python": "cv2"}


def test_demo_extra_and_the_command_check_agree():
    """`focalloss demo` checks for exactly what the `demo` extra installs: a dependency added to
    the extra must be added to cli.EXTRA_MODULES["demo"] too (and every module checked for must
    come with the extra)."""
    names = {
        re.split(r"[<>=!~;\[ ]", req, maxsplit=1)[0].strip().lower()
        for req in PYPROJECT["project"]["optional-dependencies"]["demo"]
    }
    extra = {IMPORT_NAMES.get(name, name.replace("-", "_")) for name in names}
    assert set(cli.EXTRA_MODULES["demo"]) == extra
    for modules in cli.EXTRA_MODULES.values():
        assert set(modules) <= extra


@pytest.mark.parametrize(
    ("argv", "blocked"),
    [
        (["plot"], "matplotlib"),
        (["demo", "--quick"], "matplotlib"),
        (["demo", "--quick"], "tqdm"),
    ],
)
def test_missing_extra_message(argv, blocked, tmp_path, monkeypatch, capsys):
    # None in sys.modules makes `import blocked` raise ImportError, as if it were not installed.
    for name in list(sys.modules):
        if name == blocked or name.startswith(blocked + "."):
            monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, blocked, None)
    out = tmp_path / "out"
    assert cli.main([*argv, "--out", str(out)]) == 1
    message = capsys.readouterr().err
    assert f"focalloss {argv[0]} needs {blocked}" in message
    assert 'pip install "focalloss[demo]"' in message
    assert not out.exists(), "nothing runs without the extra"


def test_require_extra_raises_an_import_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "tqdm", None)
    with pytest.raises(ImportError, match=r"focalloss demo needs tqdm.*focalloss\[demo\]"):
        cli.require_extra("demo")
    cli.require_extra("plot")  # matplotlib is installed with the test extra
    cli.require_extra("bench")  # needs nothing beyond torch
