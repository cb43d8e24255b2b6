"""Keeping freed memory for reuse: glibc's malloc settings that spare XLA:CPU's fresh pages.

XLA:CPU allocates the temporaries of every call of a compiled function anew, as one block
for the whole computation (tens of MB for a training step), and frees it at the end. glibc
serves a block that large with ``mmap`` and hands it back to the kernel with ``munmap`` on
``free``, so the next call gets fresh pages, and the kernel zero-fills each 4 KiB page on
its first touch — about 14,000 page faults per LSTM training step at (B, T, D, H) =
(32, 100, 128, 256), a third of the step's time (PyTorch's steps fault too: its large
tensors take the same path).

`keep_freed_memory` tells glibc to serve every block from its heap (``M_MMAP_MAX = 0``), to
keep up to ``trim_threshold`` bytes of freed heap instead of returning it
(``M_TRIM_THRESHOLD``), so that a step reuses the pages the previous one freed, and to keep
one arena for all threads (``M_ARENA_MAX = 1``): a worker thread's own arena is made of heaps
of at most 64 MiB, a block that does not fit goes to a new heap or to mmap, and a heap that
empties is unmapped whatever the trim threshold, so big blocks would still fault. Threads
that already hold an arena keep it, so the call takes full effect before XLA starts its
threads (before the first JAX computation), as the ``rnnjax`` command makes it.

The settings belong to the process, not to rnnjax: every library in it (NumPy, PyTorch) gets
them, and the process's resident memory stays at its high-water mark instead of shrinking
when big arrays are freed. The ``rnnjax`` command applies them to its own process; a program
that imports rnnjax opts in with one call, first thing::

    import rnnjax
    rnnjax.allocator.keep_freed_memory()

``python benchmarks/allocator_probe.py`` measures the effect on both libraries' steps.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import platform
from functools import cache

# mallopt parameters, from glibc's <malloc.h>
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
M_ARENA_MAX = -8
GLIBC_MMAP_MAX_DEFAULT = 65536  # glibc's defaults, restored by ``restore_defaults``
GLIBC_TRIM_THRESHOLD_DEFAULT = 128 * 1024


@cache
def _mallopt():
    """glibc's ``mallopt``, or None where the C library is not glibc (macOS, musl, Windows)."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    mallopt = libc.mallopt
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return mallopt


def keep_freed_memory(trim_threshold: int = 1 << 30) -> bool:
    """Makes glibc keep freed blocks for reuse instead of returning them to the kernel.

    Args:
        trim_threshold: bytes of free memory at the top of the heap that glibc keeps before
            it returns any (default 1 GiB); in [0, 2**31 - 1].

    Returns:
        True if the settings were applied; False where the C library is not glibc (nothing
        changes there).

    Raises:
        ValueError: a trim_threshold that is not an int in [0, 2**31 - 1].
    """
    if isinstance(trim_threshold, bool) or not isinstance(trim_threshold, int):
        raise ValueError(f"trim_threshold must be an int, got {trim_threshold=!r}")
    if not 0 <= trim_threshold < 2**31:
        raise ValueError(f"trim_threshold must be in [0, 2**31 - 1] bytes, got {trim_threshold=}")
    return _set(((M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, trim_threshold), (M_ARENA_MAX, 1)))


def restore_defaults() -> bool:
    """Puts back glibc's defaults (blocks over the mmap threshold mapped and unmapped).

    glibc's own adaptive threshold stays off once a setting was made, and so does the one
    arena (mallopt cannot set it back); returns False where the C library is not glibc.
    """
    return _set(
        ((M_MMAP_MAX, GLIBC_MMAP_MAX_DEFAULT), (M_TRIM_THRESHOLD, GLIBC_TRIM_THRESHOLD_DEFAULT))
    )


def _set(settings: tuple[tuple[int, int], ...]) -> bool:
    """Applies each (mallopt parameter, value), every one even if one fails; False where the
    C library is not glibc or glibc refused a setting."""
    mallopt = _mallopt()
    if mallopt is None:
        return False
    return all([bool(mallopt(param, value)) for param, value in settings])
