"""Flax modules around the sequence layers (`rj.rnn`, stacks, bidirectional) and regularised
cells: equal to the functional API, dropout on in training and off in evaluation."""

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import nnx

import rnnjax as rj
from rnnjax.flax import RNN, LinenSequenceLayer, SequenceLayer

B, T, D, H = 2, 5, 3, 4


def _xs():
    return jax.random.normal(jax.random.key(0), (B, T, D))


def test_nnx_sequence_layer_equals_the_functional_layer_and_has_train_and_eval_modes():
    layer = rj.rnn("lstm", H, 2, bidirectional=True, dropout=0.5, zoneout_c=0.5)
    module = SequenceLayer(layer, D, rngs=nnx.Rngs(params=1, dropout=2))
    xs, lengths = _xs(), jnp.array([T, 3])
    module.eval()
    carry, ys = module(xs, lengths=lengths)
    want_carry, want = layer.apply(module.functional_params, xs, lengths=lengths)
    chex.assert_trees_all_close((carry, ys), (want_carry, want), rtol=1e-6, atol=1e-6)
    assert ys.shape == (B, T, 2 * H)
    module.train()
    _, a = module(xs, lengths=lengths)
    _, b = module(xs, lengths=lengths)
    assert not jnp.allclose(a, b) and not jnp.allclose(a, ys)  # a fresh key per call
    _, k = module(xs, lengths=lengths, key=jax.random.key(3))
    chex.assert_trees_all_close(
        k,
        layer.apply(module.functional_params, xs, lengths=lengths, key=jax.random.key(3))[1],
        rtol=1e-6,
        atol=1e-6,
    )

    def loss(m):
        return jnp.sum(m(xs, lengths=lengths, deterministic=True)[1] ** 2)

    grads = nnx.grad(loss)(module)
    assert jax.tree.leaves(grads)  # gradients reach the wrapped params


def test_nnx_rnn_runs_a_regularised_cell_with_a_key():
    cell = rj.regularised(rj.gru(H), recurrent_dropout=0.5, zoneout_h=0.3)
    module = RNN(cell, D, rngs=nnx.Rngs(0), backend="fused")
    xs, key = _xs(), jax.random.key(4)
    _, ys = module(xs, key=key)
    want = rj.unroll(rj.with_key(cell, key), module.functional_params, xs, backend="scan")[1]
    chex.assert_trees_all_close(ys, want, rtol=1e-5, atol=1e-6)
    _, ev = module(xs)
    same = rj.unroll(cell, module.functional_params, xs, backend="fused")[1]  # the module's
    chex.assert_trees_all_close(ev, same, rtol=1e-6)


def test_linen_sequence_layer_equals_the_functional_layer_with_dropout_rngs():
    layer = rj.rnn("gru", H, 2, dropout=0.5)
    module = LinenSequenceLayer(layer)
    xs = _xs()
    variables = module.init(jax.random.key(0), xs)
    params = variables["params"]["layer"]
    _, ys = module.apply(variables, xs)
    chex.assert_trees_all_close(ys, layer.apply(params, xs)[1], rtol=1e-6, atol=1e-6)
    _, tr = module.apply(variables, xs, deterministic=False, rngs={"dropout": jax.random.key(5)})
    assert not jnp.allclose(tr, ys)
    assert isinstance(module, nn.Module)
