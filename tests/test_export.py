"""jax.export round trip of a model's forward for the portable backends; the platform-bound
ones are refused with the reason or replaced on request."""

import chex
import jax
import jax.numpy as jnp
import pytest

import rnnjax as rj
from rnnjax.export import export_forward

B, T, D, H = 2, 6, 3, 4


def test_a_deep_bidirectional_layer_round_trips_through_serialisation():
    layer = rj.rnn("gru", H, num_layers=2, bidirectional=True)
    params = layer.init(jax.random.key(0), D)
    xs = jax.random.normal(jax.random.key(1), (B, T, D))
    lengths = jnp.array([T, 3], jnp.int32)
    exported = export_forward(layer, params, xs, backend="fused", lengths=True)
    restored = jax.export.deserialize(exported.serialize())
    carry_leaves, ys = restored.call(jax.tree.leaves(params), xs, lengths)
    want_carry, want_ys = layer.apply(params, xs, lengths=lengths, backend="scan")
    chex.assert_trees_all_close(ys, want_ys, rtol=1e-5, atol=1e-6)
    chex.assert_trees_all_close(carry_leaves, jax.tree.leaves(want_carry), rtol=1e-5, atol=1e-6)
    # new parameter values run through the same exported program
    params2 = jax.tree.map(lambda a: a * 0.5, params)
    _, ys2 = restored.call(jax.tree.leaves(params2), xs, lengths)
    chex.assert_trees_all_close(
        ys2, layer.apply(params2, xs, lengths=lengths)[1], rtol=1e-5, atol=1e-6
    )


def test_platform_bound_backends_are_refused_or_replaced():
    cell = rj.lstm(H)
    params = cell.init(jax.random.key(0), D)
    xs = jax.random.normal(jax.random.key(1), (1, T, D))
    for backend in ("fused_cpu", "pallas", "auto"):
        with pytest.raises(ValueError, match="does not export portably"):
            export_forward(cell, params, xs, backend=backend)
    exported = export_forward(cell, params, xs, backend="auto", fallback="scan")
    _, ys = jax.export.deserialize(exported.serialize()).call(jax.tree.leaves(params), xs)
    chex.assert_trees_all_close(ys, rj.unroll(cell, params, xs)[1], rtol=1e-5, atol=1e-6)
    multi = export_forward(cell, params, xs, platforms=("cpu", "cuda"))
    assert multi.platforms == ("cpu", "cuda")
