"""Backends of `rnnjax.unroll`: how the time loop runs, never what it computes.

``backend="scan"`` (`rnnjax.kernels.scan`) is the reference; every other backend equals it,
forward and gradients, on fresh random inputs (tests/test_backends*.py).
"""

from __future__ import annotations

from collections.abc import Callable

from rnnjax.kernels.associative import associative_backend
from rnnjax.kernels.auto import auto_backend
from rnnjax.kernels.fused import fused_backend
from rnnjax.kernels.fused_cpu import fused_cpu_backend
from rnnjax.kernels.pallas import pallas_backend
from rnnjax.kernels.scan import scan_backend

BACKENDS: dict[str, Callable] = {
    "scan": scan_backend,
    "fused": fused_backend,
    "fused_cpu": fused_cpu_backend,  # the time loop as one XLA:CPU call (kernels/fused_cpu.py)
    "associative": associative_backend,
    "auto": auto_backend,  # picks one of the others by platform and shape (kernels/auto.py)
    "pallas": pallas_backend,  # persistent GPU kernel, W on chip (kernels/pallas.py)
}


def get_backend(name: str) -> Callable:
    """Returns the backend function registered under ``name`` (ValueError if unknown)."""
    if not isinstance(name, str) or name not in BACKENDS:
        raise ValueError(f"unknown backend={name!r}; choose one of {tuple(BACKENDS)}")
    return BACKENDS[name]


__all__ = [
    "BACKENDS",
    "associative_backend",
    "auto_backend",
    "fused_backend",
    "fused_cpu_backend",
    "get_backend",
    "scan_backend",
]
