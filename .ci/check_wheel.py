"""Fail when the wheel misses a file of the package, or holds one it should not.

Expected: every ``.py`` file under ``src/focalloss`` (so a new module in a folder that is not a
package, or one the sdist left out, is caught), ``focalloss/py.typed``, and in the
``.dist-info`` folder the license and the usual metadata. Usage: ``python .ci/check_wheel.py
DIST_DIR`` from the repository root.
"""

from __future__ import annotations

import sys
import zipfile
from pathlib import Path


def main(dist: str) -> int:
    wheels = sorted(Path(dist).glob("focalloss-*.whl"))
    if len(wheels) != 1:
        print(f"check_wheel: expected one focalloss wheel in {dist}, found {wheels}")
        return 1
    wheel = wheels[0]
    version = wheel.name.split("-")[1]
    names = {n for n in zipfile.ZipFile(wheel).namelist() if not n.endswith("/")}

    src = Path("src")
    package = {p.relative_to(src).as_posix() for p in (src / "focalloss").rglob("*.py")}
    package.add("focalloss/py.typed")
    info = f"focalloss-{version}.dist-info"
    metadata = {
        f"{info}/{name}"
        for name in ("METADATA", "WHEEL", "RECORD", "entry_points.txt", "licenses/LICENSE")
    }
    optional = {f"{info}/top_level.txt"}  # written by some setuptools versions

    missing = sorted((package | metadata) - names)
    unexpected = sorted(names - package - metadata - optional)
    for name in missing:
        print(f"check_wheel: missing from {wheel.name}: {name}")
    for name in unexpected:
        print(f"check_wheel: not expected in {wheel.name}: {name}")
    if missing or unexpected:
        return 1
    print(f"check_wheel: {wheel.name} holds the {len(package)} package files and the license")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
