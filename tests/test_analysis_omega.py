"""Pascanu's Ω: its value and eq. 10's gradient against implementations written from the paper.

The oracles are written here from the equations, with their own forward passes: the Simple RNN
one is a line-by-line port of ``tmp_reg`` in pascanur/trainingRNNs (RNN.py), where ``TT.grad``
differentiates Ω with respect to W_hh *before* the back-propagated errors ``d_ht`` and the
states ``ht`` are substituted (so both are constants); the LSTM one writes v J from the gate
equations with every gate value held constant.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import rnnjax as rj
from rnnjax import analysis

B, T, D, H = 3, 20, 4, 16


def _inputs(seed):
    k_x, k_v, k_y = jax.random.split(jax.random.key(seed), 3)
    xs = jax.random.normal(k_x, (B, T, D))
    lengths = jnp.array([T, T - 4, T - 9])  # read early: later errors are 0 and are skipped
    return xs, lengths, jax.random.normal(k_v, (H,)), jax.random.normal(k_y, (B,))


def _loss_of_outputs(lengths, readout, targets):
    def loss(ys):  # (B, T, H) -> (): squared error of a linear readout at each length - 1
        last = jnp.take_along_axis(ys, (lengths - 1)[:, None, None], axis=1)[:, 0]  # (B, H)
        return jnp.mean(jnp.square(last @ readout - targets))  # (B,) errors

    return loss


def _srn_params(seed, rho):
    cell = rj.simple_rnn(H)
    params = cell.init(jax.random.key(seed), D)
    W = np.asarray(params.W, np.float64)
    W = W * rho / np.abs(np.linalg.eigvals(W)).max()  # spectral radius rho
    return cell, params._replace(W=jnp.asarray(W, jnp.float32), b=0.1 * jnp.ones(H))


def _paper_code_omega(W, U, b, xs, loss, bound=1e-20):
    """Port of pascanur/trainingRNNs RNN.py (time-major there, batch-major here)."""
    U_, b_ = jax.lax.stop_gradient(U), jax.lax.stop_gradient(b)

    def states(W, deltas):  # h_t = tanh(h_{t-1} W + u_t W_uh + b), + a probe for dC/dh_t
        def body(h, inputs):
            u_t, delta = inputs  # (B, D), (B, H)
            h = jnp.tanh(h @ W + u_t @ U_ + b_[None]) + delta
            return h, h

        _, hs = jax.lax.scan(body, deltas[0], (jnp.swapaxes(xs, 0, 1), deltas[1:]))
        return jnp.swapaxes(hs, 0, 1)  # (B, T, H)

    zeros = jnp.zeros((T + 1, B, H))
    W0 = jax.lax.stop_gradient(W)
    d_ht = jax.grad(lambda d: loss(states(W0, d)))(zeros)  # (T+1, B, H): d_ht[k] = dC/dh_k
    ht = jnp.swapaxes(states(W0, zeros), 0, 1)  # (T, B, H): h_1..h_T
    d_ht, ht = jax.lax.stop_gradient(d_ht), jax.lax.stop_gradient(ht)
    tmp_x = d_ht[1:] * (1 - ht**2)
    tmp_x = (tmp_x.reshape(T * B, H) @ W.T).reshape(T, B, H)
    tmp_x = (tmp_x**2).sum(2)
    tmp_y = (d_ht[1:] ** 2).sum(2)
    valid = tmp_y >= bound
    tmp_reg = (jnp.where(valid, tmp_x / jnp.where(valid, tmp_y, 1.0), 1.0) - 1.0) ** 2
    n_elems = jnp.mean(valid, axis=1)
    return tmp_reg.mean(1).sum() / n_elems.sum()


def _cosine(a, b):
    a, b = np.ravel(a), np.ravel(b)
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


@pytest.mark.parametrize("rho", [0.9, 1.2])
def test_simple_rnn_omega_and_its_gradient_equal_the_papers_code(rho):
    cell, params = _srn_params(0, rho)
    xs, lengths, readout, targets = _inputs(1)
    loss = _loss_of_outputs(lengths, readout, targets)

    def omega(p, gradient="paper"):
        return analysis.pascanu_regularizer(cell, p, xs, loss_fn=loss, gradient=gradient)

    def oracle(W):
        return _paper_code_omega(W, params.U, params.b, xs, loss)

    np.testing.assert_allclose(jax.jit(omega)(params), jax.jit(oracle)(params.W), rtol=1e-5)
    g = jax.jit(jax.grad(omega))(params)
    want = jax.jit(jax.grad(oracle))(params.W)
    np.testing.assert_allclose(g.W, want, rtol=2e-4, atol=1e-6 * np.abs(want).max())
    assert np.all(g.U == 0) and np.all(g.b == 0)  # only W_hh gets Ω's gradient (the code)

    # the other variant: same value, a different gradient (it adds the σ''(a) terms)
    value, other = jax.jit(jax.value_and_grad(lambda p: omega(p, "through_activations")))(params)
    np.testing.assert_allclose(value, oracle(params.W), rtol=1e-5)
    assert np.linalg.norm(other.W - g.W) > 0.05 * np.linalg.norm(g.W)
    assert _cosine(other.W, g.W) < 0.999


def test_precomputed_carry_gradients_give_the_same_omega_and_gradient():
    cell, params = _srn_params(2, 1.1)
    xs, lengths, readout, targets = _inputs(3)
    loss = _loss_of_outputs(lengths, readout, targets)
    grads = jax.jit(lambda p: analysis.loss_gradient_norms(loss, cell, p, xs).grads)(params)
    v = grads[:, 1:]  # (B, T, H)

    def from_loss(p):
        return analysis.pascanu_regularizer(cell, p, xs, loss_fn=loss)

    def from_grads(p):
        return analysis.pascanu_regularizer(cell, p, xs, carry_grads=v)

    (a, g_a), (b, g_b) = (jax.jit(jax.value_and_grad(f))(params) for f in (from_grads, from_loss))
    np.testing.assert_allclose(a, b, rtol=1e-6)
    np.testing.assert_allclose(g_a.W, g_b.W, rtol=1e-5, atol=1e-6 * np.abs(g_b.W).max())


def _lstm_oracle(W, params, xs, v, states):
    """Σ (‖v J‖²/‖v‖² − 1)² / count, v J from the LSTM's gate equations, gates constant."""
    sg = jax.lax.stop_gradient
    h_prev, c_prev = states[:, :-1, :H], states[:, :-1, H:]  # (B, T, H) each
    z = xs @ params.U + params.b[None, None] + h_prev @ sg(W)  # (B, T, 4H)
    i, f = jax.nn.sigmoid(z[..., :H]), jax.nn.sigmoid(z[..., H : 2 * H])
    g, o = jnp.tanh(z[..., 2 * H : 3 * H]), jax.nn.sigmoid(z[..., 3 * H :])
    c = f * c_prev + i * g
    v_h, v_c = v[..., :H], v[..., H:]
    dc = v_c + v_h * o * (1 - jnp.tanh(c) ** 2)  # ∂(v·F)/∂c_{k+1} inside the step
    dz = jnp.concatenate(  # ∂(v·F)/∂z per gate (i, f, g, o)
        [
            dc * g * i * (1 - i),
            dc * c_prev * f * (1 - f),
            dc * i * (1 - g**2),
            v_h * jnp.tanh(c) * o * (1 - o),
        ],
        axis=-1,
    )
    u = jnp.concatenate([sg(dz) @ W.T, sg(dc * f)], axis=-1)  # (B, T, 2H): [∂/∂h_k, ∂/∂c_k]
    den = jnp.sum(v**2, -1)
    valid = den >= 1e-20
    terms = jnp.where(valid, (jnp.sum(u**2, -1) / jnp.where(valid, den, 1.0) - 1) ** 2, 0.0)
    return terms.sum() / valid.sum()


def test_lstm_paper_gradient_holds_every_gate_constant():
    cell = rj.lstm(H, forget_bias=1.0)
    params = cell.init(jax.random.key(4), D)
    params = params._replace(W=1.5 * params.W)
    xs, lengths, readout, targets = _inputs(5)
    loss = _loss_of_outputs(lengths, readout, targets)
    grads = jax.jit(lambda p: analysis.loss_gradient_norms(loss, cell, p, xs).grads)(params)
    v = grads[:, 1:]  # (B, T, 2H)

    @jax.jit
    def trajectory(p):  # c_0..c_T as [h, c], by the test's own scan over cell.step
        def body(carry, x_t):
            carry, _ = cell.step(p, carry, x_t)
            return carry, jnp.concatenate([carry.h, carry.c], -1)

        _, cs = jax.lax.scan(body, cell.initial_carry(p, (B,)), jnp.swapaxes(xs, 0, 1))
        return jnp.concatenate([jnp.zeros((B, 1, 2 * H)), jnp.swapaxes(cs, 0, 1)], axis=1)

    states = trajectory(params)

    def omega(p):
        return analysis.pascanu_regularizer(cell, p, xs, carry_grads=v)

    value, got = jax.jit(jax.value_and_grad(omega))(params)
    want_value, want = jax.jit(jax.value_and_grad(_lstm_oracle))(params.W, params, xs, v, states)
    np.testing.assert_allclose(value, want_value, rtol=1e-5)
    got = got.W
    np.testing.assert_allclose(got, want, rtol=2e-4, atol=1e-6 * np.abs(want).max())


def test_paper_gradient_names_the_cells_it_does_not_cover():
    xs = jax.random.normal(jax.random.key(6), (2, 5, D))
    loss = lambda ys: jnp.mean(ys**2)  # noqa: E731
    gru = rj.gru(H)
    params = gru.init(jax.random.key(7), D)
    with pytest.raises(ValueError, match="gradient='through_activations'"):
        jax.eval_shape(lambda p: analysis.pascanu_regularizer(gru, p, xs, loss_fn=loss), params)
    value = jax.jit(
        lambda p: analysis.pascanu_regularizer(
            gru, p, xs, loss_fn=loss, gradient="through_activations"
        )
    )(params)
    assert np.isfinite(float(value))
    mrnn = rj.multiplicative_rnn(H, factors=H)
    with pytest.raises(ValueError, match="has none"):
        jax.eval_shape(
            lambda p: analysis.pascanu_regularizer(mrnn, p, xs, loss_fn=loss),
            mrnn.init(jax.random.key(8), D),
        )
    with pytest.raises(ValueError, match="gradient must be one of"):
        analysis.pascanu_regularizer(gru, params, xs, loss_fn=loss, gradient="eq10")


@pytest.mark.parametrize("backend", ["scan", "fused"])
def test_simple_rnn_regularizer_from_one_backward_pass(backend):
    """g = ∂L/∂(x_t U + b) and d = ∂L/∂y_t from probes added to unroll's input and output."""
    cell, params = _srn_params(9, 1.2)
    xs, lengths, readout, targets = _inputs(10)
    loss = _loss_of_outputs(lengths, readout, targets)

    def loss_of(p, dpx, dys):  # U' = [U; I] and x' = [x, dpx] add dpx to the projection
        probe = p._replace(U=jnp.concatenate([p.U, jnp.eye(H)], axis=0))
        _, ys = rj.unroll(cell, probe, jnp.concatenate([xs, dpx], -1), backend=backend)
        return loss(ys + dys)

    zeros = jnp.zeros((B, T, H))
    _, (_, g, d) = jax.jit(jax.value_and_grad(loss_of, (0, 1, 2)))(params, zeros, zeros)
    value, grad = jax.jit(jax.value_and_grad(analysis.simple_rnn_regularizer))(params.W, g, d)
    want, want_grad = jax.jit(
        jax.value_and_grad(lambda W: _paper_code_omega(W, params.U, params.b, xs, loss))
    )(params.W)
    np.testing.assert_allclose(value, want, rtol=1e-5)
    np.testing.assert_allclose(grad, want_grad, rtol=2e-4, atol=1e-6 * np.abs(want_grad).max())
    one = analysis.simple_rnn_regularizer(params.W, g[0], d[0], reduction="sum")
    assert np.isfinite(float(one))
    with pytest.raises(ValueError, match="must both be"):
        analysis.simple_rnn_regularizer(params.W, g, d[:, 1:])


def test_training_with_omega_names_an_unsupported_cell_at_setup():
    from rnnjax.analysis.pascanu import paper_gradient_supported
    from rnnjax.data import make_task
    from rnnjax.train import build_cells, task_model, task_objective
    from rnnjax.train.step import omega_schedule

    assert paper_gradient_supported(rj.simple_rnn(4)) and paper_gradient_supported(rj.lstm(4))
    assert paper_gradient_supported(rj.lstm(4, peephole=True, coupled=True))
    assert not paper_gradient_supported(rj.gru(4))
    task = make_task("adding", 10)
    model = task_model(task, build_cells("gru", 4))
    with pytest.raises(ValueError, match="the gru cell's step does not"):
        task_objective(model, task, 2, omega_schedule(1.0))
