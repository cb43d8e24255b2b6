"""Every cell: batching == vmap, no retracing, gradients checked numerically, bfloat16, and
the lecture's worked example. The equations themselves are checked against oracles written
from the papers in test_oracles.py."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import CELL_FACTORIES, random_like
from jax.test_util import check_grads

import rnnjax as rj
from rnnjax.cells.base import TRANSPOSED_COPY_BELOW

B, T, D, H = 3, 6, 5, 4


def make(name, key, H=H, D=D):
    cell = CELL_FACTORIES[name](H)
    k_p, k_r = jax.random.split(key)
    params = random_like(k_r, cell.init(k_p, D))  # fresh values in every leaf, biases too
    return cell, params


@pytest.mark.parametrize("name", CELL_FACTORIES)
def test_batched_equals_vmapped(name, rng):
    k_c, k_x = jax.random.split(rng)
    cell, params = make(name, k_c)
    xs = jax.random.normal(k_x, (B, T, D))
    batched = rj.unroll(cell, params, xs)
    vmapped = jax.vmap(lambda x: rj.unroll(cell, params, x))(xs)  # each x is (T, D)
    chex.assert_trees_all_close(batched, vmapped, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ["simple_rnn", "lstm", "gru", "multiplicative_rnn"])
def test_jit_does_not_retrace(name, rng):
    cell, params = make(name, rng)
    chex.clear_trace_counter()  # counts are kept per function across parametrisations

    @jax.jit
    @chex.assert_max_traces(n=1)
    def run(p, x):
        return rj.unroll(cell, p, x)[1].sum()

    for i in range(3):  # new values, same shapes: one trace only
        run(params, jax.random.normal(jax.random.fold_in(rng, i), (B, T, D)))


@pytest.mark.parametrize("name", CELL_FACTORIES)
def test_gradients_match_finite_differences(name, rng):
    """Forward- and reverse-mode derivatives of unroll against finite differences, in float64
    (``jax.enable_x64`` as a context manager: the global flag is never changed). Forward mode
    on ``backend="scan"`` (the fast backends are custom_vjp functions, reverse mode only),
    reverse mode on the default ``"auto"`` too."""
    k_c, k_x, k_h = jax.random.split(rng, 3)
    cell, params = make(name, k_c, H=3, D=2)
    carry = random_like(k_h, cell.initial_carry(params, (2,)))
    xs = jax.random.normal(k_x, (2, 4, 2))
    with jax.enable_x64(True):
        params, xs, carry = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), (params, xs, carry))

        def loss(p, x, c, backend="auto"):
            final, ys = rj.unroll(cell, p, x, c, backend=backend)
            return jnp.sum(ys**2) + sum(jnp.sum(leaf) for leaf in jax.tree.leaves(final))

        assert loss(params, xs, carry).dtype == jnp.float64
        scan_loss = functools.partial(loss, backend="scan")
        check_grads(scan_loss, (params, xs, carry), order=1, modes=("fwd", "rev"))
        check_grads(loss, (params, xs, carry), order=1, modes=("rev",))
    assert not jax.config.jax_enable_x64


def test_lecture_worked_example(rng):
    """Vocabulary of 5 words, memory of 3 units, U [3x5], V [10x3] (column-vector notation
    in the lecture; rnnjax stores (in, out), so U is (5, 3) and V is (3, 10))."""
    k_c, k_o, k_x = jax.random.split(rng, 3)
    cell = rj.simple_rnn(3)
    params = cell.init(k_c, input_size=5)
    out = rj.readout(vocab_size=10)
    out_params = out.init(k_o, input_size=3)
    assert params.U.shape == (5, 3) and params.W.shape == (3, 3)
    assert out_params.V.shape == (3, 10)
    words = jax.random.randint(k_x, (7,), 0, 5)  # a sentence of 7 word indices
    xs = jax.nn.one_hot(words, 5)  # (7, 5) one-hot x_t
    _, cs = rj.unroll(cell, params, xs)
    ys = jnp.exp(out.apply(out_params, cs))  # y_t = softmax(V c_t)
    chex.assert_shape(ys, (7, 10))
    chex.assert_trees_all_close(ys.sum(-1), jnp.ones(7), rtol=1e-6)
    # c_1 = tanh(U x_1 + W c_0 + b) with c_0 = 0: the column of U selected by the word
    want = jnp.tanh(params.U[words[0]] + params.b)
    chex.assert_trees_all_close(cs[0], want, rtol=1e-6)


@pytest.mark.parametrize("name", ["simple_rnn", "lstm", "gru", "multiplicative_rnn"])
def test_bfloat16_compute_stays_close_to_float32(name, rng):
    k_c, k_x = jax.random.split(rng)
    factory = {
        "simple_rnn": lambda dt: rj.simple_rnn(16, dtype=dt),
        "lstm": lambda dt: rj.lstm(16, dtype=dt),
        "gru": lambda dt: rj.gru(16, dtype=dt),
        "multiplicative_rnn": lambda dt: rj.multiplicative_rnn(16, 8, dtype=dt),
    }[name]
    cell32, cell16 = factory(None), factory(jnp.bfloat16)
    params = cell32.init(k_c, 8)
    xs = jax.random.normal(k_x, (2, 10, 8))
    _, y32 = rj.unroll(cell32, params, xs)
    _, y16 = rj.unroll(cell16, params, xs)
    assert y16.dtype == jnp.float32  # bfloat16 operands, float32 accumulation and carry
    assert jax.tree.leaves(params)[0].dtype == jnp.float32
    rel = jnp.linalg.norm(y16 - y32) / jnp.linalg.norm(y32)
    assert 0 < rel < 1e-2, rel  # really ran in bfloat16, and stayed close


def test_peephole_and_coupled_equations(rng):
    """One LSTM step written out by hand from Gers & Schmidhuber (2000) and the coupled form."""
    k_c, k_x, k_h = jax.random.split(rng, 3)
    cell, p = make("lstm_peephole_coupled", k_c)
    x = jax.random.normal(k_x, (D,))
    carry = random_like(k_h, cell.initial_carry(p))
    zf, zg, zo = jnp.split(x @ p.U + p.b + carry.h @ p.W, 3)
    f = jax.nn.sigmoid(zf + p.p_f * carry.c)
    c = f * carry.c + (1 - f) * jnp.tanh(zg)
    h = jax.nn.sigmoid(zo + p.p_o * c) * jnp.tanh(c)
    new, y = cell.step(p, carry, x)
    chex.assert_trees_all_close((new.h, new.c, y), (h, c, h), rtol=1e-5, atol=1e-6)
    assert p.p_i is None and p.U.shape == (D, 3 * H)


def test_multiplicative_rnn_transition_depends_on_input(rng):
    """W(x) = W_in diag(x U_f) W_out: the recurrent Jacobian changes with the input."""
    k_c, k_x = jax.random.split(rng)
    cell, p = make("multiplicative_rnn", k_c)
    x1, x2 = jax.random.normal(k_x, (2, D))
    h = jnp.zeros(H)
    W1 = p.W_in @ jnp.diag(x1 @ p.U_f) @ p.W_out
    new, _ = cell.step(p, rj.RNNCarry(h + 0.1), x1)
    chex.assert_trees_all_close(
        new.h, jnp.tanh(x1 @ p.U + p.b + (h + 0.1) @ W1), rtol=1e-5, atol=1e-6
    )
    W2 = p.W_in @ jnp.diag(x2 @ p.U_f) @ p.W_out
    assert not jnp.allclose(W1, W2)


@pytest.mark.parametrize(
    "make_cell, message",
    [
        (lambda: rj.simple_rnn(0), "hidden_size"),
        (lambda: rj.simple_rnn(4, activation="softsign"), "activation"),
        (lambda: rj.lstm(-3), "hidden_size"),
        (lambda: rj.gru(4, dtype=jnp.int32), "dtype"),
        (lambda: rj.multiplicative_rnn(4, factors=0), "factors"),
        (lambda: rj.lstm(4, chrono_init=2), "chrono_init must be an integer > 2"),
        (lambda: rj.lstm(4, chrono_init=100.0), "chrono_init=100.0"),
        (lambda: rj.lstm(4, forget_bias=3.0, chrono_init=100), "forget_bias=3.0 cannot"),
        (lambda: rj.lstm(4, forget_bias=1.0, chrono_init=100), "forget_bias=1.0 cannot"),
    ],
)
def test_bad_hyper_parameters_are_named(make_cell, message):
    with pytest.raises(ValueError, match=message):
        make_cell()


@pytest.mark.parametrize(
    "factory, forget, has_input_gate",
    [
        (lambda H, **kw: rj.lstm(H, **kw), 1, True),
        (lambda H, **kw: rj.lstm(H, peephole=True, **kw), 1, True),
        (lambda H, **kw: rj.lstm(H, coupled=True, **kw), 0, False),
        (lambda H, **kw: rj.lstmp(H, 16, **kw), 1, True),
    ],
)
def test_chrono_init_spreads_forgetting_times_over_the_lags(factory, forget, has_input_gate):
    """Tallec & Ollivier (2018): b_f = log u with u ~ U(1, T_max - 1), and b_i = -b_f. At
    x = 0, h = 0 a unit keeps its cell state with f = sigma(b_f), i.e. the characteristic time
    1 / (1 - f) = 1 + u: uniform over [2, T_max]. The g and o blocks keep bias_init's values
    (zeros), U and W the default draw."""
    H, T_max, key = 256, 500, jax.random.key(3)
    params = factory(H, chrono_init=T_max).init(key, 5)
    default = factory(H).init(key, 5)
    b = np.asarray(params.b, np.float64)  # (K·H,)
    b_f = b[forget * H : (forget + 1) * H]  # (H,)
    times = np.sort(1.0 / (1.0 - 1.0 / (1.0 + np.exp(-b_f))))  # (H,)
    assert times[0] >= 2.0 - 1e-3 and times[-1] <= T_max + 0.5, (times[0], times[-1])
    quantiles = (np.arange(1, H + 1) - 0.5) / H  # uniform on [2, T_max]: a KS distance
    assert np.max(np.abs((times - 2.0) / (T_max - 2.0) - quantiles)) < 1.95 / np.sqrt(H)
    if has_input_gate:
        np.testing.assert_array_equal(b[:H], -b_f)
    rest = np.ones(b.shape, bool)
    rest[forget * H : (forget + 1) * H] = False
    rest[: H if has_input_gate else 0] = False
    np.testing.assert_array_equal(b[rest], np.asarray(default.b)[rest])
    np.testing.assert_array_equal(params.W, default.W)  # the weights' draws are unchanged
    np.testing.assert_array_equal(params.U, default.U)
    other = factory(H, chrono_init=T_max).init(jax.random.key(4), 5)
    assert not np.array_equal(other.b, params.b)
    half = factory(H, chrono_init=np.int64(T_max), param_dtype=jnp.bfloat16).init(key, 5).b
    assert half.dtype == jnp.bfloat16
    if has_input_gate:
        np.testing.assert_array_equal(half[:H], -half[forget * H : (forget + 1) * H])


@pytest.mark.parametrize("lead", [(), (3, 5), (2,)])
@pytest.mark.parametrize("K", [7, TRANSPOSED_COPY_BELOW])  # both forms of the gradient's matmul
def test_affine_equals_the_plain_expression_with_gradients(lead, K, rng):
    """`affine` (one GEMM on CPU, a hand-written JVP) against ``a @ w + b`` and its autodiff."""
    from rnnjax.cells.base import _one_gemm, affine

    k_a, k_w, k_b, k_d = jax.random.split(rng, 4)
    shape = (*lead, K)
    a = jax.random.normal(k_a, shape) / np.sqrt(K)  # (..., K)
    w = jax.random.normal(k_w, (K, 6))  # (K, N)
    b = jax.random.normal(k_b, (6,))  # (N,)
    d = jax.random.normal(k_d, (*shape[:-1], 6))  # a cotangent (..., N)

    def plain(a, w, b):
        return a @ w + b.reshape((1,) * (a.ndim - 1) + b.shape)

    for fn in (affine, _one_gemm):
        np.testing.assert_allclose(fn(a, w, b), plain(a, w, b), rtol=1e-5, atol=1e-5)
        got = jax.vjp(fn, a, w, b)[1](d)
        want = jax.vjp(plain, a, w, b)[1](d)
        chex.assert_trees_all_close(got, want, rtol=1e-5, atol=1e-5)
    check_grads(_one_gemm, (a, w, b), order=2, modes=["fwd", "rev"], atol=1e-2, rtol=1e-2)
    batched = jax.vmap(lambda a: affine(a, w, b))(jnp.stack([a, 2 * a]))
    np.testing.assert_allclose(batched[1], plain(2 * a, w, b), rtol=1e-5, atol=1e-5)
