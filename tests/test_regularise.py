"""Recurrent regularisation against the papers' equations, written here in numpy (float64):
variational dropout on x_t and h_{t-1} (Gal & Ghahramani 2016), zoneout on h and c (Krueger
et al. 2017; evaluation = expectation), weight drop on W (Merity et al. 2017). The masks are
read from `rj.regularise.masks`; the equations that use them are the papers'. Training and
evaluation forms, on scan, fused and pallas (interpret mode), gradients included."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import rnnjax as rj
from rnnjax.regularise import masks

B, T, D, H = 2, 5, 3, 4
KEY = jax.random.key(11)
ALL = dict(input_dropout=0.3, recurrent_dropout=0.4, zoneout_h=0.3, zoneout_c=0.5, weight_drop=0.25)


def _sig(x):
    return 1.0 / (1.0 + np.exp(-x))


def oracle(kind, p, xs, carry, m, options, training):
    """The regularised LSTM / GRU, one step at a time, from the papers' equations."""
    U, W, b = (np.asarray(a, np.float64) for a in (p.U, p.W, p.b))
    h = np.asarray(carry[0], np.float64)
    c = np.asarray(carry[1], np.float64) if kind == "lstm" else None
    m_h = 1.0
    if training:
        if m.input is not None:
            xs = xs * np.asarray(m.input)[:, None, :]  # x_t ⊙ m_x, one mask per sequence
        if m.weight is not None:
            W = W * np.asarray(m.weight)  # W ⊙ M, one mask per forward pass
        if m.recurrent is not None:
            m_h = np.asarray(m.recurrent)  # (H,) or (B, H)
    z_h, z_c = options.get("zoneout_h", 0.0), options.get("zoneout_c", 0.0)
    ys = []
    for t in range(xs.shape[1]):
        hw = (h * m_h) @ W  # (h_{t-1} ⊙ m_h) W
        px = xs[:, t] @ U + b
        if kind == "lstm":
            i, f, g, o = np.split(px + hw, 4, axis=-1)
            c_new = _sig(f) * c + _sig(i) * np.tanh(g)
            h_new = _sig(o) * np.tanh(c_new)
        else:
            xr, xz, xn = np.split(px, 3, axis=-1)
            hr, hz, hn = np.split(hw, 3, axis=-1)
            r, zz = _sig(xr + hr), _sig(xz + hz)
            n = np.tanh(xn + r * (hn + np.asarray(p.b_hn)))
            h_new = (1 - zz) * n + zz * h
        if training:  # d_t = 1: the unit keeps its previous value
            d_h = m.zoneout[0][t] if m.zoneout[0] is not None else False
            h_next = np.where(np.asarray(d_h), h, h_new)
            if kind == "lstm":
                d_c = m.zoneout[1][t] if m.zoneout[1] is not None else False
                c = np.where(np.asarray(d_c), c, c_new)
        else:  # the expectation
            h_next = z_h * h + (1 - z_h) * h_new
            if kind == "lstm":
                c = z_c * c + (1 - z_c) * c_new
        h = h_next
        ys.append(h)
    return np.stack(ys, 1), (h, c) if kind == "lstm" else (h,)


def _setup(kind):
    base = rj.lstm(H) if kind == "lstm" else rj.gru(H)
    params = base.init(jax.random.key(0), D)
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(1), len(leaves))
    params = treedef.unflatten(
        [0.5 * jax.random.normal(k, x.shape) for k, x in zip(keys, leaves, strict=True)]
    )
    xs = jax.random.normal(jax.random.key(2), (B, T, D))
    carry = jax.tree.map(
        lambda a: 0.5 * jax.random.normal(jax.random.key(3), a.shape),
        base.initial_carry(params, (B,)),
    )
    return base, params, xs, carry


def _check(kind, options, backend, training=True):
    base, params, xs, carry = _setup(kind)
    cell = rj.regularised(base, **options)
    run = rj.with_key(cell, KEY) if training else cell
    m = masks(cell, KEY, params, (B,), T) if training else None
    want_ys, want_final = oracle(
        kind, params, np.asarray(xs, np.float64), jax.tree.leaves(carry), m, options, training
    )
    final, ys = jax.jit(lambda p, x, c: rj.unroll(run, p, x, c, backend=backend))(params, xs, carry)
    np.testing.assert_allclose(ys, want_ys, rtol=2e-5, atol=2e-5)
    for got, want in zip(jax.tree.leaves(final), want_final, strict=True):
        np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-5)


@pytest.mark.parametrize("backend", ["scan", "fused"])
@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_training_form_equals_the_papers_equations(kind, backend):
    _check(kind, ALL, backend)


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_evaluation_form_is_the_zoneout_expectation_without_dropout(kind):
    _check(kind, ALL, "fused", training=False)


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_per_sequence_recurrent_masks_run_on_scan_and_fused_refuses(kind):
    options = dict(recurrent_dropout=0.5, recurrent_mask="sequence", zoneout_h=0.2)
    _check(kind, options, "scan")
    base, params, xs, _ = _setup(kind)
    m = masks(rj.regularised(base, **options), KEY, params, (B,), T)
    assert m.recurrent.shape == (B, H) and not jnp.array_equal(m.recurrent[0], m.recurrent[1])
    cell = rj.with_key(rj.regularised(base, **options), KEY)
    with pytest.raises(ValueError, match="backend='scan'"):
        rj.unroll(cell, params, xs, backend="fused")


def test_pallas_runs_the_training_form_forward_and_gradients():
    """The zoneout masks ride in px as a fifth gate block; weight and recurrent masks are on W."""
    _check("lstm", ALL, "pallas")
    base, params, xs, carry = _setup("lstm")
    cell = rj.with_key(rj.regularised(base, **ALL), KEY)

    def loss(p, x, c, backend):
        final, ys = rj.unroll(cell, p, x, c, lengths=jnp.array([T, 3]), backend=backend)
        return jnp.sum(jnp.sin(ys)) + jnp.sum(final.c**2)

    grad = jax.jit(jax.grad(loss, argnums=(0, 1, 2)), static_argnums=3)
    want = grad(params, xs, carry, "scan")
    for backend in ("fused", "pallas"):
        chex.assert_trees_all_close(grad(params, xs, carry, backend), want, rtol=1e-5, atol=1e-5)


def test_masks_have_the_rates_and_are_inverted():
    base, params, _, _ = _setup("lstm")
    cell = rj.regularised(base, **ALL)
    m = masks(cell, KEY, params, (4000,), 3)
    assert float(jnp.mean(m.input == 0)) == pytest.approx(0.3, abs=0.02)
    assert float(jnp.mean(m.input)) == pytest.approx(1.0, abs=0.03)
    np.testing.assert_allclose(np.unique(np.asarray(m.input)), [0.0, 1 / 0.7], rtol=1e-6)
    assert float(jnp.mean(m.zoneout[0])) == pytest.approx(0.3, abs=0.02)
    assert float(jnp.mean(m.zoneout[1])) == pytest.approx(0.5, abs=0.02)
    assert m.recurrent.shape == (H,) and m.weight.shape == params.W.shape
    # a fresh key, fresh masks; the same key, the same masks
    other = masks(cell, jax.random.key(12), params, (4000,), 3)
    assert not jnp.array_equal(m.input, other.input)
    chex.assert_trees_all_equal(m, masks(cell, KEY, params, (4000,), 3))


def test_step_equals_a_one_step_unroll_and_with_key_leaves_plain_cells_alone():
    base, params, xs, carry = _setup("lstm")
    cell = rj.with_key(rj.regularised(base, **ALL), KEY)
    want, y_want = rj.unroll(cell, params, xs[:, :1], carry, backend="scan")
    got, y = cell.step(params, carry, xs[:, 0])
    chex.assert_trees_all_close((got, y), (want, y_want[:, 0]), rtol=1e-6, atol=1e-6)
    assert rj.with_key(base, KEY) is base


def test_bad_options_are_refused_with_the_value():
    with pytest.raises(ValueError, match="zoneout_h"):
        rj.regularised(rj.lstm(H), zoneout_h=1.0)
    with pytest.raises(ValueError, match="input_dropout"):
        rj.regularised(rj.lstm(H), input_dropout=-0.1)
    with pytest.raises(ValueError, match="recurrent_mask"):
        rj.regularised(rj.lstm(H), recurrent_mask="step")
    with pytest.raises(ValueError, match="recurrent matrix"):
        rj.regularised(rj.min_gru(H), weight_drop=0.5)
