"""rnnjax.flax: nnx and linen modules equal the functional API, and train like any module."""

import chex
import jax
import jax.numpy as jnp
import optax
import pytest
from flax import nnx

import rnnjax as rj
from rnnjax.flax import RNN, LinenRNN

B, T, D, H = 2, 5, 3, 4


@pytest.mark.parametrize("make_cell", [lambda: rj.lstm(H, peephole=True), lambda: rj.gru(H)])
def test_nnx_module_equals_functional_api(make_cell, rng):
    k_x, k_m = jax.random.split(rng)
    cell = make_cell()
    module = RNN(cell, D, rngs=nnx.Rngs(int(jax.random.randint(k_m, (), 0, 1000))))
    params = module.functional_params
    xs = jax.random.normal(k_x, (B, T, D))
    lengths = jnp.array([T, 2])
    got = nnx.jit(lambda m, x: m(x, lengths=lengths, reverse=True))(module, xs)
    want = rj.unroll(cell, params, xs, lengths=lengths, reverse=True)
    chex.assert_trees_all_close(got, want, rtol=1e-6)
    # gradients with respect to the module's Params equal the functional gradients
    g_mod = nnx.grad(lambda m: jnp.sum(m(xs)[1] ** 2))(module)
    g_fun = jax.grad(lambda p: jnp.sum(rj.unroll(cell, p, xs)[1] ** 2))(params)
    for field, want_grad in g_fun._asdict().items():
        if want_grad is not None:
            chex.assert_trees_all_close(g_mod["params"][field][...], want_grad, rtol=1e-6)
    carry = module.initial_carry((B,))
    carry, y = module.step(carry, xs[:, 0])
    chex.assert_trees_all_close(y, rj.unroll(cell, params, xs)[1][:, 0], rtol=1e-6)


def test_nnx_model_with_an_rnnjax_lstm_trains(rng):
    class Regressor(nnx.Module):
        def __init__(self, rngs):
            self.rnn = RNN(rj.lstm(8), input_size=1, rngs=rngs)
            self.out = nnx.Linear(8, 1, rngs=rngs)

        def __call__(self, xs):
            _, hs = self.rnn(xs)
            return self.out(hs[:, -1])[:, 0]

    model = Regressor(nnx.Rngs(0))
    optimizer = nnx.Optimizer(model, optax.adam(3e-2), wrt=nnx.Param)
    xs = jax.random.uniform(rng, (32, 6, 1))
    target = xs.sum(axis=(1, 2))  # the sum of the sequence

    @nnx.jit
    def train_step(model, optimizer):
        loss, grads = nnx.value_and_grad(lambda m: jnp.mean((m(xs) - target) ** 2))(model)
        optimizer.update(model, grads)
        return loss

    first = train_step(model, optimizer)
    for _ in range(60):
        last = train_step(model, optimizer)
    assert last < 0.2 * first


def test_linen_module_equals_functional_api(rng):
    cell = rj.gru(H)
    module = LinenRNN(cell)
    xs = jax.random.normal(rng, (B, T, D))
    variables = module.init(rng, xs)
    params = variables["params"]["cell"]
    chex.assert_trees_all_close(
        module.apply(variables, xs, lengths=jnp.array([1, T])),
        rj.unroll(cell, params, xs, lengths=jnp.array([1, T])),
        rtol=1e-6,
    )
