"""Native XLA:CPU custom calls (`jax.ffi`): one C++ source, compiled once, its targets registered.

A `NativeLibrary` is compiled with the system's ``g++`` by `NativeLibrary.build` — explicitly,
never inside a trace — into ``$RNNJAX_CACHE`` (default ``~/.cache/rnnjax``), keyed by the
source's hash and the CPU's flags (``-march=native``: one build per CPU kind); ``make`` builds
every library when it installs the package (``python -m rnnjax.kernels.build``). Until a library
is built, the code paths that call it answer "not built" and use their XLA reference instead.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import subprocess
from pathlib import Path

import jax


def _cpu_flags() -> bytes:
    """The CPU's feature flags (Linux), so that a shared cache never serves a foreign build."""
    try:
        with open("/proc/cpuinfo", "rb") as f:
            return next((line for line in f if line.startswith(b"flags")), b"")
    except OSError:
        return platform.machine().encode()


class NativeLibrary:
    """A C++ source of `jax.ffi` handlers and the target names it exports."""

    def __init__(self, source: Path, targets: tuple[str, ...]):
        self.source = source
        self.targets = targets

    def path(self) -> Path:
        """Where the compiled library lives for this source and this CPU."""
        key = self.source.read_bytes() + _cpu_flags()
        cache = Path(os.environ.get("RNNJAX_CACHE", Path.home() / ".cache" / "rnnjax"))
        return cache / f"{self.source.stem}_{hashlib.sha256(key).hexdigest()[:16]}.so"

    def built(self) -> bool:
        return self.path().exists()

    def build(self) -> Path:
        """Compiles the library with ``g++`` if it is not built yet; returns its path.

        Call it before tracing (``make`` does, at install). Raises RuntimeError with the
        compiler's message where the build fails.
        """
        lib = self.path()
        if lib.exists():
            return lib
        lib.parent.mkdir(parents=True, exist_ok=True)
        tmp = lib.with_suffix(f".{os.getpid()}.tmp")
        cmd = ["g++", "-O3", "-march=native", "-std=c++20", "-shared", "-fPIC", "-pthread"]
        cmd += ["-I", jax.ffi.include_dir(), str(self.source), "-o", str(tmp)]
        try:
            subprocess.run(cmd, check=True, capture_output=True, timeout=600)
        except (OSError, subprocess.SubprocessError) as e:
            detail = getattr(e, "stderr", b"") or b""
            raise RuntimeError(f"building {self.source.name} failed: {e} {detail[-400:]!r}") from e
        tmp.replace(lib)  # atomic: concurrent builders never see a partial file
        return lib

    @functools.cache  # noqa: B019  (one registration per library for the process's life)
    def register(self) -> None:
        """Loads the built library and registers its FFI targets (once; no compilation)."""
        dll = ctypes.cdll.LoadLibrary(str(self.path()))
        for name in self.targets:
            jax.ffi.register_ffi_target(name, jax.ffi.pycapsule(getattr(dll, name)), "cpu")
