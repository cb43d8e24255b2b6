"""rnnjax.allocator: with glibc keeping freed memory, a freed 48 MB block is reused, not remapped.

Each case runs in its own interpreter (the settings are process-wide) and counts the minor
page faults (``ru_minflt``) of allocating, filling and freeing a 48 MB NumPy array, again
and again on one thread: glibc maps a block over 32 MB afresh every time by default, which
faults on every page again; a block reused from the heap does not. (What this
does to XLA's steps, whose buffers are freed by other threads at their own pace, is measured
by ``benchmarks/allocator_probe.py``, not here.)
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
    import numpy as np
    import rnnjax.allocator
    applied = rnnjax.allocator.keep_freed_memory() if sys.argv[1] == "keep" else None
    faults = []
    for _ in range(6):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        block = np.empty(12 * 2**20, np.float32)  # 48 MB
        block.fill(1.0)  # touch every page
        del block
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
    default = _faults_per_call("default")
    kept = _faults_per_call("keep")
    assert default["applied"] is None and kept["applied"] is True
    # glibc's default: every block is a fresh mapping that faults again (page by page, or
    # in fewer, larger pieces where the kernel maps ahead or backs it with 2 MiB pages: at
    # least 24 of those for 48 MB)
    fresh = min(default["faults"])
    assert fresh >= 24, default
    # kept: the first block grows the heap, the later ones reuse its pages
    assert kept["faults"][0] >= 24, kept
    assert max(kept["faults"][1:]) <= fresh // 10, (kept, default)


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
