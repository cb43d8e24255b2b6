"""rnnjax.analysis: loss gradients per carry, temporal contributions, Pascanu's Ω and bound."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import rnnjax as rj
from rnnjax import analysis
from rnnjax.analysis._core import carry_unflattener, flatten_carry

B, T, D, H = 2, 6, 3, 4


def _setup(cell, seed):
    k_p, k_x, k_c, k_y = jax.random.split(jax.random.key(seed), 4)
    params = cell.init(k_p, D)
    xs = jax.random.normal(k_x, (B, T, D))
    carry = cell.initial_carry(params, (B,))
    carry = jax.tree.map(lambda a: 0.5 * jax.random.normal(k_c, a.shape), carry)
    targets = jax.random.normal(k_y, (B, T, H))
    return params, xs, carry, targets


def _loss(targets):
    weights = jnp.linspace(0.5, 1.5, T)  # (T,)

    def loss(ys):  # (B, T, H) -> ()
        return jnp.sum(weights[:, None] * jnp.mean(jnp.square(ys - targets), axis=-1).T)

    return loss


def _slow_carry_gradients(loss, cell, params, xs, carry):
    """∂L/∂c_t for t = 0..T one t at a time: L as a function of c_t alone (Python loops)."""
    unflatten = carry_unflattener(carry)
    cs, c = [flatten_carry(carry)], carry
    for t in range(T):
        c, _ = cell.step(params, c, xs[:, t])
        cs.append(flatten_carry(c))

    def loss_from(t, c_t):  # y_s for s < t are fixed; y_t = h_t and later ones depend on c_t
        ys = [unflatten(cs[s]).h for s in range(1, t)]
        c = unflatten(c_t)
        if t > 0:
            ys.append(c.h)
        for s in range(t, T):
            c, y = cell.step(params, c, xs[:, s])
            ys.append(y)
        return loss(jnp.stack(ys, axis=1))

    grads = [jax.grad(lambda c_t, t=t: loss_from(t, c_t))(cs[t]) for t in range(T + 1)]
    return jnp.stack(grads, axis=1)  # (B, T+1, N)


@pytest.mark.parametrize(
    "make", [lambda: rj.lstm(H), lambda: rj.simple_rnn(H)], ids=["lstm", "rnn"]
)
def test_loss_gradient_norms_equal_per_timestep_autodiff(make):
    cell = make()
    params, xs, carry, targets = _setup(cell, 0)
    loss = _loss(targets)
    out = jax.jit(lambda p, x, c: analysis.loss_gradient_norms(loss, cell, p, x, c))(
        params, xs, carry
    )
    slow = _slow_carry_gradients(loss, cell, params, xs, carry)
    np.testing.assert_allclose(out.grads, slow, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out.norms, jnp.linalg.norm(slow, axis=-1), rtol=1e-5, atol=1e-6)
    _, ys = rj.unroll(cell, params, xs, carry)
    np.testing.assert_allclose(out.loss, loss(ys), rtol=1e-6)


def test_loss_must_be_scalar():
    cell = rj.gru(H)
    params, xs, carry, _ = _setup(cell, 1)
    with pytest.raises(ValueError, match="scalar"):
        analysis.loss_gradient_norms(lambda ys: ys.sum(axis=0), cell, params, xs, carry)
    with pytest.raises(ValueError, match="scalar"):
        analysis.temporal_contributions(lambda y, t: y.sum(-1), cell, params, xs, carry)


def _step_loss(targets):
    def step_loss(y_t, t):  # (B, H), () -> ()
        return jnp.mean(jnp.square(y_t - targets[:, t])) * (1.0 + t)

    return step_loss


def test_temporal_contributions_match_one_loss_term_at_a_time():
    cell = rj.lstm(H)
    params, xs, carry, targets = _setup(cell, 2)
    step_loss = _step_loss(targets)
    out = jax.jit(lambda p, x, c: analysis.temporal_contributions(step_loss, cell, p, x, c))(
        params, xs, carry
    )

    @jax.jit
    def row(t):  # ‖∂L_t/∂c_τ‖ for τ = 1..T (0 for τ > t)
        loss_t = lambda ys: step_loss(ys[:, t], t)  # noqa: E731
        return analysis.loss_gradient_norms(loss_t, cell, params, xs, carry).norms[:, 1:]

    want = np.stack([row(t) for t in range(T)], axis=1)  # (B, T, T)
    np.testing.assert_allclose(out.matrix, want, rtol=1e-5, atol=1e-7)
    assert np.all(np.triu(np.asarray(out.matrix[0]), 1) == 0)

    # the lag split sums to the full gradient of L = Σ_t L_t through rj.unroll
    def total(p):
        _, ys = rj.unroll(cell, p, xs, carry)
        return sum(step_loss(ys[:, t], t) for t in range(T))

    want_grad = jax.grad(total)(params)
    for got, exp in zip(jax.tree.leaves(out.gradient), jax.tree.leaves(want_grad), strict=True):
        np.testing.assert_allclose(got, exp, rtol=1e-5, atol=1e-6)
    per_leaf = jnp.sqrt(sum(jnp.square(n) for n in jax.tree.leaves(out.lag_norms_by_param)))
    np.testing.assert_allclose(out.lag_norms, per_leaf, rtol=1e-6)


def test_linear_rnn_contributions_are_matrix_powers():
    """L_t = ⟨y_t, r⟩ on c_t = c_{t-1} W + ...: ∂L_t/∂c_τ = rᵀ(Wᵀ)^{t-τ}, G_k = r-weighted sums."""
    cell = rj.simple_rnn(H, activation="identity")
    params, xs, carry, _ = _setup(cell, 3)
    r = jax.random.normal(jax.random.key(4), (H,))
    out = analysis.temporal_contributions(lambda y, t: jnp.sum(y @ r), cell, params, xs, carry)
    W = np.asarray(params.W, np.float64)
    lag = [np.linalg.norm(np.linalg.matrix_power(W, k) @ np.asarray(r)) for k in range(T)]
    want = np.array([[lag[t - s] if t >= s else 0.0 for s in range(T)] for t in range(T)])
    np.testing.assert_allclose(out.matrix[0], want, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(out.matrix[1], want, rtol=1e-5, atol=1e-7)


def test_pascanu_regularizer_is_zero_when_steps_preserve_the_norm():
    """Identity activation and orthogonal W: every J_t = Wᵀ is an isometry."""
    cell = rj.simple_rnn(H, activation="identity", recurrent_init=jax.nn.initializers.orthogonal())
    params, xs, carry, targets = _setup(cell, 5)
    for squared in (True, False):
        for reduction in ("mean", "sum"):
            omega = analysis.pascanu_regularizer(
                cell, params, xs, carry, _loss(targets), squared=squared, reduction=reduction
            )
            assert abs(float(omega)) < 1e-10
    scaled = params._replace(W=0.5 * params.W)  # every step now halves it: ratio 1/4
    omega = analysis.pascanu_regularizer(cell, scaled, xs, carry, _loss(targets))
    np.testing.assert_allclose(omega, (0.25 - 1.0) ** 2, rtol=1e-5)


def test_pascanu_regularizer_through_activations_gradient():
    cell = rj.simple_rnn(H)
    params, xs, carry, targets = _setup(cell, 6)
    loss = _loss(targets)
    grads = analysis.loss_gradient_norms(loss, cell, params, xs, carry).grads  # (B, T+1, H)
    v = grads[:, 1:]  # ∂L/∂c_{k+1}
    cs = [carry.h]
    for t in range(T):
        cs.append(cell.step(params, rj.RNNCarry(cs[-1]), xs[:, t])[0].h)
    cs = jnp.stack(cs, axis=1)  # (B, T+1, H)
    px = xs @ params.U + params.b[None, None]  # (B, T, H)

    def by_hand(W):  # tanh RNN: v J = (v ⊙ tanh'(a_{k+1})) Wᵀ, a = px + c_k W; v, c_k constant
        a = px + cs[:, :-1] @ W
        u = (v * (1.0 - jnp.tanh(a) ** 2)) @ W.T
        ratio = jnp.sum(u**2, -1) / jnp.sum(v**2, -1)
        return jnp.mean((ratio - 1.0) ** 2)

    omega_fn = lambda p: analysis.pascanu_regularizer(  # noqa: E731
        cell, p, xs, carry, loss, gradient="through_activations"
    )
    np.testing.assert_allclose(omega_fn(params), by_hand(params.W), rtol=1e-5)
    g = jax.jit(jax.grad(omega_fn))(params)
    np.testing.assert_allclose(g.W, jax.grad(by_hand)(params.W), rtol=1e-4, atol=1e-7)
    assert np.all(g.U == 0) and np.all(g.b == 0)  # the projected inputs are constants
    # the same Ω from precomputed carry gradients
    omega = analysis.pascanu_regularizer(cell, params, xs, carry, carry_grads=v)
    np.testing.assert_allclose(omega, by_hand(params.W), rtol=1e-5)
    with pytest.raises(ValueError, match="exactly one"):
        analysis.pascanu_regularizer(cell, params, xs, carry)
    with pytest.raises(ValueError, match="carry_grads must have shape"):
        analysis.pascanu_regularizer(cell, params, xs, carry, carry_grads=grads)
    with pytest.raises(ValueError, match="reduction"):
        analysis.pascanu_regularizer(cell, params, xs, carry, loss, reduction="max")


@pytest.mark.parametrize(("activation", "gamma"), [("tanh", 1.0), ("sigmoid", 0.25)])
def test_pascanu_bound_of_the_simple_rnn(activation, gamma):
    cell = rj.simple_rnn(8, activation=activation)
    params = cell.init(jax.random.key(7), D)
    sigma = np.linalg.norm(np.asarray(params.W, np.float64), 2)
    for scale, verdict in (
        (0.5 / (gamma * sigma), "vanishing"),
        (2.0 / (gamma * sigma), "may_explode"),
    ):
        out = analysis.pascanu_bound(cell, params._replace(W=scale * params.W))
        np.testing.assert_allclose(out.sigma_max, scale * sigma, rtol=1e-6)
        assert out.gamma == gamma
        np.testing.assert_allclose(out.eta, gamma * scale * sigma, rtol=1e-6)
        assert out.verdict == verdict and out.gate is None


def test_pascanu_bound_of_gated_and_multiplicative_cells():
    xs = jax.random.normal(jax.random.key(8), (B, T, D))
    lstm = rj.lstm(H)
    params = lstm.init(jax.random.key(9), D)
    stats = analysis.pascanu_bound(lstm, params).gate
    np.testing.assert_allclose(stats.mean, jax.nn.sigmoid(1.0), rtol=1e-6)  # σ(forget bias)
    assert not stats.from_inputs
    # along the inputs: f_t = σ(x_t U_f + h_{t-1} W_f + b_f), the diagonal of ∂c_t/∂c_{t-1}
    _, hs = rj.unroll(lstm, params, xs)
    h_prev = jnp.concatenate([jnp.zeros((B, 1, H)), hs[:, :-1]], axis=1)
    z = xs @ params.U + h_prev @ params.W + params.b[None, None]  # (B, T, 4H)
    f = jax.nn.sigmoid(z[..., H : 2 * H])
    out = analysis.pascanu_bound(lstm, params, xs)
    assert out.verdict == "gated" and out.eta is None and out.gate.from_inputs
    np.testing.assert_allclose(out.gate.mean, f.mean(), rtol=1e-5)
    np.testing.assert_allclose(out.gate.mean_log, np.log(f).mean(), rtol=1e-5)
    mrnn = rj.multiplicative_rnn(H, factors=5)
    params = mrnn.init(jax.random.key(10), D)
    with pytest.raises(ValueError, match="pass xs"):
        analysis.pascanu_bound(mrnn, params)
    out = analysis.pascanu_bound(mrnn, params, xs)
    Wx = [
        np.asarray(params.W_in) @ np.diag(np.asarray(x @ params.U_f)) @ np.asarray(params.W_out)
        for x in xs.reshape(-1, D)
    ]
    np.testing.assert_allclose(out.sigma_max, max(np.linalg.norm(w, 2) for w in Wx), rtol=1e-5)


def test_clipping_wrapper_records_norms_and_rate():
    import optax

    params = {"a": jnp.zeros(3), "b": jnp.zeros((2, 2))}
    tx = optax.chain(analysis.clip_by_global_norm_with_stats(1.0), optax.sgd(0.1))
    state = tx.init(params)
    update = jax.jit(tx.update)
    for i, norm in enumerate([2.0, 0.5, 3.0, 1.0]):
        g = jax.tree.map(lambda p, k=i: jax.random.normal(jax.random.key(k), p.shape), params)
        g = jax.tree.map(lambda x, g=g, n=norm: x * n / optax.tree.norm(g), g)
        updates, state = update(g, state, params)
        stats = analysis.clip_stats(state)
        np.testing.assert_allclose(stats.global_norm, norm, rtol=1e-6)
        assert bool(stats.clipped) == (norm > 1.0)
        want, _ = optax.clip_by_global_norm(1.0).update(g, optax.EmptyState())
        for got, exp in zip(jax.tree.leaves(updates), jax.tree.leaves(want), strict=True):
            np.testing.assert_allclose(got, -0.1 * exp, rtol=1e-6)
    assert int(stats.steps) == 4 and int(stats.clipped_steps) == 2
    np.testing.assert_allclose(analysis.clip_rate(stats), 0.5)
    # element-wise clipping fires when some |g_i| > d, whatever the global norm
    tx = analysis.clip_with_stats(0.3)
    state = tx.init(params)
    g = {"a": jnp.array([0.1, -0.4, 0.0]), "b": jnp.zeros((2, 2))}
    out, state = tx.update(g, state)
    assert bool(state.clipped) and float(out["a"][1]) == pytest.approx(-0.3)
    out, state = tx.update(jax.tree.map(lambda x: 0.5 * x, g), state)
    assert not bool(state.clipped) and float(analysis.clip_rate(state)) == 0.5
    with pytest.raises(ValueError, match="max_norm"):
        analysis.clip_by_global_norm_with_stats(0.0)
    with pytest.raises(ValueError, match="no ClipStatsState"):
        analysis.clip_stats(optax.sgd(0.1).init(params))
