"""The pins of `make test-lowest` (.ci/lowest_requirements.py): every dependency declared with a
lower bound, each bound turned into an exact pin."""

import importlib.util
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / ".ci" / "lowest_requirements.py"
spec = importlib.util.spec_from_file_location("lowest_requirements", SCRIPT)
assert spec is not None and spec.loader is not None
lowest = importlib.util.module_from_spec(spec)
spec.loader.exec_module(lowest)


@pytest.mark.parametrize(
    ("requirement", "pin"),
    [
        ("jax>=0.10", "jax==0.10"),
        ("orbax-checkpoint >= 0.11.17", "orbax-checkpoint==0.11.17"),
        ("torch==2.13.0", "torch==2.13.0"),
        ('numpy>=2.0; python_version >= "3.11"', "numpy==2.0"),
    ],
)
def test_a_lower_bound_becomes_an_exact_pin(requirement, pin):
    assert lowest.pinned(requirement) == pin


@pytest.mark.parametrize("requirement", ["jax", "jax<0.11", "jax>0.9", "jax~=0.10"])
def test_a_requirement_without_a_lower_bound_is_refused_by_name(requirement):
    with pytest.raises(ValueError, match="no lower bound") as error:
        lowest.pinned(requirement)
    assert repr(requirement) in str(error.value)


def test_every_declared_dependency_has_a_lower_bound():
    pins = lowest.lowest_constraints(["apps", "dev"])
    names = [pin.split("==")[0] for pin in pins]
    for needed in ("jax", "jaxlib", "numpy", "optax", "flax", "orbax-checkpoint", "chex"):
        assert needed in names
    assert len(names) == len(set(names))


def test_an_unknown_extra_is_named():
    with pytest.raises(ValueError, match="'gpu'"):
        lowest.lowest_constraints(["gpu"])
