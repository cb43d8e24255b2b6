"""The mutation list of ``benchmarks/mutation_check.py`` stays in step with the source: every
snippet occurs exactly once in its file and every selected test exists (no mutation is run
here; the script runs them)."""

import dataclasses
import importlib.util
import re
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location(
    "mutation_check", REPO / "benchmarks" / "mutation_check.py"
)
assert _spec is not None and _spec.loader is not None
mutation_check = importlib.util.module_from_spec(_spec)
sys.modules["mutation_check"] = mutation_check  # dataclasses look their module up there
_spec.loader.exec_module(mutation_check)
MUTATIONS = mutation_check.MUTATIONS


@pytest.mark.parametrize("mutation", MUTATIONS, ids=lambda m: m.name)
def test_every_snippet_occurs_exactly_once_and_changes_something(mutation):
    assert mutation.original != mutation.mutated
    assert mutation_check.occurrences(mutation, REPO) == 1, mutation.path


def test_every_selected_test_exists():
    for mutation in MUTATIONS:
        assert mutation.tests, mutation.name
        for node in mutation.tests:
            path, _, name = node.partition("::")
            source = (REPO / path).read_text()
            function = re.sub(r"\[.*\]$", "", name).split("::")[-1]
            assert not function or f"def {function}(" in source, node


def test_names_are_unique_and_every_backend_with_a_backward_is_covered():
    names = [m.name for m in MUTATIONS]
    assert len(names) == len(set(names))
    prefixes = {n.split(".")[0] for n in names}
    backends = {"fused", "fused_cpu", "pallas", "pallas_verified", "pallas_tpu", "associative"}
    assert backends <= prefixes


def test_apply_refuses_a_missing_or_repeated_snippet(tmp_path):
    (tmp_path / "f.py").write_text("a = b + c\na = b + c\nd = e + f\n")
    base = mutation_check.Mutation("t.x", "f.py", "d = e + f", "d = e - f", "", ("t",))
    mutation_check.apply(base, tmp_path)
    assert (tmp_path / "f.py").read_text().endswith("d = e - f\n")
    for original in ("a = b + c", "absent"):
        with pytest.raises(ValueError, match="occurs"):
            mutation_check.apply(dataclasses.replace(base, original=original), tmp_path)
