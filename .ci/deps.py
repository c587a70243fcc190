"""Prints fastrader's third-party requirements (and those of the given extras), one a line.

    python .ci/deps.py dev,ray,optuna > requirements.txt

Why: the Makefile installs these first, with pip's normal build isolation, and
only then fastrader itself with --no-build-isolation (it must compile against
the torch already installed). Without the split, --no-build-isolation also
applies to every third-party sdist in the resolve, which then builds against
this venv's tools instead of its own: peewee 3.17.3 (pulled in by
empyrical-reloaded) has no wheel, and compiled by our Cython 3 on Python 3.12
it fails (`playhouse/_sqlite_ext.pyx`); in its own isolated build it uses its
pre-generated C and installs fine.
"""

from __future__ import annotations

import sys
import tomllib
from pathlib import Path


def requirements(extras: list[str], pyproject: Path) -> list[str]:
    project = tomllib.loads(pyproject.read_text())["project"]
    optional = project.get("optional-dependencies", {})
    unknown = [e for e in extras if e not in optional]
    if unknown:
        raise SystemExit(f"error: no such extra in {pyproject.name}: {', '.join(unknown)}")
    reqs = list(project["dependencies"])
    for e in extras:
        reqs += optional[e]
    return list(dict.fromkeys(reqs))  # order kept, duplicates (ninja) once


def main(argv: list[str]) -> int:
    extras = [e for a in argv for e in a.split(",") if e]
    here = Path(__file__).resolve().parent.parent / "pyproject.toml"
    print("\n".join(requirements(extras, here)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
