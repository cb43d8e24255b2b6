"""Backends of `rnnjax.unroll`: how the time loop runs, never what it computes.

``backend="scan"`` (`rnnjax.kernels.scan`) is the reference; every other backend equals it,
forward and gradients, on fresh random inputs (tests/test_backends*.py).
"""

from __future__ import annotations

from collections.abc import Callable

from rnnjax.kernels.scan import scan_backend

BACKENDS: dict[str, Callable] = {"scan": scan_backend}


def get_backend(name: str) -> Callable:
    """Returns the backend function registered under ``name`` (ValueError if unknown)."""
    if not isinstance(name, str) or name not in BACKENDS:
        raise ValueError(f"unknown backend={name!r}; choose one of {tuple(BACKENDS)}")
    return BACKENDS[name]


__all__ = ["BACKENDS", "get_backend", "scan_backend"]
