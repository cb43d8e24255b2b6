"""A cell that rnnjax does not have, written here in the structured form, gets every fast
backend with no kernel code: outputs, final carry and all gradients equal ``scan``."""

from typing import NamedTuple

import chex
import jax
import jax.numpy as jnp
import pytest

import rnnjax as rj
from rnnjax.cells.base import LSTMCarry, expand


class SoftsignLSTMParams(NamedTuple):
    U: jax.Array  # (D, 4H), gates (i, f, g, o)
    W: jax.Array  # (H, 4H)
    b: jax.Array  # (4H,)
    scale: jax.Array  # (H,): a learned per-unit output scale


def softsign_lstm(H: int) -> rj.Cell:
    """An LSTM whose output is m_t = o_t ⊙ s ⊙ softsign(c_t), s learned per unit."""

    def init(key, input_size):
        k1, k2 = jax.random.split(key)
        return SoftsignLSTMParams(
            U=jax.random.normal(k1, (input_size, 4 * H)) / jnp.sqrt(input_size),
            W=jax.random.normal(k2, (H, 4 * H)) / jnp.sqrt(H),
            b=jnp.zeros((4 * H,)),
            scale=jnp.ones((H,)),
        )

    def pointwise(unit_params, carry, px, hw):
        (scale,) = unit_params
        zi, zf, zg, zo = (a + b for a, b in zip(px, hw, strict=True))
        c = jax.nn.sigmoid(zf) * carry.c + jax.nn.sigmoid(zi) * jnp.tanh(zg)
        h = jax.nn.sigmoid(zo) * expand(scale, c) * jax.nn.soft_sign(c)
        return LSTMCarry(h, c), h

    structure = rj.Structure(
        gates=4,
        recurrent_weights=lambda p: p.W,
        unit_params=lambda p: (p.scale,),
        pointwise=pointwise,
        tied=(True,) * 4,
    )
    return rj.make_cell(
        name="softsign_lstm",
        hidden_size=H,
        config=("softsign_lstm", H),
        init=init,
        initial_carry=lambda p, batch_shape=(): LSTMCarry(
            jnp.zeros((*batch_shape, H)), jnp.zeros((*batch_shape, H))
        ),
        project=lambda p, xs: xs @ p.U + expand(p.b, xs @ p.U),
        structure=structure,
    )


H, D, B, T = 6, 3, 3, 7


def _setup():
    cell = softsign_lstm(H)
    params = cell.init(jax.random.key(0), D)
    params = params._replace(scale=1.0 + 0.5 * jax.random.normal(jax.random.key(1), (H,)))
    xs = jax.random.normal(jax.random.key(2), (B, T, D))
    carry = LSTMCarry(*jax.random.normal(jax.random.key(3), (2, B, H)))
    return cell, params, xs, carry


@pytest.mark.parametrize("backend", ["fused", "pallas", "pallas_tpu", "auto"])
@pytest.mark.parametrize("with_lengths", [False, True])
def test_a_new_cell_runs_on_the_derived_backends(backend, with_lengths):
    cell, params, xs, carry = _setup()
    lengths = jnp.array([T, 4, 1]) if with_lengths else None

    def loss(p, x, c, name):
        final, ys = rj.unroll(cell, p, x, c, lengths=lengths, backend=name)
        return jnp.sum(jnp.sin(ys)) + jnp.sum(final.h * final.c), (final, ys)

    grad = jax.jit(jax.grad(loss, argnums=(0, 1, 2), has_aux=True), static_argnums=3)
    (g_ref, out_ref), (g, out) = grad(params, xs, carry, "scan"), grad(params, xs, carry, backend)
    chex.assert_trees_all_close(out, out_ref, atol=1e-5, rtol=1e-5)  # float32
    chex.assert_trees_all_close(g, g_ref, atol=1e-5, rtol=1e-5)
    assert float(jnp.abs(g[0].scale).sum()) > 0  # the unit parameter does receive gradient


def test_a_cell_without_structure_is_refused_with_the_reason():
    cell = rj.multiplicative_rnn(4, factors=3)
    params = cell.init(jax.random.key(0), D)
    for backend in ("fused", "pallas"):
        with pytest.raises(ValueError, match="structured form"):
            rj.unroll(cell, params, jnp.ones((B, T, D)), backend=backend)
    rj.unroll(cell, params, jnp.ones((B, T, D)), backend="auto")  # auto falls back to scan


def test_a_pointwise_that_mixes_units_runs_on_fused_not_on_pallas():
    """A layer norm over the hidden units (not element-wise) is fine for the fused loop."""
    base = rj.simple_rnn(H)

    def pointwise(unit_params, carry, px, hw):
        a = px[0] + hw[0]
        a = (a - a.mean(-1, keepdims=True)) / jnp.sqrt(a.var(-1, keepdims=True) + 1e-5)
        h = jnp.tanh(a)
        return rj.RNNCarry(h), h

    assert base.structure is not None
    structure = base.structure._replace(pointwise=pointwise, elementwise=False)
    cell = rj.make_cell(
        name="ln_rnn",
        hidden_size=H,
        config="ln_rnn",
        init=base.init,
        initial_carry=base.initial_carry,
        project=base.project,
        structure=structure,
    )
    params = cell.init(jax.random.key(0), D)
    xs = jax.random.normal(jax.random.key(1), (B, T, D))

    def loss(p, name):
        return jnp.sum(rj.unroll(cell, p, xs, backend=name)[1] ** 2)

    chex.assert_trees_all_close(
        jax.grad(loss)(params, "fused"), jax.grad(loss)(params, "scan"), atol=1e-5, rtol=1e-5
    )
    with pytest.raises(ValueError, match="element-wise"):
        rj.unroll(cell, params, xs, backend="pallas")
