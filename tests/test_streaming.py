"""Streaming: chunk by chunk with the state carried equals one unroll over the concatenation,
with one compiled program for every chunk (the last, shorter one padded)."""

import chex
import jax
import jax.numpy as jnp
import pytest

import rnnjax as rj
from rnnjax.streaming import run_in_chunks, streamer

B, T, D, H = 2, 8, 3, 4


def test_a_cell_streamed_in_chunks_equals_one_unroll():
    cell = rj.gru(H)
    params = cell.init(jax.random.key(0), D)
    xs = jax.random.normal(jax.random.key(1), (B, T, D))
    carry0 = rj.RNNCarry(jax.random.normal(jax.random.key(2), (B, H)))
    want = rj.unroll(cell, params, xs, carry0)
    got = run_in_chunks(cell, params, xs, 3, carry0, backend="fused")  # chunks 3, 3, 2
    chex.assert_trees_all_close(got, want, rtol=1e-5, atol=1e-6)
    # one unbatched stream, time-major layout
    want = rj.unroll(cell, params, xs[0])
    chex.assert_trees_all_close(run_in_chunks(cell, params, xs[0], 5), want, rtol=1e-5, atol=1e-6)


def test_a_deep_layer_streams_with_one_compiled_program():
    layer = rj.rnn("lstm", H, num_layers=2)
    params = layer.init(jax.random.key(0), D)
    xs = jax.random.normal(jax.random.key(1), (B, T, D))
    want = layer.apply(params, xs)
    traces = []

    def counted(*args, **kwargs):  # runs once per trace of the jitted chunk program
        traces.append(1)
        return layer.apply(*args, **kwargs)

    push = streamer(layer._replace(apply=counted), params, chunk_size=3)
    carry, outs = None, []
    for start in range(0, T, 3):  # chunks of 3, 3 and 2 steps
        carry, ys = push(carry, xs[:, start : start + 3])
        outs.append(ys)
    assert len(traces) == 1
    chex.assert_trees_all_close((carry, jnp.concatenate(outs, 1)), want, rtol=1e-5, atol=1e-6)


def test_bidirectional_models_and_bad_chunks_are_refused():
    layer = rj.rnn("gru", H, bidirectional=True)
    params = layer.init(jax.random.key(0), D)
    with pytest.raises(ValueError, match="bidirectional"):
        streamer(layer, params, chunk_size=4)
    with pytest.raises(ValueError, match="bidirectional"):
        streamer(rj.stacked([rj.gru(H), rj.bidirectional(rj.gru(H))]), params, chunk_size=4)
    push = streamer(rj.gru(H), rj.gru(H).init(jax.random.key(0), D), chunk_size=2)
    with pytest.raises(ValueError, match=r"1\.\.2 steps"):
        push(None, jnp.zeros((B, 3, D)))
    with pytest.raises(ValueError, match="lengths"):
        streamer(rj.gru(H), params, chunk_size=2, lengths=jnp.ones(B, int))
