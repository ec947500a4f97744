"""Check that an environment holds every direct dependency at exactly the floor pyproject.toml declares.

``make test-oldest`` runs it with the oldest environment's Python after installing it with uv's
``--resolution lowest-direct``. A floor that no release matches (``>=2.3`` when the first release is 2.3.1), or
one that another requirement pushes up (schemathesis needing a newer pytest), would otherwise leave a declared
floor that no test ever ran; this names each such requirement and the version that actually ran.

Usage: ``python tools/check_floors.py [pyproject.toml]``; exit status 1 when a floor was not the version installed.
"""

from __future__ import annotations

import re
import sys
import tomllib
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

# "name[extras]>=1.2" (an optional marker or comment after ';' is ignored); only '>=' floors are checked.
_REQUIREMENT = re.compile(r"^\s*(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*)(?:\[[^\]]*\])?\s*>=\s*(?P<floor>[^,;\s]+)")


def _release(text: str) -> tuple[int, ...]:
    """'2.3' -> (2, 3, 0): compare release numbers, padding the shorter one with zeros."""
    parts = [int(p) for p in re.findall(r"\d+", text.split("+")[0])[:4]]
    return tuple(parts + [0] * (4 - len(parts)))


def direct_floors(pyproject: dict[str, object]) -> dict[str, str]:
    """Every ``name>=floor`` among the project's dependencies, its extras and its ``dev`` group.

    The ``bench`` group (peers measured in benchmarks/) is not installed by ``make test-oldest`` and not checked.
    """
    project = pyproject["project"]
    assert isinstance(project, dict)
    requirements: list[str] = list(project.get("dependencies", []))
    for extra in project.get("optional-dependencies", {}).values():
        requirements.extend(extra)
    groups = pyproject.get("dependency-groups", {})
    assert isinstance(groups, dict)
    requirements.extend(r for r in groups.get("dev", []) if isinstance(r, str))
    floors: dict[str, str] = {}
    for requirement in requirements:
        match = _REQUIREMENT.match(requirement)
        if match and match["name"] != project["name"]:
            floors[match["name"].lower()] = match["floor"]
    return floors


def main(argv: list[str]) -> int:
    path = Path(argv[1] if len(argv) > 1 else "pyproject.toml")
    floors = direct_floors(tomllib.loads(path.read_text(encoding="utf-8")))
    problems = []
    for name, floor in sorted(floors.items()):
        try:
            installed = version(name)
        except PackageNotFoundError:
            problems.append(f"{name}: declared >={floor}, not installed")
            continue
        if _release(installed) != _release(floor):
            problems.append(f"{name}: declared >={floor}, but {installed} is what this environment ran")
    for line in problems:
        print(f"floor not tested: {line}", file=sys.stderr)
    if problems:
        print(f"{len(problems)} of {len(floors)} floors differ: raise each to the version that ran", file=sys.stderr)
        return 1
    print(f"all {len(floors)} floors in {path} are the versions installed here")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
