"""Layer-normalised LSTM and GRU against Ba, Kiros & Hinton's equations written here in numpy
(float64), forward and gradients (central differences of the numpy oracle), on scan and fused;
pallas refuses them with the reason."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import rnnjax as rj

B, T, D, H = 2, 5, 3, 4


def _ln(a, gain, bias, groups, eps=1e-5):
    """LN(a; α, β) over the last axis in ``groups`` blocks (the paper's section 3)."""
    g = a.reshape(*a.shape[:-1], groups, a.shape[-1] // groups)
    mu = g.mean(-1, keepdims=True)
    sd = np.sqrt(((g - mu) ** 2).mean(-1, keepdims=True) + eps)
    out = ((g - mu) / sd).reshape(a.shape) * gain
    return out if bias is None else out + bias


def _sig(x):
    return 1.0 / (1.0 + np.exp(-x))


def oracle_lstm(p, xs, carry, per_gate):
    """(i, f, g, o) = LN(h W; α₁) + LN(x U; α₂) + b; h = σ(o) tanh(LN(c; α₃, β₃))."""
    groups = 4 if per_gate else 1
    h, c = carry
    ys = []
    for t in range(xs.shape[1]):
        a = _ln(h @ p["W"], p["gain_h"], None, groups) + _ln(
            xs[:, t] @ p["U"], p["gain_x"], None, groups
        )
        a = a + p["b"]
        i, f, g, o = np.split(a, 4, axis=-1)
        c = _sig(f) * c + _sig(i) * np.tanh(g)
        h = _sig(o) * np.tanh(_ln(c, p["gain_c"], p["bias_c"], 1))
        ys.append(h)
    return np.stack(ys, 1), (h, c)


def oracle_gru(p, xs, carry, per_gate):
    """a^x = LN(x U; α_x) + b, a^h = LN(h W; α_h); PyTorch's reset-after GRU on them."""
    groups = 3 if per_gate else 1
    (h,) = carry
    ys = []
    for t in range(xs.shape[1]):
        ax = _ln(xs[:, t] @ p["U"], p["gain_x"], None, groups) + p["b"]
        ah = _ln(h @ p["W"], p["gain_h"], None, groups)
        xr, xz, xn = np.split(ax, 3, axis=-1)
        hr, hz, hn = np.split(ah, 3, axis=-1)
        r, z = _sig(xr + hr), _sig(xz + hz)
        n = np.tanh(xn + r * (hn + p["b_hn"]))
        h = (1 - z) * n + z * h
        ys.append(h)
    return np.stack(ys, 1), (h,)


CASES = {
    "lstm": (rj.layer_norm_lstm, oracle_lstm),
    "gru": (rj.layer_norm_gru, oracle_gru),
}


def _setup(name, per_gate, dtype=jnp.float32):
    factory, oracle = CASES[name]
    cell = factory(H, per_gate=per_gate, param_dtype=dtype)
    params = cell.init(jax.random.key(0), D)
    # random gains and biases, so every parameter matters
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(1), len(leaves))
    params = treedef.unflatten(
        [x + 0.3 * jax.random.normal(k, x.shape, dtype) for k, x in zip(keys, leaves, strict=True)]
    )
    xs = jax.random.normal(jax.random.key(2), (B, T, D), dtype)
    carry = cell.initial_carry(params, (B,))
    carry = jax.tree.map(
        lambda a: 0.5 * jax.random.normal(jax.random.key(3), a.shape, dtype), carry
    )
    return cell, oracle, params, xs, carry


def _np(tree):
    return {k: np.asarray(v, np.float64) for k, v in tree._asdict().items()}


@pytest.mark.parametrize("per_gate", [False, True])
@pytest.mark.parametrize("name", ["lstm", "gru"])
def test_forward_equals_the_papers_equations(name, per_gate):
    cell, oracle, params, xs, carry = _setup(name, per_gate)
    leaves = [np.asarray(a, np.float64) for a in jax.tree.leaves(carry)]
    want_ys, want_final = oracle(_np(params), np.asarray(xs, np.float64), leaves, per_gate)
    for backend in ("scan", "fused"):
        final, ys = jax.jit(lambda p, x, c, name=backend: rj.unroll(cell, p, x, c, backend=name))(
            params, xs, carry
        )
        np.testing.assert_allclose(ys, want_ys, rtol=1e-5, atol=1e-5)
        for got, want in zip(jax.tree.leaves(final), want_final, strict=True):
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ["lstm", "gru"])
def test_gradients_equal_central_differences_of_the_oracle(name):
    """Directional derivatives of a loss, float64, against the numpy oracle's differences."""
    with jax.enable_x64(True):
        cell, oracle, params, xs, carry = _setup(name, False, jnp.float64)
        leaves = [np.asarray(a) for a in jax.tree.leaves(carry)]
        v_params = jax.tree.map(
            lambda a: jax.random.normal(jax.random.key(4), a.shape, jnp.float64), params
        )
        v_xs = jax.random.normal(jax.random.key(5), xs.shape, jnp.float64)

        def np_loss(eps):
            p = {
                k: np.asarray(a + eps * v)
                for (k, a), v in zip(params._asdict().items(), v_params, strict=True)
            }
            ys, final = oracle(p, np.asarray(xs + eps * v_xs), leaves, False)
            return np.sum(np.sin(ys)) + np.sum(final[-1] ** 2)

        eps = 1e-6
        want = (np_loss(eps) - np_loss(-eps)) / (2 * eps)
        for backend in ("scan", "fused"):

            def loss(p, x, name=backend):
                final, ys = rj.unroll(cell, p, x, carry, backend=name)
                return jnp.sum(jnp.sin(ys)) + jnp.sum(jax.tree.leaves(final)[-1] ** 2)

            g_p, g_x = jax.jit(jax.grad(loss, argnums=(0, 1)))(params, xs)
            got = sum(
                jnp.vdot(a, b)
                for a, b in zip(jax.tree.leaves(g_p), jax.tree.leaves(v_params), strict=True)
            )
            got = got + jnp.vdot(g_x, v_xs)
            np.testing.assert_allclose(float(got), want, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("name", ["lstm", "gru"])
def test_fused_gradients_equal_scan_and_pallas_refuses_with_the_reason(name):
    cell, _, params, xs, carry = _setup(name, True)
    lengths = jnp.array([T, 2])

    def loss(p, x, c, backend):
        final, ys = rj.unroll(cell, p, x, c, lengths=lengths, backend=backend)
        return jnp.sum(jnp.sin(ys)) + jnp.sum(jax.tree.leaves(final)[0])

    grad = jax.jit(jax.grad(loss, argnums=(0, 1, 2)), static_argnums=3)
    chex.assert_trees_all_close(
        grad(params, xs, carry, "fused"), grad(params, xs, carry, "scan"), rtol=1e-5, atol=1e-5
    )
    with pytest.raises(ValueError, match="element-wise"):
        rj.unroll(cell, params, xs, backend="pallas")
    assert rj.kernels.choose_backend(cell, batch=B, steps=T, platform="gpu")[0] == "fused"


def test_initial_gains_are_one_and_bad_eps_is_refused():
    params = rj.layer_norm_lstm(H, forget_bias=2.0).init(jax.random.key(0), D)
    chex.assert_trees_all_equal(params.gain_x, jnp.ones(4 * H))
    assert float(params.b[H : 2 * H].mean()) == pytest.approx(2.0, abs=0.5)
    with pytest.raises(ValueError, match="eps"):
        rj.layer_norm_gru(H, eps=0.0)
