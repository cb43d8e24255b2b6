"""Backends of `rnnjax.unroll`: how the time loop runs, never what it computes.

``backend="scan"`` (`rnnjax.kernels.scan`) is the reference; every other backend equals it,
forward and gradients, on fresh random inputs (tests/test_backends*.py). The backend
signature and the support predicates are in `rnnjax.kernels.base`; the one table of backends
is `rnnjax.kernels.registry.BACKENDS`.

===================== ==========================================================================
``scan``              `lax.scan` over ``cell.recur``: any cell; the readable reference
``fused``             one custom_vjp over the loop, derived from the cell's structured form
``fused_cpu``         the plain LSTM / GRU loop as one C++ XLA:CPU call (CPU; threaded)
``associative``       parallel prefix scan for cells linear in the carry
``pallas``            persistent Pallas kernel (GPU; interpret mode on CPU), derived from the cell
``pallas_verified``   the same kernels with the GPU-verified per-family element-wise code
``pallas_tpu``        the persistent kernel on Mosaic TPU (TPU; TPU interpret mode on CPU)
``pallas_mosaic_gpu`` a persistent Mosaic GPU kernel for small batches, one CTA per sequence
``auto``              the fastest of these whose support predicate accepts the cell
===================== ==========================================================================
"""

from __future__ import annotations

from rnnjax.kernels.base import Backend, Problem, Support
from rnnjax.kernels.registry import BACKENDS, choose_backend, get_backend

__all__ = ["BACKENDS", "Backend", "Problem", "Support", "choose_backend", "get_backend"]
