"""Print pip constraints that pin every dependency of rnnjax to its declared lower bound.

    python .ci/lowest_requirements.py [EXTRA ...] > constraints.txt

Reads ``pyproject.toml``: the runtime dependencies and those of the named extras. Each
``name>=X`` becomes ``name==X``; an exact pin ``name==X`` stays; a requirement with no lower
bound is an error, since nothing would check that the oldest allowed version works. CI installs
these constraints into a separate environment and runs the tests that touch each dependency
(``make test-lowest``).
"""

from __future__ import annotations

import re
import sys
import tomllib
from pathlib import Path

PYPROJECT = Path(__file__).resolve().parent.parent / "pyproject.toml"
REQUIREMENT = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(>=|==)\s*([0-9][0-9A-Za-z.]*)\s*$")


def pinned(requirement: str) -> str:
    """``"jax>=0.10"`` -> ``"jax==0.10"``; ValueError for a requirement with no lower bound."""
    match = REQUIREMENT.match(requirement.split(";")[0])
    if match is None:
        raise ValueError(f"no lower bound (name>=X or name==X) in requirement {requirement!r}")
    name, _, version = match.groups()
    return f"{name}=={version}"


def lowest_constraints(extras: list[str], pyproject: Path = PYPROJECT) -> list[str]:
    """The pins for the runtime dependencies plus those of ``extras``, in pyproject order."""
    project = tomllib.loads(pyproject.read_text())["project"]
    optional = project.get("optional-dependencies", {})
    unknown = [extra for extra in extras if extra not in optional]
    if unknown:
        raise ValueError(f"unknown extras {unknown}; pyproject.toml has {sorted(optional)}")
    requirements = list(project["dependencies"])
    for extra in extras:
        requirements += optional[extra]
    return list(dict.fromkeys(pinned(requirement) for requirement in requirements))


if __name__ == "__main__":
    try:
        print("\n".join(lowest_constraints(sys.argv[1:])))
    except ValueError as error:
        sys.exit(f"lowest_requirements: {error}")
