"""Export: a model's forward serialised with `jax.export` and run back, without Python code.

    exported = rj.export.export_forward(layer, params, xs, backend="fused", lengths=True)
    blob = exported.serialize()                        # bytes: StableHLO + calling convention
    restored = jax.export.deserialize(blob)            # elsewhere, without the model's code
    carry_leaves, ys = restored.call(jax.tree.leaves(params), xs, lengths)

The exported function takes the params as a flat list of arrays (``jax.tree.leaves(params)``,
so the NamedTuples need no registration to deserialise) and returns the final carry as a flat
list of arrays and the outputs. Shapes and dtypes are fixed at export (those of the example
inputs).

Which backends export: the ones written in plain JAX — ``"scan"``, ``"fused"`` (its
custom_vjp lowers to ordinary loops) and ``"associative"`` — give portable StableHLO, for any
platform listed in ``platforms``. ``"fused_cpu"`` (an XLA:CPU FFI custom call whose C++ lives
in this package), ``"pallas"`` / ``"pallas_verified"`` (Triton custom calls for one GPU
family) and ``"pallas_tpu"`` (a Mosaic TPU custom call) are bound to the machine and library
that lowered them, and ``"auto"`` may pick them: `export_forward` refuses them with the
reason, or replaces them by a portable backend when asked (``fallback="fused"``); the outputs
are the same, as every backend equals ``"scan"``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp

from rnnjax.streaming import apply_model

PORTABLE = ("scan", "fused", "associative")


def portable_backend(backend: str, fallback: str | None = None) -> str:
    """``backend`` if it exports portably, else ``fallback`` (ValueError if there is none)."""
    if backend in PORTABLE:
        return backend
    if fallback is None:
        raise ValueError(
            f"backend={backend!r} does not export portably (custom calls bound to one "
            f"platform, or 'auto', which may choose them); use one of {PORTABLE} or pass "
            f"fallback='fused'"
        )
    if fallback not in PORTABLE:
        raise ValueError(f"fallback must be one of {PORTABLE}, got {fallback=}")
    return fallback


def export_forward(
    model: Any,
    params: Any,
    xs: Any,
    *,
    backend: str = "fused",
    fallback: str | None = None,
    lengths: bool = False,
    platforms: Sequence[str] | None = None,
    **options,
) -> jax.export.Exported:
    """Exports ``(param leaves, xs[, lengths]) -> (final carry leaves, ys)``.

    Args:
        model: a cell or a sequence layer (`rnnjax.rnn`, `rnnjax.stacked`, ...).
        params: its params (their shapes and dtypes are fixed in the export; their values are
            arguments, not constants).
        xs: example inputs, or a ``jax.ShapeDtypeStruct`` (B, T, D).
        backend: a portable backend (see the module docstring).
        fallback: the portable backend to use instead of a platform-bound ``backend``.
        lengths: whether the exported function takes int32 lengths (B,) after xs.
        platforms: e.g. ``("cpu", "cuda")``; None: the default backend's platform.
        **options: for `rnnjax.unroll` / ``apply`` (``time_major``, ``reverse``, ...).

    Returns:
        A `jax.export.Exported`; ``.serialize()`` gives bytes, ``jax.export.deserialize``
        and ``.call`` run them back.
    """
    backend = portable_backend(backend, fallback)
    leaves, treedef = jax.tree.flatten(params)

    def forward(param_leaves, x, *maybe_lengths):
        p = jax.tree.unflatten(treedef, param_leaves)
        extra = {"lengths": maybe_lengths[0]} if maybe_lengths else {}
        final, ys = apply_model(model, p, x, None, backend=backend, **extra, **options)
        return jax.tree.leaves(final), ys

    spec = jax.ShapeDtypeStruct(jnp.shape(xs), getattr(xs, "dtype", jnp.float32))
    args: list[Any] = [[jax.ShapeDtypeStruct(a.shape, a.dtype) for a in leaves], spec]
    if lengths:
        batch = spec.shape[1:2] if options.get("time_major") else spec.shape[:1]
        args.append(jax.ShapeDtypeStruct(batch, jnp.int32))
    exporter = jax.export.export(
        jax.jit(forward), platforms=None if platforms is None else tuple(platforms)
    )
    return exporter(*args)


__all__ = ["PORTABLE", "export_forward", "portable_backend"]
