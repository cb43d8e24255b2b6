"""rnnjax.allocator: with glibc keeping freed memory, XLA's fresh 48 MB buffers stop faulting.

Each case runs in its own interpreter (the settings are process-wide) and counts the minor
page faults (``ru_minflt``) of calls of one jitted function whose 48 MB output is freed
before the next call: glibc maps a block over 32 MB afresh on every call by default, which
faults once per 4 KiB page (12,288 here); a block reused from the heap does not.
"""

import json
import platform
import subprocess
import sys
import textwrap

import pytest

from rnnjax import allocator

PROBE = textwrap.dedent(
    """
    import json, resource, sys
    import jax, jax.numpy as jnp
    import rnnjax
    applied = rnnjax.allocator.keep_freed_memory() if sys.argv[1] == "keep" else None
    f = jax.jit(lambda x: x + 1.0)
    x = jnp.ones((3072, 4096), jnp.float32)  # 48 MB
    for _ in range(3):  # warm-up: compile, and the heap grows to its high-water mark
        jax.block_until_ready(f(x))
    faults = []
    for _ in range(5):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        y = jax.block_until_ready(f(x))
        del y
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    print(json.dumps({"applied": applied, "faults": faults}))
    """
)

glibc_only = pytest.mark.skipif(
    platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
    reason="the settings are glibc's",
)


def _faults_per_call(mode: str) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


@glibc_only
def test_freed_buffers_are_reused_instead_of_faulting_again():
    pages = 48 * 2**20 // 4096
    default = _faults_per_call("default")
    kept = _faults_per_call("keep")
    assert default["applied"] is None and kept["applied"] is True
    # glibc's default: every call's output is a fresh mapping, one fault per page
    assert min(default["faults"]) >= pages // 2, default
    # kept: the pages of the freed output serve the next call (a few hundred faults of slack)
    assert max(kept["faults"]) < pages // 20, kept


@pytest.mark.parametrize("bad", [-1, 2**31, 1.5, True, "1G"])
def test_bad_trim_threshold_is_named(bad):
    with pytest.raises(ValueError, match="trim_threshold"):
        allocator.keep_freed_memory(bad)


def test_other_c_libraries_are_left_alone(monkeypatch):
    monkeypatch.setattr(allocator.platform, "libc_ver", lambda: ("", ""))
    allocator._mallopt.cache_clear()
    try:
        assert allocator.keep_freed_memory() is False
        assert allocator.restore_defaults() is False
    finally:
        allocator._mallopt.cache_clear()
