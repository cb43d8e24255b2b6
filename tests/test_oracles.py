"""Every cell variant against an oracle written here from its paper, in float64 numpy.

The oracles do not call ``cell.project`` or ``cell.recur``: each takes one example, slices
every gate's block out of the stored parameters by name (weights stored (in, out), gate blocks
concatenated in the order the cell documents) and writes the paper's equation for it, one
time step at a time, one sequence at a time. Ragged lengths and ``reverse`` are written as
"run each sequence alone, over its own steps, in the chosen direction".

Tolerances. Forward: rnnjax runs in float32, the oracle in float64, so
``|got − want| <= 1e-5·|want| + 1e-6·max(1, max|want|)`` (float32 rounding, ~6e-8 per
operation, grows with the number of operations and the size of the sums). Gradients: rnnjax
runs in float64 (``jax.enable_x64`` as a context manager, never the global flag) and is
compared with central finite differences of the float64 oracle (step 1e-6, error ~1e-10):
``|got − want| <= 1e-6·|want| + 1e-7·max(1, max|want|)``.

Papers: Elman 1990 (Simple RNN); Hochreiter & Schmidhuber 1997 with the forget gate of Gers,
Schmidhuber & Cummins 2000, peepholes of Gers & Schmidhuber 2000 (i, f see c_{t-1}, o sees
c_t) and the coupled gate i = 1 − f (Greff et al. 2017); Cho et al. 2014 (GRU) and the
PyTorch / cuDNN variant that resets after the recurrent matmul; Sutskever, Martens & Hinton
2011 (multiplicative RNN); Feng et al. 2024 (minGRU, minLSTM); a diagonal linear recurrence
h_t = a ⊙ h_{t-1} + x_t U + b with a = sigmoid(ν).
"""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import rnnjax as rj

B, T, D, H, F = 4, 7, 4, 5, 3  # distinct sizes, so that a transposed block cannot fit
LENGTHS = np.array([T, 3, 0, 1])  # full, partial, empty and one-step sequences


def sigmoid(v):
    return 1.0 / (1.0 + np.exp(-v))


def relu(v):
    return np.maximum(v, 0.0)


def identity(v):
    return v


def gate(M, order, name):
    """The block of gate ``name`` in a matrix or vector whose last axis is ``order`` blocks."""
    size = M.shape[-1] // len(order)
    k = order.index(name)
    return M[..., k * size : (k + 1) * size]


# ---------------------------------------------------------------- one step of each paper
# Each oracle maps (params dict of float64 arrays, x (D,), carry tuple of (H,)) to
# (new carry tuple, y (H,)). Row-vector convention: x U with U stored (D, H).


def simple_rnn_oracle(act):
    """Elman: c_t = σ(x_t U + c_{t-1} W + b)."""

    def step(p, x, carry):
        (h,) = carry
        h = act(x @ p["U"] + h @ p["W"] + p["b"])
        return (h,), h

    return step


def lstm_oracle(peephole, coupled):
    """LSTM with forget gate; peepholes (Gers & Schmidhuber 2000); coupled i = 1 − f."""
    order = ("f", "g", "o") if coupled else ("i", "f", "g", "o")

    def step(p, x, carry):
        m, c = carry  # m_{t-1} (the output, carry.h) and c_{t-1}
        z = {}
        for name in order:  # pre-activations, gate by gate
            z[name] = x @ gate(p["U"], order, name) + m @ gate(p["W"], order, name)
            z[name] = z[name] + gate(p["b"], order, name)
        f = sigmoid(z["f"] + (p["p_f"] * c if peephole else 0.0))  # sees c_{t-1}
        if coupled:
            i = 1.0 - f
        else:
            i = sigmoid(z["i"] + (p["p_i"] * c if peephole else 0.0))  # sees c_{t-1}
        c_new = f * c + i * np.tanh(z["g"])
        o = sigmoid(z["o"] + (p["p_o"] * c_new if peephole else 0.0))  # sees c_t
        m_new = o * np.tanh(c_new)
        return (m_new, c_new), m_new

    return step


def gru_oracle(reset_after):
    """GRU (r, z, n). reset_after: n = tanh(x U_n + b_n + r ⊙ (h W_n + b_hn)) (PyTorch);
    otherwise Cho et al. 2014: n = tanh(x U_n + b_n + (r ⊙ h) W_n). h' = (1 − z) n + z h."""
    order = ("r", "z", "n")

    def step(p, x, carry):
        (h,) = carry
        U, W, b = p["U"], p["W"], p["b"]
        r = sigmoid(x @ gate(U, order, "r") + gate(b, order, "r") + h @ gate(W, order, "r"))
        z = sigmoid(x @ gate(U, order, "z") + gate(b, order, "z") + h @ gate(W, order, "z"))
        x_n = x @ gate(U, order, "n") + gate(b, order, "n")
        if reset_after:
            n = np.tanh(x_n + r * (h @ gate(W, order, "n") + p["b_hn"]))
        else:
            n = np.tanh(x_n + (r * h) @ gate(W, order, "n"))
        h = (1.0 - z) * n + z * h
        return (h,), h

    return step


def multiplicative_oracle(act):
    """Sutskever, Martens & Hinton 2011: f_t = diag(W_fx x_t) W_fh h_{t-1},
    h_t = σ(W_hf f_t + W_hx x_t + b_h). In rnnjax's names and row vectors, W_fh = W_inᵀ,
    W_fx = U_fᵀ, W_hf = W_outᵀ, W_hx = Uᵀ, so the input picks the transition matrix
    W(x_t) = W_in diag(x_t U_f) W_out and h_t = σ(x_t U + h_{t-1} W(x_t) + b). Written with the
    full (H, H) matrix W(x_t), not the factored product the cell computes."""

    def step(p, x, carry):
        (h,) = carry
        W_x = p["W_in"] @ np.diag(x @ p["U_f"]) @ p["W_out"]  # (H, H)
        h = act(x @ p["U"] + h @ W_x + p["b"])
        return (h,), h

    return step


def diagonal_linear_oracle(p, x, carry):
    """h_t = a ⊙ h_{t-1} + x_t U + b, a = sigmoid(ν)."""
    (h,) = carry
    h = sigmoid(p["nu"]) * h + x @ p["U"] + p["b"]
    return (h,), h


def min_gru_oracle(p, x, carry):
    """Feng et al. 2024 §3.1: z = σ(Linear(x)), h̃ = Linear(x), h_t = (1 − z) h_{t-1} + z h̃."""
    order = ("z", "h")
    (h,) = carry
    z = sigmoid(x @ gate(p["U"], order, "z") + gate(p["b"], order, "z"))
    h_tilde = x @ gate(p["U"], order, "h") + gate(p["b"], order, "h")
    h = (1.0 - z) * h + z * h_tilde
    return (h,), h


def min_lstm_oracle(p, x, carry):
    """Feng et al. 2024 §3.2: f, i = σ(Linear(x)); f' = f/(f + i), i' = i/(f + i);
    h̃ = Linear(x); h_t = f' h_{t-1} + i' h̃."""
    order = ("f", "i", "h")
    (h,) = carry
    f = sigmoid(x @ gate(p["U"], order, "f") + gate(p["b"], order, "f"))
    i = sigmoid(x @ gate(p["U"], order, "i") + gate(p["b"], order, "i"))
    h_tilde = x @ gate(p["U"], order, "h") + gate(p["b"], order, "h")
    h = f / (f + i) * h + i / (f + i) * h_tilde
    return (h,), h


# name -> (cell factory (H) -> Cell, oracle step)
VARIANTS = {
    "simple_rnn_tanh": (lambda H: rj.simple_rnn(H, "tanh"), simple_rnn_oracle(np.tanh)),
    "simple_rnn_sigmoid": (lambda H: rj.simple_rnn(H, "sigmoid"), simple_rnn_oracle(sigmoid)),
    "simple_rnn_relu": (lambda H: rj.simple_rnn(H, "relu"), simple_rnn_oracle(relu)),
    "simple_rnn_identity": (lambda H: rj.simple_rnn(H, "identity"), simple_rnn_oracle(identity)),
    "lstm": (lambda H: rj.lstm(H), lstm_oracle(False, False)),
    "lstm_peephole": (lambda H: rj.lstm(H, peephole=True), lstm_oracle(True, False)),
    "lstm_coupled": (lambda H: rj.lstm(H, coupled=True), lstm_oracle(False, True)),
    "lstm_peephole_coupled": (
        lambda H: rj.lstm(H, peephole=True, coupled=True),
        lstm_oracle(True, True),
    ),
    "gru_reset_after": (lambda H: rj.gru(H, reset_after=True), gru_oracle(True)),
    "gru_cho": (lambda H: rj.gru(H, reset_after=False), gru_oracle(False)),
    "multiplicative_rnn": (
        lambda H: rj.multiplicative_rnn(H, factors=F),
        multiplicative_oracle(np.tanh),
    ),
    "multiplicative_rnn_relu": (
        lambda H: rj.multiplicative_rnn(H, factors=F, activation="relu"),
        multiplicative_oracle(relu),
    ),
    "diagonal_linear_rnn": (lambda H: rj.diagonal_linear_rnn(H), diagonal_linear_oracle),
    "min_gru": (lambda H: rj.min_gru(H), min_gru_oracle),
    "min_lstm": (lambda H: rj.min_lstm(H), min_lstm_oracle),
}


def run_oracle(step, p, xs, carry, lengths=None, reverse=False):
    """Runs each sequence alone over its own steps.

    Args:
        step: an oracle above.
        p: dict of float64 parameters.
        xs: (B, T, D) float64.
        carry: tuple of (B, H) float64.
        lengths: None (all T) or B ints; outputs past a sequence's length are zero.
        reverse: read x_{L-1}, ..., x_0; y_t is then the state after x_{L-1}..x_t.

    Returns:
        (final carry tuple of (B, H), ys (B, T, H)): the final carry is the state after the
        last step read (the initial carry for an empty sequence).
    """
    batch, steps, _ = xs.shape
    ys = np.zeros((batch, steps, carry[0].shape[-1]))
    finals = []
    for b in range(batch):
        state = tuple(c[b] for c in carry)
        length = steps if lengths is None else int(lengths[b])
        for t in range(length - 1, -1, -1) if reverse else range(length):
            state, ys[b, t] = step(p, xs[b, t], state)
        finals.append(state)
    final = tuple(np.stack([s[k] for s in finals]) for k in range(len(carry)))
    return final, ys


def to_numpy(params):
    """The cell's parameters as a dict of float64 arrays (absent peepholes left out)."""
    return {k: np.asarray(v, np.float64) for k, v in params._asdict().items() if v is not None}


def numpy_rng(key):
    """A numpy Generator seeded from a jax key (numpy draws cost no compilation)."""
    return np.random.default_rng(np.asarray(jax.random.key_data(key)).tolist())


def make_case(name, key, batch=B, steps=T, D=D, H=H, dtype=np.float32):
    """A cell with N(0, 0.5²) values in every parameter (biases too), N(0, 1) inputs and an
    N(0, 0.5²) initial carry, all numpy arrays of ``dtype``."""
    make_cell, _ = VARIANTS[name]
    cell = make_cell(H)
    gen = numpy_rng(key)
    draw = lambda s, scale=0.5: (scale * gen.standard_normal(s.shape)).astype(dtype)  # noqa: E731
    params = jax.tree.map(draw, jax.eval_shape(lambda: cell.init(jax.random.key(0), D)))
    carry = jax.tree.map(draw, jax.eval_shape(lambda: cell.initial_carry(params, (batch,))))
    xs = draw(jax.ShapeDtypeStruct((batch, steps, D), dtype), 1.0)
    return cell, params, xs, carry


def assert_close(got, want, what, rtol=1e-5, atol_scale=1e-6):
    """Leaf by leaf; ``atol`` scales with the largest entry of ``want``."""
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        w = np.asarray(w, np.float64)
        atol = atol_scale * max(1.0, float(np.abs(w).max(initial=0.0)))
        np.testing.assert_allclose(np.asarray(g, np.float64), w, rtol, atol, err_msg=what)


def oracle_of(name, params, xs, carry, **options):
    _, step = VARIANTS[name]
    arrays = tuple(np.asarray(c, np.float64) for c in jax.tree.leaves(carry))
    return run_oracle(step, to_numpy(params), np.asarray(xs, np.float64), arrays, **options)


# (lengths, reverse) of each forward case; "unbatched" runs sequence 0 alone as (T, D)
CASES = {
    "full": (None, False),
    "ragged": (LENGTHS, False),
    "reverse": (None, True),
    "ragged_reverse": (LENGTHS, True),
}


@pytest.mark.parametrize("name", VARIANTS)
def test_unroll_and_step_match_the_oracle(name, rng):
    """Outputs and final carry of `rj.unroll` (backend "scan"), batched with and without
    ragged lengths and reverse, one unbatched (T, D) sequence, and one `cell.step`."""
    cell, params, xs, carry = make_case(name, rng)

    @jax.jit
    def run(params, xs, carry):
        out = {}
        for case, (lengths, reverse) in CASES.items():
            lengths = None if lengths is None else jnp.asarray(lengths)
            out[case] = rj.unroll(cell, params, xs, carry, lengths=lengths, reverse=reverse)
        first = jax.tree.map(lambda a: a[0], carry)  # (H,) leaves
        out["unbatched"] = rj.unroll(cell, params, xs[0], first)  # (T, D) -> (T, H)
        out["unbatched_ragged_reverse"] = rj.unroll(
            cell, params, xs[0], first, lengths=jnp.asarray(5), reverse=True
        )
        out["step"] = cell.step(params, carry, xs[:, 0])
        return out

    got = run(params, xs, carry)
    chex.assert_shape(got["full"][1], (B, T, H))
    chex.assert_shape(got["unbatched"][1], (T, H))
    for case, (lengths, reverse) in CASES.items():
        want = oracle_of(name, params, xs, carry, lengths=lengths, reverse=reverse)
        assert_close(got[case], want, f"{name}, {case}")
    first = lambda tree: jax.tree.map(lambda a: a[:1], tree)  # noqa: E731
    unbatched = {"unbatched": {}, "unbatched_ragged_reverse": dict(lengths=[5], reverse=True)}
    for case, options in unbatched.items():
        want_final, want_ys = oracle_of(name, params, xs[:1], first(carry), **options)
        assert_close(got[case], (tuple(w[0] for w in want_final), want_ys[0]), f"{name}, {case}")
    want_final, want_ys = oracle_of(name, params, xs[:, :1], carry)
    assert_close(got["step"], (want_final, want_ys[:, 0]), f"{name}, cell.step")
    _, ys = oracle_of(name, params, xs, carry)
    assert not np.allclose(ys[:, -1], ys[:, 0])  # the state moves: not a fixed point


# ---------------------------------------------------------------- gradients

GB, GT, GD, GH = 3, 5, 3, 3
G_LENGTHS = np.array([GT, 2, 0])


def finite_differences(f, arrays, eps=1e-6):
    """Central differences of the scalar ``f(arrays)`` w.r.t. every entry of every array."""
    grads = []
    for k, a in enumerate(arrays):
        g = np.zeros_like(a)
        for idx in np.ndindex(a.shape):
            plus = [x.copy() for x in arrays]
            minus = [x.copy() for x in arrays]
            plus[k][idx] += eps
            minus[k][idx] -= eps
            g[idx] = (f(plus) - f(minus)) / (2 * eps)
        grads.append(g)
    return grads


@pytest.mark.parametrize("name", VARIANTS)
def test_gradients_match_finite_differences_of_the_oracle(name, rng):
    """jax.grad of a weighted sum of the outputs and the final carry, w.r.t. the parameters,
    the inputs and the initial carry, without lengths and with ragged lengths + reverse."""
    cell, params, xs, carry = make_case(name, rng, GB, GT, GD, GH, dtype=np.float64)
    gen = numpy_rng(jax.random.fold_in(rng, 1))
    w_ys = gen.standard_normal((GB, GT, GH))
    w_carry = [gen.standard_normal(leaf.shape) for leaf in jax.tree.leaves(carry)]
    modes = {"full": (None, False), "ragged_reverse": (G_LENGTHS, True)}

    def loss(p, x, c, lengths, reverse):
        final, ys = rj.unroll(cell, p, x, c, lengths=lengths, reverse=reverse)
        out = jnp.sum(ys * w_ys)
        for leaf, w in zip(jax.tree.leaves(final), w_carry, strict=True):
            out = out + jnp.sum(leaf * w)
        return out

    with jax.enable_x64(True):

        @jax.jit
        def grads(p, x, c):
            return {
                mode: jax.grad(loss, argnums=(0, 1, 2))(
                    p, x, c, None if lengths is None else jnp.asarray(lengths), reverse
                )
                for mode, (lengths, reverse) in modes.items()
            }

        got_all = grads(params, xs, carry)
        assert got_all["full"][1].dtype == jnp.float64

    names = list(to_numpy(params))
    n_carry = len(w_carry)
    labels = [*names, "xs", *[f"carry[{k}]" for k in range(n_carry)]]
    arrays = [*to_numpy(params).values(), xs, *jax.tree.leaves(carry)]
    for mode, (lengths, reverse) in modes.items():

        def oracle_loss(arrays, lengths=lengths, reverse=reverse):
            p = dict(zip(names, arrays[: len(names)], strict=True))
            x, c = arrays[len(names)], tuple(arrays[len(names) + 1 :])
            final, ys = run_oracle(VARIANTS[name][1], p, x, c, lengths=lengths, reverse=reverse)
            finals = zip(final, w_carry, strict=True)
            return np.sum(ys * w_ys) + sum(np.sum(f * w) for f, w in finals)

        want = finite_differences(oracle_loss, arrays)
        g_params, g_xs, g_carry = got_all[mode]
        got = [getattr(g_params, k) for k in names] + [g_xs, *jax.tree.leaves(g_carry)]
        for label, g, w in zip(labels, got, want, strict=True):
            assert label.startswith("carry") or np.abs(w).max() > 0, (mode, label)
            assert_close(g, w, f"{name}, {mode}: d loss / d {label}", 1e-6, 1e-7)
